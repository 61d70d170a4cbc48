"""Training attention (attention.py: products through BLAS, causal softmax in numba) against
float64 numpy: the forward, the backward by its formulas and by finite differences, for GPT-2's
layout (KV = H) and grouped-query layouts."""

import math

import numpy as np
import pytest

from tui_llm.engine.kernels.attention import attention_backward, attention_forward

RTOL = 1e-5


def rel_err(ours, expected):
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(ours - expected)) / max(np.max(np.abs(expected)), 1e-30))


def attention_reference(qkv, H, KV):
    """float64 (probabilities (B, H, T, T), output (B, T, H hd)), key/value heads repeated per group."""
    B, T, W = qkv.shape
    hd = W // (H + 2 * KV)
    q = qkv[..., :H * hd].reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    k = qkv[..., H * hd:(H + KV) * hd].reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    v = qkv[..., (H + KV) * hd:].reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    k, v = np.repeat(k, H // KV, 1), np.repeat(v, H // KV, 1)
    s = np.where(np.tril(np.ones((T, T), bool)), q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd), -np.inf)
    att = np.exp(s - s.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    return att, (att @ v).transpose(0, 2, 1, 3).reshape(B, T, H * hd)


def run(qkv, datty, H, KV):
    """Our forward and backward, every output buffer filled with garbage first (all overwritten)."""
    B, T, W = qkv.shape
    att = np.full((B, H, T, T), 7.0, np.float32)
    atty = np.full((B, T, datty.shape[2]), 7.0, np.float32)
    attention_forward(atty, att, qkv, H, KV)
    dqkv = np.full_like(qkv, 5.0)
    dscores = np.full((B, H, T, T), 3.0, np.float32)
    per_head = np.full_like(datty, 3.0) if KV < H else None
    attention_backward(dqkv, datty, att, qkv, H, KV, dscores, per_head)
    return att, atty, dqkv


@pytest.mark.parametrize("B,T,H,KV,hd", [(2, 11, 3, 3, 8), (2, 7, 4, 2, 8), (1, 9, 6, 1, 4), (2, 1, 2, 2, 4),
                                         (1, 600, 2, 1, 4)])
def test_forward_and_backward_by_formulas(B, T, H, KV, hd):
    rng = np.random.default_rng(T * 10 + H)
    qkv = rng.standard_normal((B, T, (H + 2 * KV) * hd)).astype(np.float32)
    datty = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    att, atty, dqkv = run(qkv, datty, H, KV)
    eatt, eatty = attention_reference(qkv.astype(np.float64), H, KV)
    assert rel_err(att, eatt) < RTOL  # upper triangle included: exactly 0 on both sides
    assert rel_err(atty, eatty) < RTOL

    # backward, written out per query head, then summed over each key/value head's group
    x = qkv.astype(np.float64)
    G = H // KV
    q = x[..., :H * hd].reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    k = np.repeat(x[..., H * hd:(H + KV) * hd].reshape(B, T, KV, hd).transpose(0, 2, 1, 3), G, 1)
    v = np.repeat(x[..., (H + KV) * hd:].reshape(B, T, KV, hd).transpose(0, 2, 1, 3), G, 1)
    dy = datty.astype(np.float64).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    datt = dy @ v.transpose(0, 1, 3, 2)
    ds = eatt * (datt - (eatt * datt).sum(-1, keepdims=True)) / math.sqrt(hd)
    dq, dk, dv = ds @ k, ds.transpose(0, 1, 3, 2) @ q, eatt.transpose(0, 1, 3, 2) @ dy
    dk, dv = (d.reshape(B, KV, G, T, hd).sum(2) for d in (dk, dv))
    expected = np.concatenate([d.transpose(0, 2, 1, 3).reshape(B, T, -1) for d in (dq, dk, dv)], -1)
    assert rel_err(dqkv, expected) < 2e-5


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (6, 1)])
def test_backward_matches_finite_differences(H, KV):
    B, T, hd = 2, 6, 4
    rng = np.random.default_rng(H * 10 + KV)
    qkv = rng.standard_normal((B, T, (H + 2 * KV) * hd)).astype(np.float32)
    datty = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    _, _, dqkv = run(qkv, datty, H, KV)
    x, w = qkv.astype(np.float64), datty.astype(np.float64)
    fd = np.zeros_like(x)
    flat, h = x.reshape(-1), 1e-6
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = (attention_reference(x, H, KV)[1] * w).sum()
        flat[i] = old - h
        minus = (attention_reference(x, H, KV)[1] * w).sum()
        flat[i] = old
        fd.reshape(-1)[i] = (plus - minus) / (2 * h)
    assert rel_err(dqkv, fd) < 1e-5


def test_large_scores_do_not_overflow():
    """The softmax subtracts each row's maximum: scores in the thousands stay finite and exact."""
    B, T, H, hd = 1, 5, 1, 4
    rng = np.random.default_rng(0)
    qkv = (rng.standard_normal((B, T, 3 * H * hd)) * 40).astype(np.float32)
    datty = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    att, atty, dqkv = run(qkv, datty, H, H)
    assert np.isfinite(att).all() and np.isfinite(atty).all() and np.isfinite(dqkv).all()
    eatt, eatty = attention_reference(qkv.astype(np.float64), H, H)
    assert rel_err(atty, eatty) < RTOL
