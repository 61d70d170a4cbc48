"""Numba kernels for the Llama block: RMSNorm (and Qwen3's per-head q/k norm), RoPE, SwiGLU, embedding.

Same conventions as kernels.py (float32, `nogil` so the UI thread keeps running, `cache` so the
compile happens once, `prange` over rows or heads); the sigmoid reuses its `exp_block`.
Attention is shared with GPT-2: attention.py for training (grouped-query, through BLAS),
common.attention_cached for sampling. Matrix products are not here: llama.py hands them to BLAS
through numpy.

Letters: B batch, T time, N = B*T rows, C channels, H query heads, KV key/value heads
(H % KV == 0; query head h reads key/value head h // (H / KV)), hd head dim, F SwiGLU width.
The fused q/k/v buffer of one row is [H*hd query | KV*hd key | KV*hd value], heads side by side.

numba's on-disk cache keys these kernels on this file only: after editing `exp_block` in
kernels.py, touch this file (or delete its __pycache__ *.nbi/*.nbc) so they recompile.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tui_llm.engine.kernels.common import EXP_BLOCK, JIT, PJIT, exp_block

# ---------------------------------------------------------------------------------------
# Embedding (no position table: positions enter through RoPE)

@njit(**JIT)
def embedding_backward(dwte, dout, tokens):
    """dwte[tokens[r]] += dout[r]. Serial: tokens repeat, parallel rows would race."""
    N, C = dout.shape
    for r in range(N):
        row, d = dwte[tokens[r]], dout[r]
        for c in range(C):
            row[c] += d[c]


# ---------------------------------------------------------------------------------------
# RMSNorm: out = weight * x / sqrt(mean(x^2) + eps); no mean subtraction, no bias.

@njit(**PJIT)
def rmsnorm_forward(out, rstd, x, weight, eps):
    # out, x (N, C); rstd (N,) keeps 1/sqrt(mean(x^2) + eps) for the backward
    N, C = x.shape
    eps = np.float32(eps)
    for r in prange(N):
        row, o = x[r], out[r]
        ss = np.float32(0.0)
        for c in range(C):
            ss += row[c] * row[c]
        s = np.float32(1.0) / np.sqrt(ss / C + eps)
        for c in range(C):
            o[c] = row[c] * s * weight[c]
        rstd[r] = s


@njit(**PJIT)
def rmsnorm_backward(dx, dweight, dout, x, rstd, weight, accumulate):
    """dx += d(out)/dx . dout (rows in parallel); dweight is overwritten, or added to when
    accumulate (the next micro-batch of an accumulated step); an empty dweight is not computed
    (a frozen base).

    With g = weight * dout and xhat = x * s: dx = s * (g - xhat * mean(g * xhat)).
    """
    N, C = x.shape
    for r in prange(N):
        s = rstd[r]
        row, drow, dxr = x[r], dout[r], dx[r]
        gx = np.float32(0.0)
        for c in range(C):
            gx += weight[c] * drow[c] * row[c]
        gx = gx * s * s / C
        for c in range(C):
            dxr[c] += s * (weight[c] * drow[c] - row[c] * gx)
    if dweight.shape[0] == 0:
        return
    if not accumulate:
        dweight[:] = 0.0
    for r in range(N):
        s = rstd[r]
        for c in range(C):
            dweight[c] += dout[r, c] * x[r, c] * s


# Qwen3's q/k norm: the same RMSNorm over each head of each row, in place in the q/k/v buffer.
# heads (N, nh, hd) is a view of q's (or k's) columns; pre keeps its values before the norm.

@njit(**PJIT)
def head_rmsnorm_forward(heads, pre, rstd, weight, eps):
    # heads, pre (N, nh, hd); rstd (N, nh); weight (hd,)
    N, nh, hd = heads.shape
    eps = np.float32(eps)
    for r in prange(N):
        for h in range(nh):
            x, p = heads[r, h], pre[r, h]
            ss = np.float32(0.0)
            for c in range(hd):
                p[c] = x[c]
                ss += x[c] * x[c]
            s = np.float32(1.0) / np.sqrt(ss / hd + eps)
            for c in range(hd):
                x[c] = p[c] * s * weight[c]
            rstd[r, h] = s


@njit(**PJIT)
def head_rmsnorm_backward(dheads, dweight, pre, rstd, weight, accumulate):
    """In place: dheads (N, nh, hd), the gradient of the normed heads, becomes that of the heads
    before the norm; dweight (hd,) is overwritten, or added to when accumulate (an empty one is
    not computed: a frozen base)."""
    N, nh, hd = dheads.shape
    if not accumulate and dweight.shape[0] > 0:
        dweight[:] = 0.0
    for r in range(N if dweight.shape[0] > 0 else 0):  # the weight's gradient first (it needs d of the output)
        for h in range(nh):
            s, x, d = rstd[r, h], pre[r, h], dheads[r, h]
            for c in range(hd):
                dweight[c] += d[c] * x[c] * s
    for r in prange(N):
        for h in range(nh):
            s, x, d = rstd[r, h], pre[r, h], dheads[r, h]
            gx = np.float32(0.0)
            for c in range(hd):
                gx += weight[c] * d[c] * x[c]
            gx = gx * s * s / hd
            for c in range(hd):
                d[c] = s * (weight[c] * d[c] - x[c] * gx)


# ---------------------------------------------------------------------------------------
# RoPE, half-split as transformers applies it: the pair (x[j], x[j + hd/2]) of each head is
# rotated by the angle pos * inv_freq[j]. sign=-1 rotates back, which is the backward pass.

@njit(**PJIT)
def rope_rotate(qkv, cos, sin, num_heads, positions, sign):
    # qkv (B, T, W): the first num_heads * hd columns of each row are rotated in place (q and k heads)
    # cos, sin (P, hd/2): tables for positions 0..P-1; positions (B, T) int32: row (b, t)'s position
    # (t0 + t for a cache's new rows; t, or t's place in its document, in training)
    B, T, W = qkv.shape
    half = cos.shape[1]
    hd = 2 * half
    sign = np.float32(sign)
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        cs, sn = cos[positions[b, t]], sin[positions[b, t]]
        row = qkv[b, t]
        for h in range(num_heads):
            x1 = row[h * hd:h * hd + half]
            x2 = row[h * hd + half:h * hd + hd]
            for j in range(half):
                a, b2 = x1[j], x2[j]
                c, s = cs[j], sn[j] * sign
                x1[j] = a * c - b2 * s
                x2[j] = b2 * c + a * s


# ---------------------------------------------------------------------------------------
# SwiGLU: fch (N, 2F) = [gate | up] (one matmul), out (N, F) = silu(gate) * up.

@njit(inline="always", **JIT)
def sigmoid_block(g, sig, tmp, ibuf, pbuf):
    """sig[j] = 1 / (1 + exp(-g[j])) with exp of -|g| only (no overflow), len(g) <= EXP_BLOCK."""
    count = g.shape[0]
    for j in range(count):
        tmp[j] = -abs(g[j])
    exp_block(tmp[:count], np.float32(0.0), np.float32(1.0), ibuf, pbuf)
    one = np.float32(1.0)
    for j in range(count):
        e = pbuf[j]
        sig[j] = one / (one + e) if g[j] >= 0 else e / (one + e)


@njit(**PJIT)
def swiglu_forward(out, fch):
    N, F = out.shape
    for r in prange(N):
        ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
        tmp, sig = np.empty(EXP_BLOCK, np.float32), np.empty(EXP_BLOCK, np.float32)
        gate, up, o = fch[r, :F], fch[r, F:], out[r]
        for start in range(0, F, EXP_BLOCK):
            count = min(EXP_BLOCK, F - start)
            g, u, ob = gate[start:start + count], up[start:start + count], o[start:start + count]
            sigmoid_block(g, sig, tmp, ibuf, pbuf)
            for j in range(count):
                ob[j] = g[j] * sig[j] * u[j]


@njit(**PJIT)
def swiglu_backward(dfch, dout, fch):
    """dfch (N, 2F) = [d gate | d up] from dout (N, F); overwritten."""
    N, F = dout.shape
    one = np.float32(1.0)
    for r in prange(N):
        ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
        tmp, sig = np.empty(EXP_BLOCK, np.float32), np.empty(EXP_BLOCK, np.float32)
        gate, up, d = fch[r, :F], fch[r, F:], dout[r]
        dgate, dup = dfch[r, :F], dfch[r, F:]
        for start in range(0, F, EXP_BLOCK):
            count = min(EXP_BLOCK, F - start)
            g, u, db = gate[start:start + count], up[start:start + count], d[start:start + count]
            dg, du = dgate[start:start + count], dup[start:start + count]
            sigmoid_block(g, sig, tmp, ibuf, pbuf)
            for j in range(count):
                s = sig[j]
                # silu(g) = g * s, silu'(g) = s * (1 + g * (1 - s))
                du[j] = db[j] * g[j] * s
                dg[j] = db[j] * u[j] * s * (one + g[j] * (one - s))
