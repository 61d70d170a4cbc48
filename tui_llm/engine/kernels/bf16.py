"""Numba kernels over weight buffers: bfloat16 <-> float32, and the fingerprint of a model's weights.

A bfloat16 value is the top half of a float32's bit pattern; numpy has no such dtype, so bf16
weights live as their uint16 bits. Widening (bits << 16) is exact; narrowing rounds to the nearest
bf16, ties to even, as torch's `.to(torch.bfloat16)` does (NaN/inf are refused before it).

The fingerprint identifies a frozen base model for a LoRA run (its checkpoint records it, a resume
compares it): the 64-bit sum, over every weight i, of mix((i << 32) | bits_i), where bits_i is the
weight's float32 bit pattern (a bf16 weight's widened bits, so one model has one fingerprint in
either storage) and mix is splitmix64's finaliser, a bijection. Any single changed weight changes
exactly one term, so it always changes the sum; several changes cancel with probability about
2^-64. Not cryptographic: it detects a different or damaged base, not a forged one. The sum is
order-free, so the chunks run in parallel and the result does not depend on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from tui_llm.engine.kernels.common import JIT, PJIT

CHUNK = 1 << 16


@njit(**PJIT)
def widen_bf16(out, bits):
    """out (n,) float32 = the bf16 values whose bits (n,) uint16 holds."""
    wide = out.view(np.uint32)
    n = bits.shape[0]
    for ci in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = ci * CHUNK, min(ci * CHUNK + CHUNK, n)
        src, dst = bits[lo:hi], wide[lo:hi]
        for i in range(src.shape[0]):
            dst[i] = np.uint32(src[i]) << np.uint32(16)


@njit(**PJIT)
def narrow_to_bf16(bits, x):
    """bits (n,) uint16 = x (n,) float32 (finite) rounded to the nearest bf16, ties to even."""
    words = x.view(np.uint32)
    n = x.shape[0]
    for ci in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = ci * CHUNK, min(ci * CHUNK + CHUNK, n)
        src, dst = words[lo:hi], bits[lo:hi]
        for i in range(src.shape[0]):
            w = src[i]
            w = w + np.uint32(0x7FFF) + ((w >> np.uint32(16)) & np.uint32(1))
            dst[i] = np.uint16(w >> np.uint32(16))


@njit(inline="always", **JIT)
def _mix(z):
    """splitmix64's finaliser: a bijection of uint64 that scatters every input bit."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(**PJIT)
def fingerprint_f32(x):
    """The fingerprint (uint64) of float32 weights x (n,)."""
    words = x.view(np.uint32)
    n = words.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros(nchunks, np.uint64)
    for ci in prange(nchunks):
        lo = ci * CHUNK
        chunk = words[lo:min(lo + CHUNK, n)]
        s = np.uint64(0)
        for i in range(chunk.shape[0]):
            s += _mix((np.uint64(lo + i) << np.uint64(32)) | np.uint64(chunk[i]))
        partial[ci] = s
    total = np.uint64(0)
    for ci in range(nchunks):
        total += partial[ci]
    return total


@njit(**PJIT)
def fingerprint_bf16(bits):
    """The fingerprint of bf16 weights (n,) uint16: the same as fingerprint_f32 of their widened values."""
    n = bits.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros(nchunks, np.uint64)
    for ci in prange(nchunks):
        lo = ci * CHUNK
        chunk = bits[lo:min(lo + CHUNK, n)]
        s = np.uint64(0)
        for i in range(chunk.shape[0]):
            s += _mix((np.uint64(lo + i) << np.uint64(32)) | (np.uint64(chunk[i]) << np.uint64(16)))
        partial[ci] = s
    total = np.uint64(0)
    for ci in range(nchunks):
        total += partial[ci]
    return total


def fingerprint(flat: np.ndarray) -> str:
    """The fingerprint of a flat weight buffer (float32, or bf16 bits as uint16), as 16 hex digits."""
    value = fingerprint_bf16(flat) if flat.dtype == np.uint16 else fingerprint_f32(flat)
    return f"{int(value):016x}"
