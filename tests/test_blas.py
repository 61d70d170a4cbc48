"""blas.matmul_add (c += a @ b inside numpy's own sgemm) against float64 numpy."""

import numpy as np
import pytest

from tui_llm.engine.kernels import blas

needs_sgemm = pytest.mark.skipif(blas.matmul_add is None, reason="numpy's BLAS has no 64-bit cblas_sgemm to call")


@needs_sgemm
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (5, 3, 4), (64, 256, 96), (7, 0, 3)])
@pytest.mark.parametrize("a_transposed", [False, True])
@pytest.mark.parametrize("b_transposed", [False, True])
def test_matmul_add_adds_the_product(M, K, N, a_transposed, b_transposed):
    rng = np.random.default_rng(M * 100 + K + N)
    a = rng.standard_normal((K, M) if a_transposed else (M, K), dtype=np.float32)
    b = rng.standard_normal((N, K) if b_transposed else (K, N), dtype=np.float32)
    a, b = (a.T if a_transposed else a), (b.T if b_transposed else b)
    c = rng.standard_normal((M, N), dtype=np.float32)
    expected = c.astype(np.float64) + a.astype(np.float64) @ b.astype(np.float64)
    blas.matmul_add(c, a, b)
    assert np.max(np.abs(c - expected)) <= 1e-5 * max(1.0, np.max(np.abs(expected)))


@needs_sgemm
def test_matmul_add_on_views_of_a_larger_buffer():
    """Row blocks and column slices (leading dimension larger than the width), as the models pass them."""
    rng = np.random.default_rng(1)
    big = rng.standard_normal((10, 12), dtype=np.float32)
    a = rng.standard_normal((6, 5), dtype=np.float32)
    b = rng.standard_normal((5, 4), dtype=np.float32)
    expected = big.astype(np.float64)
    expected[2:8, 3:7] += a.astype(np.float64) @ b
    blas.matmul_add(big[2:8, 3:7], a, b)
    assert np.max(np.abs(big - expected)) < 1e-5


@needs_sgemm
def test_matmul_add_refuses_what_blas_cannot_take():
    c = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="do not match"):
        blas.matmul_add(c, np.zeros((3, 2), np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="float32"):
        blas.matmul_add(c, np.zeros((3, 3)), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="neither row-major"):
        blas.matmul_add(c, np.zeros((3, 6), np.float32)[:, ::2], np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="row-major"):
        blas.matmul_add(np.zeros((3, 3), np.float32).T, np.zeros((3, 3), np.float32), np.zeros((3, 3), np.float32))


def test_numpy_wheels_blas_is_found():
    """CI installs numpy from PyPI, whose OpenBLAS exports scipy_cblas_sgemm64_: the fast path is on there."""
    from threadpoolctl import threadpool_info

    names = [info.get("prefix") for info in threadpool_info() if info.get("user_api") == "blas"]
    if "libscipy_openblas" in names:
        assert blas.matmul_add is not None
