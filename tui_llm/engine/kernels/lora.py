"""LoRA's dropout, as a counter-based random mask: the same key gives the same mask, so the
backward (and a recomputed forward, and a resumed run) rebuilds it instead of keeping it.

Element k = r * cols + c of a site's (rows, cols) input is kept when the top 24 bits of
mix(key + k * golden) are at least p * 2^24 (mix: splitmix64's finaliser, as in bf16.py), and
scaled by 1 / (1 - p), as torch's nn.Dropout does. The key names the optimizer step, the
micro-batch, the rank, the layer and the adapter (models/lora.py).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tui_llm.engine.kernels.common import JIT, PJIT

GOLDEN = 0x9E3779B97F4A7C15


@njit(inline="always", **JIT)
def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(**PJIT)
def dropout_apply(out, x, p, key):
    """out (rows, cols) = x with each element zeroed with probability p (the mask of `key`), the
    rest scaled by 1 / (1 - p). out may be x itself (in place)."""
    rows, cols = x.shape
    threshold = np.uint64(int(p * 16777216.0))
    scale = np.float32(1.0 / (1.0 - p))
    base = np.uint64(key)
    for r in prange(rows):
        xr, o = x[r], out[r]
        k0 = np.uint64(r) * np.uint64(cols)
        for c in range(cols):
            z = _mix(base + (k0 + np.uint64(c)) * np.uint64(GOLDEN))
            o[c] = xr[c] * scale if (z >> np.uint64(40)) >= threshold else np.float32(0.0)


def dropout_key(*parts: int) -> int:
    """One 64-bit key from small non-negative integers (seed, step, micro-batch, rank, layer, adapter)."""
    z = 0
    for part in parts:
        z = _mix_py((z + (int(part) & (2**64 - 1)) * GOLDEN) & (2**64 - 1))
    return z


def _mix_py(z: int) -> int:
    mask = 2**64 - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)
