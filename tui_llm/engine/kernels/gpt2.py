"""Numba kernels of GPT-2 (llm.c's train_gpt2.c): encoder, LayerNorm, residual + bias, GELU.

Each kernel mirrors one function of train_gpt2.c (same math, float32 throughout), read side by
side with it; the kernels the Llama family shares are in common.py.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from tui_llm.engine.kernels.common import JIT, PJIT

GELU_SCALE = np.float32(math.sqrt(2.0 / math.pi))
GELU_CUBE = np.float32(0.044715)

# ---------------------------------------------------------------------------------------
# tanh without a libm call, so the GELU loops vectorise. A [13/6] rational approximation of
# tanh on [-7.9, 7.9] (the form Eigen uses for float); beyond that tanh is +-1 in float32.
# Max error against float64 tanh is about 1 ulp (checked in tests/test_kernels.py).

TANH_CLAMP = np.float32(7.90531110763549805)


@njit(inline="always", **JIT)
def fast_tanh(x):
    x = min(max(x, -TANH_CLAMP), TANH_CLAMP)
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    p = p * x
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return p / q


@njit(**PJIT)
def tanh_array(out, x):
    """Elementwise fast_tanh (exposed for the accuracy test)."""
    for i in prange(x.shape[0]):
        out[i] = fast_tanh(x[i])


# ---------------------------------------------------------------------------------------
# Encoder: x[b, t] = wte[token] + wpe[position]; the position is t, or t's place in its
# document when a row packs several (model.forward's doc_starts).

@njit(**PJIT)
def encoder_forward(out, tokens, positions, wte, wpe):
    # out (B, T, C), tokens, positions (B, T) int32, wte (Vp, C), wpe (maxT, C)
    B, T, C = out.shape
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        tok, pos = tokens[b, t], positions[b, t]
        for c in range(C):
            out[b, t, c] = wte[tok, c] + wpe[pos, c]


@njit(**JIT)
def encoder_backward(dwte, dwpe, dout, tokens, positions):
    """Accumulate (+=) into dwte rows and dwpe rows. Serial: tokens repeat, rows would race."""
    B, T, C = dout.shape
    for b in range(B):
        for t in range(T):
            tok, pos = tokens[b, t], positions[b, t]
            for c in range(C):
                d = dout[b, t, c]
                dwte[tok, c] += d
                dwpe[pos, c] += d


# ---------------------------------------------------------------------------------------
# LayerNorm over the last axis, eps 1e-5, biased variance; caches mean and 1/std.

@njit(**PJIT)
def layernorm_forward(out, mean, rstd, x, weight, bias):
    # out, x (N, C); mean, rstd (N,); weight, bias (C,)
    N, C = x.shape
    eps = np.float32(1e-5)
    for r in prange(N):
        row = x[r]
        m = np.float32(0.0)
        for c in range(C):
            m += row[c]
        m = m / C
        var = np.float32(0.0)
        for c in range(C):
            d = row[c] - m
            var += d * d
        var = var / C
        s = np.float32(1.0) / np.sqrt(var + eps)
        o = out[r]
        for c in range(C):
            o[c] = (row[c] - m) * s * weight[c] + bias[c]
        mean[r] = m
        rstd[r] = s


@njit(**PJIT)
def layernorm_backward(dx, dweight, dbias, dout, x, mean, rstd, weight, accumulate):
    """dx += d(out)/dx . dout (rows in parallel); dweight, dbias are overwritten (accumulate=False)
    or added to (True: the next micro-batch of an accumulated step); empty ones are not computed
    (a frozen base)."""
    N, C = x.shape
    for r in prange(N):
        m, s = mean[r], rstd[r]
        row, drow, dxr = x[r], dout[r], dx[r]
        # g = weight * dout; dx = s * (g - mean(g) - n * mean(g * n)), n = normalised x
        g_mean = np.float32(0.0)
        gn_mean = np.float32(0.0)
        for c in range(C):
            n = (row[c] - m) * s
            g = weight[c] * drow[c]
            g_mean += g
            gn_mean += g * n
        g_mean = g_mean / C
        gn_mean = gn_mean / C
        for c in range(C):
            n = (row[c] - m) * s
            g = weight[c] * drow[c]
            dxr[c] += s * (g - g_mean - n * gn_mean)
    # parameter gradients: column sums over rows (serial over rows, vectorised over C)
    if dweight.shape[0] == 0:
        return
    if not accumulate:
        dweight[:] = 0.0
        dbias[:] = 0.0
    for r in range(N):
        m, s = mean[r], rstd[r]
        for c in range(C):
            d = dout[r, c]
            dweight[c] += (x[r, c] - m) * s * d
            dbias[c] += d



# ---------------------------------------------------------------------------------------
# Residual and GELU (the matmul's bias is fused into the kernel that follows it)

@njit(**PJIT)
def residual_bias_forward(out, residual, proj, bias):
    """out = residual + proj + bias (the projection's bias fused in). All (N, C)."""
    N, C = out.shape
    for r in prange(N):
        o, a, p = out[r], residual[r], proj[r]
        for c in range(C):
            o[c] = a[c] + p[c] + bias[c]


@njit(**PJIT)
def bias_gelu_forward(out, x, bias):
    """x += bias (kept: the backward needs the pre-activation), out = gelu(x), tanh form."""
    N, C = x.shape
    for r in prange(N):
        xr, o = x[r], out[r]
        for c in range(C):
            v = xr[c] + bias[c]
            xr[c] = v
            u = GELU_SCALE * (v + GELU_CUBE * v * v * v)
            o[c] = np.float32(0.5) * v * (np.float32(1.0) + fast_tanh(u))


@njit(**PJIT)
def gelu_backward_inplace(dx, x):
    """dx (holding d gelu(x)) is turned into dx in place."""
    N, C = x.shape
    for r in prange(N):
        xr, d = x[r], dx[r]
        for c in range(C):
            v = xr[c]
            u = GELU_SCALE * (v + GELU_CUBE * v * v * v)
            th = fast_tanh(u)
            # 1 - tanh^2, exactly 0 where fast_tanh saturates (as 1/cosh^2 underflows in llm.c)
            sech2 = np.float32(1.0) - th * th if abs(u) < TANH_CLAMP else np.float32(0.0)
            grad = np.float32(0.5) * (np.float32(1.0) + th) + \
                v * np.float32(0.5) * sech2 * GELU_SCALE * (np.float32(1.0) + np.float32(3.0) * GELU_CUBE * v * v)
            d[c] = d[c] * grad
