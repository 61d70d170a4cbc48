"""Each Llama kernel against float64 numpy (tests/reference_llama.py) and finite differences."""

import numpy as np
import pytest

from tests import reference_llama as ref
from tests.test_attention import attention_reference
from tui_llm.engine.kernels import common as K
from tui_llm.engine.kernels import llama as LK
from tui_llm.engine.kernels.compile import compile_kernels
from tui_llm.engine.models.llama_config import LlamaConfig, rope_tables

RTOL = 1e-5


def rel_err(ours, expected):
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(ours - expected)) / max(np.max(np.abs(expected)), 1e-30))


def f32(a):
    return np.ascontiguousarray(a, dtype=np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def numeric_grad(f, x, h=1e-6):
    """d sum(f(x) * w) / dx for a fixed random w, by central differences (float64)."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        p = f(x)
        flat[i] = old - h
        m = f(x)
        flat[i] = old
        gflat[i] = (p - m) / (2 * h)
    return g


def test_rmsnorm_forward_backward(rng):
    N, C, eps = 11, 40, 1e-5
    x = f32(rng.standard_normal((N, C)) * 2 + 0.5)
    w = f32(1 + 0.2 * rng.standard_normal(C))
    out, rstd = np.empty_like(x), np.empty(N, np.float32)
    LK.rmsnorm_forward(out, rstd, x, w, eps)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    expected, cache = ref.rmsnorm(x64, w64, eps)
    assert rel_err(out, expected) < RTOL
    assert rel_err(rstd, cache[1][:, 0]) < RTOL

    dout = f32(rng.standard_normal((N, C)))
    dx0 = f32(rng.standard_normal((N, C)))  # dx accumulates into what is there
    dx, dw = dx0.copy(), np.full(C, 7, np.float32)
    LK.rmsnorm_backward(dx, dw, dout, x, rstd, w, False)
    edx, edw = ref.rmsnorm_back(dout.astype(np.float64), cache, w64)
    assert rel_err(dx - dx0, edx) < 1e-4
    assert rel_err(dw, edw) < RTOL
    LK.rmsnorm_backward(dx, dw, dout, x, rstd, w, True)  # accumulate: dweight adds too
    assert rel_err(dw, 2 * edw) < RTOL and rel_err(dx - dx0, 2 * edx) < 1e-4
    # the reference's derivative against finite differences
    xs = x64[:2].copy()
    fd = numeric_grad(lambda v: (ref.rmsnorm(v, w64, eps)[0] * dout[:2]).sum(), xs)
    assert rel_err(ref.rmsnorm_back(dout[:2].astype(np.float64), ref.rmsnorm(xs, w64, eps)[1], w64)[0], fd) < 1e-6


@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                                     {"rope_type": "linear", "factor": 4.0}])
def test_rope_rotation_and_its_inverse(rng, scaling):
    H, KV, hd, B, T, t0 = 3, 1, 8, 2, 5, 3
    cfg = LlamaConfig(vocab_size=10, max_seq_len=16, num_layers=1, num_heads=H, num_kv_heads=KV, channels=24,
                      ffn_channels=8, head_dim=hd, rope_theta=100.0, rope_scaling=scaling)
    cos, sin = rope_tables(cfg, 16)
    W = (H + 2 * KV) * hd
    qkv0 = f32(rng.standard_normal((B, T, W)))
    qkv = qkv0.copy()
    # row 0 at positions t0..t0+T-1 (a cache's new rows), row 1 packs two documents (positions restart)
    positions = np.array([np.arange(t0, t0 + T), [0, 1, 2, 0, 1]], np.int32)
    LK.rope_rotate(qkv, cos, sin, H + KV, positions, 1.0)
    # transformers' formula in float64
    ang = positions[..., None] * ref.inv_freq(hd, 100.0, scaling)
    c, s = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    heads = qkv0[..., :(H + KV) * hd].astype(np.float64).reshape(B, T, H + KV, hd)
    expected = heads * c[:, :, None] + ref.rotate_half(heads) * s[:, :, None]
    assert rel_err(qkv[..., :(H + KV) * hd].reshape(B, T, H + KV, hd), expected) < RTOL
    assert np.array_equal(qkv[..., (H + KV) * hd:], qkv0[..., (H + KV) * hd:])  # values are not rotated
    # the backward (sign -1) is the transpose: <R x, y> == <x, R^T y>
    y = f32(rng.standard_normal((B, T, W)))
    ry = y.copy()
    LK.rope_rotate(ry, cos, sin, H + KV, positions, -1.0)
    lhs = (qkv.astype(np.float64) * y).sum()
    rhs = (qkv0.astype(np.float64) * ry).sum()
    assert abs(lhs - rhs) < 1e-4 * np.abs(y).sum()
    LK.rope_rotate(qkv, cos, sin, H + KV, positions, -1.0)  # and it undoes the rotation
    assert rel_err(qkv, qkv0) < RTOL


def test_swiglu_forward_backward(rng):
    N, F = 6, 700  # F > EXP_BLOCK: two exp blocks per row
    fch = f32(rng.standard_normal((N, 2 * F)) * 5)
    fch[0, :4] = [0.0, 90.0, -90.0, -1e-3]  # saturated and tiny gates
    out = np.empty((N, F), np.float32)
    LK.swiglu_forward(out, fch)
    g, u = fch[:, :F].astype(np.float64), fch[:, F:].astype(np.float64)
    sig = 1 / (1 + np.exp(-g))
    assert rel_err(out, g * sig * u) < RTOL
    dout = f32(rng.standard_normal((N, F)))
    dfch = np.full((N, 2 * F), 9, np.float32)
    LK.swiglu_backward(dfch, dout, fch)
    d64 = dout.astype(np.float64)
    assert rel_err(dfch[:, F:], d64 * g * sig) < RTOL
    assert rel_err(dfch[:, :F], d64 * u * sig * (1 + g * (1 - sig))) < RTOL
    # the analytic derivative against finite differences of the float64 formula
    gs, us, ds = g[1:3, :20].copy(), u[1:3, :20], d64[1:3, :20]
    fd = numeric_grad(lambda v: (v / (1 + np.exp(-v)) * us * ds).sum(), gs)
    assert rel_err(dfch[1:3, :20], fd) < 1e-5


def test_cached_attention_matches_causal_attention(rng):
    H, KV, hd, T, t0 = 4, 2, 8, 9, 5
    W = (H + 2 * KV) * hd
    qkv = f32(rng.standard_normal((1, T, W)))
    _, eatty, _ = attention_reference(qkv.astype(np.float64), H, KV)
    k_cache, v_cache = np.zeros((12, KV * hd), np.float32), np.zeros((12, KV * hd), np.float32)
    k_cache[:T], v_cache[:T] = qkv[0, :, H * hd:(H + KV) * hd], qkv[0, :, (H + KV) * hd:]
    atty = np.empty((T - t0, H * hd), np.float32)
    K.attention_cached(atty, qkv[0, t0:], k_cache, v_cache, t0, H, KV)
    assert rel_err(atty, eatty[0, t0:]) < RTOL


def test_embedding_backward_accumulates_repeats(rng):
    dwte = f32(rng.standard_normal((10, 4)))
    start = dwte.astype(np.float64)
    dout = f32(rng.standard_normal((6, 4)))
    tokens = np.array([3, 1, 3, 9, 3, 0], np.int32)
    LK.embedding_backward(dwte, dout, tokens)
    np.add.at(start, tokens, dout.astype(np.float64))
    assert rel_err(dwte, start) < RTOL


def test_compile_llama_kernels_reports_progress():
    seen = []
    compile_kernels("llama", lambda done, total, name: seen.append(name))
    assert seen[-1] == "done" and {"rmsnorm", "rope", "swiglu", "attention (cached)"} <= set(seen)


def test_head_rmsnorm_in_place_on_a_view_of_the_qkv_buffer(rng):
    """Qwen3's q/k norm: each head of each row RMS-normed in place (a strided view), the input kept."""
    N, H, hd, eps = 5, 3, 8, 1e-6
    qkv = f32(rng.standard_normal((N, H * hd + 10)) * 2)
    before = qkv.copy()
    heads = qkv[:, :H * hd].reshape(N, H, hd)  # a view: the norm writes into qkv
    pre, rstd = np.empty((N, H, hd), np.float32), np.empty((N, H), np.float32)
    w = f32(1 + 0.2 * rng.standard_normal(hd))
    LK.head_rmsnorm_forward(heads, pre, rstd, w, eps)
    x64, w64 = before[:, :H * hd].reshape(N, H, hd).astype(np.float64), w.astype(np.float64)
    expected, cache = ref.rmsnorm(x64, w64, eps)
    assert rel_err(qkv[:, :H * hd].reshape(N, H, hd), expected) < RTOL
    assert np.array_equal(qkv[:, H * hd:], before[:, H * hd:])  # the other columns untouched
    assert np.array_equal(pre, before[:, :H * hd].reshape(N, H, hd)) and rel_err(rstd, cache[1][..., 0]) < RTOL

    dout = f32(rng.standard_normal((N, H, hd)))
    d = np.zeros_like(qkv)
    d[:, :H * hd] = dout.reshape(N, -1)
    dw = np.full(hd, 9, np.float32)
    LK.head_rmsnorm_backward(d[:, :H * hd].reshape(N, H, hd), dw, pre, rstd, w, False)
    edx, edw = ref.rmsnorm_back(dout.astype(np.float64), cache, w64)
    assert rel_err(d[:, :H * hd].reshape(N, H, hd), edx) < 1e-4 and rel_err(dw, edw) < RTOL
    LK.head_rmsnorm_backward(dout.copy(), dw, pre, rstd, w, True)  # accumulate: dweight adds
    assert rel_err(dw, 2 * edw) < RTOL
