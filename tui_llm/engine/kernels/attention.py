"""Causal (grouped-query) self-attention for training: the products through BLAS, the softmax in numba.

    S = Q Kᵀ                      (per query head, against its key/value head's keys)
    P = causal_softmax(S / √hd)   (row t keeps positions 0..t; the rest is set to 0)
    Y = P V
backward, from dY:
    dP = dY Vᵀ,  dS = P ⊙ (dP - rowsum(P ⊙ dP)) / √hd
    dQ = dS K,   dK = Σ_group dSᵀ Q,   dV = Σ_group Pᵀ dY

Both models use it: GPT-2 is the case KV = H. The fused q/k/v buffer of one row is
[H*hd query | KV*hd key | KV*hd value]; query head h reads key/value head h // (H / KV). Every
operand is a strided view of that buffer (no head is copied, no key/value head repeated for its
group): numpy's matmul hands each (batch, head) pair to BLAS. The products skip the upper
triangle by blocks of positions (causal_blocks), not entry by entry: a few BLAS calls per head
beat a kernel that skips exactly. The softmax zeroes the upper triangle, so the products that
cover part of it read zeros there.

Letters: B batch, T time, H query heads, KV key/value heads, G = H / KV, hd head dim.
"""

from __future__ import annotations

import math

import numpy as np

from tui_llm.engine.kernels.common import causal_softmax, causal_softmax_backward


def _views(qkv: np.ndarray, H: int, KV: int):
    """q (B, KV, G, T, hd), k and v (B, KV, 1, T, hd): views of qkv (B, T, W), no copies (the
    backward writes through them into dqkv)."""
    B, T, W = qkv.shape
    hd = W // (H + 2 * KV)
    G = H // KV
    q = qkv[:, :, :H * hd].reshape(B, T, KV, G, hd).transpose(0, 2, 3, 1, 4)
    k = qkv[:, :, H * hd:(H + KV) * hd].reshape(B, T, KV, hd).transpose(0, 2, 1, 3)[:, :, None]
    v = qkv[:, :, (H + KV) * hd:].reshape(B, T, KV, hd).transpose(0, 2, 1, 3)[:, :, None]
    return q, k, v


def _heads(y: np.ndarray, KV: int, G: int) -> np.ndarray:
    """(B, T, H hd) rows with heads side by side, seen as (B, KV, G, T, hd)."""
    B, T, HD = y.shape
    return y.reshape(B, T, KV, G, HD // (KV * G)).transpose(0, 2, 3, 1, 4)


def causal_blocks(T: int) -> list[tuple[int, int]]:
    """[start, end) position blocks for the products. Queries in block [r0, r1) only need keys
    0..r1-1, and keys in it only queries r0..T-1: with n blocks the products do (n+1)/2n of the
    full square's work in n calls instead of one. Blocks of about 128 positions (at most 4)
    measured best here (benchmarks/attention.py)."""
    n = min(max(T // 128, 1), 4)
    size = -(-T // n)
    return [(r0, min(r0 + size, T)) for r0 in range(0, T, size)]


def attention_forward(atty: np.ndarray, att: np.ndarray, qkv: np.ndarray, H: int, KV: int) -> None:
    """atty (B, T, H hd) = attention output; att (B, H, T, T) = the probabilities (kept for the
    backward; zero above the diagonal); qkv (B, T, (H + 2KV) hd) with q and k ready (rotated)."""
    B, T, W = qkv.shape
    G = H // KV
    q, k, v = _views(qkv, H, KV)
    scores, y = att.reshape(B, KV, G, T, T), _heads(atty, KV, G)
    blocks = causal_blocks(T)
    for r0, r1 in blocks:                                                   # S = Q Kᵀ
        np.matmul(q[..., r0:r1, :], k[..., :r1, :].swapaxes(-1, -2), out=scores[..., r0:r1, :r1])
    causal_softmax(att.reshape(B * H, T, T), np.float32(1.0 / math.sqrt(W // (H + 2 * KV))))
    for r0, r1 in blocks:                                                   # Y = P V
        np.matmul(scores[..., r0:r1, :r1], v[..., :r1, :], out=y[..., r0:r1, :])


def attention_backward(dqkv: np.ndarray, datty: np.ndarray, att: np.ndarray, qkv: np.ndarray, H: int, KV: int,
                       dscores: np.ndarray, per_head: np.ndarray | None) -> None:
    """dqkv (B, T, W) is overwritten from datty (B, T, H hd) through the forward's probabilities
    att (B, H, T, T). Scratch, overwritten: dscores (B, H, T, T) (dP, then dS); per_head
    (B, T, H hd), the per-query-head dK and dV that a group sums (None when KV = H)."""
    B, T, W = qkv.shape
    hd = W // (H + 2 * KV)
    G = H // KV
    q, k, v = _views(qkv, H, KV)
    dq, dk, dv = _views(dqkv, H, KV)
    dy = _heads(datty, KV, G)
    probs, ds = att.reshape(B, KV, G, T, T), dscores.reshape(B, KV, G, T, T)
    blocks = causal_blocks(T)
    for r0, r1 in blocks:                                                   # dP = dY Vᵀ
        np.matmul(dy[..., r0:r1, :], v[..., :r1, :].swapaxes(-1, -2), out=ds[..., r0:r1, :r1])
    causal_softmax_backward(dscores.reshape(B * H, T, T), att.reshape(B * H, T, T), np.float32(1.0 / math.sqrt(hd)))
    for r0, r1 in blocks:                                                   # dQ = dS K
        np.matmul(ds[..., r0:r1, :r1], k[..., :r1, :], out=dq[..., r0:r1, :])
    # dK = Σ_group dSᵀ Q and dV = Σ_group Pᵀ dY: straight into dqkv when each key/value head has
    # one query head (GPT-2), else per query head into per_head, then summed over the group
    if G > 1 and per_head is None:
        raise ValueError("grouped-query attention needs the per_head scratch")
    dk_heads = dk if per_head is None else per_head.reshape(B, KV, G, T, hd)
    for k0, k1 in blocks:
        np.matmul(ds[..., k0:, k0:k1].swapaxes(-1, -2), q[..., k0:, :], out=dk_heads[..., k0:k1, :])
    if G > 1:
        np.sum(dk_heads, axis=2, keepdims=True, out=dk)
    dv_heads = dv if per_head is None else per_head.reshape(B, KV, G, T, hd)
    for k0, k1 in blocks:
        np.matmul(probs[..., k0:, k0:k1].swapaxes(-1, -2), dy[..., k0:, :], out=dv_heads[..., k0:k1, :])
    if G > 1:
        np.sum(dv_heads, axis=2, keepdims=True, out=dv)
