"""The bf16 GEMM (kernels/bf16_matmul.py): its rounding against known bit patterns, its products
against float64 products of the bf16-rounded inputs, in every layout the models use and with
sizes that are not multiples of the blocking."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from tui_llm.engine.kernels import bf16_matmul as K
from tui_llm.engine.kernels.bf16 import narrow_to_bf16

pytestmark = pytest.mark.skipif(not K.cpu_has_bf16(), reason="this CPU has no avx512_bf16 (vdpbf16ps)")


def rounded_bits(x: np.ndarray) -> np.ndarray:
    bits = np.empty(x.size, np.uint16)
    K.round_to_bf16(bits, np.ascontiguousarray(x, np.float32).reshape(-1))
    return bits.reshape(x.shape)


def rounded64(x: np.ndarray) -> np.ndarray:
    """x rounded to bf16 as the packing rounds it, as float64."""
    return (rounded_bits(x).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def operand(rng, rows: int, cols: int, transposed: bool) -> np.ndarray:
    """A (rows, cols) float32 matrix: row-major, or the transposed view of a (cols, rows) one."""
    if transposed:
        return rng.standard_normal((cols, rows)).astype(np.float32).T
    return rng.standard_normal((rows, cols)).astype(np.float32)


def check(c: np.ndarray, a: np.ndarray, b: np.ndarray, c0: np.ndarray | None = None) -> None:
    """c equals (c0 +) bf16(a) @ bf16(b) up to float32 summation error."""
    ra, rb = rounded64(a), rounded64(b)
    ref = ra @ rb + (0 if c0 is None else c0.astype(np.float64))
    magnitude = np.abs(ra) @ np.abs(rb) + (0 if c0 is None else np.abs(c0))
    bound = (a.shape[1] + 2) * 2.0**-24 * magnitude + 1e-30
    err = np.abs(c.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max error/bound {np.max(err / bound):.3g}"


# -- rounding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("word, expected", [
    (0x3F800000, 0x3F80),   # 1.0 exactly
    (0x3F808000, 0x3F80),   # tie, even below: down
    (0x3F818000, 0x3F82),   # tie, odd below: up to even
    (0x3F808001, 0x3F81),   # above the tie: up
    (0x3F807FFF, 0x3F80),   # below the tie: down
    (0xBF818000, 0xBF82),   # negative tie: magnitude to even
    (0x7F7FFFFF, 0x7F80),   # the largest float32 rounds up to inf
    (0x7F800000, 0x7F80),   # inf
    (0xFF800000, 0xFF80),   # -inf
    (0x00000001, 0x0000),   # smallest subnormal: to +0
    (0x80000000, 0x8000),   # -0
])
def test_rounding_known_bits(word, expected):
    x = np.array([word], np.uint32).view(np.float32)
    assert int(rounded_bits(x)[0]) == expected


@pytest.mark.parametrize("word", [0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF])
def test_rounding_keeps_nan_a_nan(word):
    bits = int(rounded_bits(np.array([word], np.uint32).view(np.float32))[0])
    assert bits & 0x7F80 == 0x7F80 and bits & 0x007F != 0, hex(bits)
    assert bits & 0x8000 == (word >> 16) & 0x8000  # sign kept


def test_rounding_agrees_with_the_weights_narrowing():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(100_000) * 10.0 ** rng.integers(-30, 30, 100_000)).astype(np.float32)
    expected = np.empty(x.size, np.uint16)
    narrow_to_bf16(expected, x)
    np.testing.assert_array_equal(rounded_bits(x), expected)


# -- products -----------------------------------------------------------------------------------------

SHAPES = [  # (M, K, N): tiny, odd, one past each blocking size, several cache blocks
    (1, 1, 1),
    (3, 5, 7),
    (K.MR + 1, K.KC + 3, K.NR + 5),
    (K.MC + 5, 2 * K.KC + 1, 2 * K.NR - 1),
    (2 * K.MR, 64, K.NC + K.NR + 3),
    (40, 96, 48),
]


@pytest.mark.parametrize("a_t", [False, True], ids=["a", "aT"])
@pytest.mark.parametrize("b_t", [False, True], ids=["b", "bT"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_product_against_float64(shape, a_t, b_t):
    M, Kd, N = shape
    rng = np.random.default_rng(M * 1000 + Kd + N)
    a, b = operand(rng, M, Kd, a_t), operand(rng, Kd, N, b_t)
    check(K.bf16_matmul(a, b), a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(200, 300, 40), (40, 300, 200)], ids=["split rows", "split columns"])
def test_accumulate_into_a_strided_output(shape, threads):
    M, Kd, N = shape
    rng = np.random.default_rng(7)
    a, b = operand(rng, M, Kd, True), operand(rng, Kd, N, False)
    wide = rng.standard_normal((M, N + 9)).astype(np.float32)
    before = wide.copy()
    out = wide[:, 4:4 + N]                       # rows of unit stride, row stride N + 9
    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        K.bf16_matmul(a, b, out=out, accumulate=True)
    finally:
        numba.set_num_threads(saved)
    check(out, a, b, c0=before[:, 4:4 + N])
    np.testing.assert_array_equal(wide[:, :4], before[:, :4])     # nothing written outside out
    np.testing.assert_array_equal(wide[:, 4 + N:], before[:, 4 + N:])


def test_overwrite_ignores_what_out_held():
    rng = np.random.default_rng(3)
    a, b = operand(rng, 30, 50, False), operand(rng, 50, 70, True)
    out = np.full((30, 70), np.nan, np.float32)
    check(K.bf16_matmul(a, b, out=out), a, b)


def test_exact_on_bf16_inputs_with_short_sums():
    """Small integers are exact in bf16 and their sums exact in float32: the product is exact."""
    rng = np.random.default_rng(4)
    a = rng.integers(-8, 9, (37, 21)).astype(np.float32)
    b = rng.integers(-8, 9, (21, 53)).astype(np.float32)
    np.testing.assert_array_equal(K.bf16_matmul(a, b), (a.astype(np.float64) @ b).astype(np.float32))


def test_k_zero_and_empty():
    a, b = np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32)
    np.testing.assert_array_equal(K.bf16_matmul(a, b), np.zeros((3, 4), np.float32))
    out = np.ones((3, 4), np.float32)
    K.bf16_matmul(a, b, out=out, accumulate=True)
    np.testing.assert_array_equal(out, np.ones((3, 4), np.float32))


def test_bad_operands_are_refused():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError):
        K.bf16_matmul(a, np.zeros((5, 2), np.float32))
    with pytest.raises(TypeError):
        K.bf16_matmul(a.astype(np.float64), np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError):
        K.bf16_matmul(a, np.zeros((4, 2), np.float32), out=np.zeros((2, 3), np.float32).T)
    with pytest.raises(ValueError):
        K.bf16_matmul(np.zeros((3, 8), np.float32)[:, ::2], np.zeros((4, 2), np.float32))
