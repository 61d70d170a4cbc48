"""Numba kernels of the optimizer step: the gradient's norm, accumulation and one fused AdamW pass."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tui_llm.engine.kernels.common import JIT, PJIT

CHUNK = 1 << 16


@njit(nogil=True, cache=True, parallel=True, fastmath={"reassoc", "contract"})
def sum_of_squares(x):
    """sum(x**2) in float64, chunked; reassociation lets the sum vectorise (NaN/inf still propagate).

    Each chunk is a slice indexed from 0 (see exp_block: x[ci * CHUNK + i] compiled to gathers,
    3x slower: 62 against 19 ms for GPT-2 124M's gradients on an AVX-512 machine).
    """
    n = x.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros(nchunks, dtype=np.float64)
    for ci in prange(nchunks):
        chunk = x[ci * CHUNK:min(ci * CHUNK + CHUNK, n)]
        s = 0.0
        for i in range(chunk.shape[0]):
            xi = np.float64(chunk[i])
            s += xi * xi
        partial[ci] = s
    return partial.sum()


@njit(**PJIT)
def accumulate(acc, x):
    """acc += x over flat float32 buffers (gradient accumulation across micro-batches)."""
    n = acc.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    for ci in prange(nchunks):
        a = acc[ci * CHUNK:min(ci * CHUNK + CHUNK, n)]
        b = x[ci * CHUNK:min(ci * CHUNK + CHUNK, n)]
        for i in range(a.shape[0]):
            a[i] += b[i]


@njit(inline="always", **JIT)
def adamw_segment(p, g, m, v, lr, beta1, beta2, eps, wd, inv_b1c, inv_b2c, grad_scale):
    one = np.float32(1.0)
    for j in range(p.shape[0]):
        gj = g[j] * grad_scale
        mj = beta1 * m[j] + (one - beta1) * gj
        vj = beta2 * v[j] + (one - beta2) * gj * gj
        m[j] = mj
        v[j] = vj
        p[j] -= lr * ((mj * inv_b1c) / (np.sqrt(vj * inv_b2c) + eps) + wd * p[j])


@njit(**PJIT)
def adamw_update(params, grads, m, v, decay_starts, decay_ends, lr, beta1, beta2, eps,
                 weight_decay, step, grad_scale):
    """llm.c's AdamW, bias-corrected, decoupled decay; t = step (1-based).

    p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p) where wd applies only inside the
    [start, end) ranges given (the matrix tensors). grad_scale folds in gradient clipping.
    """
    n = params.shape[0]
    inv_b1c = np.float32(1.0 / (1.0 - beta1 ** step))
    inv_b2c = np.float32(1.0 / (1.0 - beta2 ** step))
    beta1, beta2 = np.float32(beta1), np.float32(beta2)
    lr, eps, grad_scale = np.float32(lr), np.float32(eps), np.float32(grad_scale)
    nchunks = (n + CHUNK - 1) // CHUNK
    for ci in prange(nchunks):
        start = ci * CHUNK
        end = min(start + CHUNK, n)
        # split the chunk where a decayed (matrix) range begins or ends; ranges are sorted
        i = start
        while i < end:
            wd = np.float32(0.0)
            seg_end = end
            for k in range(decay_starts.shape[0]):
                s0, s1 = decay_starts[k], decay_ends[k]
                if s0 <= i < s1:
                    wd = np.float32(weight_decay)
                    seg_end = min(end, s1)
                    break
                if s0 > i:
                    seg_end = min(seg_end, s0)
                    break
            adamw_segment(params[i:seg_end], grads[i:seg_end], m[i:seg_end], v[i:seg_end], lr, beta1, beta2,
                          eps, wd, inv_b1c, inv_b2c, grad_scale)
            i = seg_end
