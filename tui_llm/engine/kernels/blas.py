"""c += a @ b in float32, inside the BLAS numpy itself uses (sgemm with beta = 1).

numpy's matmul always overwrites its output. Gradient accumulation wants each micro-batch's
weight gradient added to the sum: inside the gemm the addition rides along with the product,
where a separate pass over the gradients costs a trip through memory (grad_accumulation.py).

numpy's BLAS is found through threadpoolctl (the library file numpy loaded) and its sgemm is
called through ctypes. Only the 64-bit-integer OpenBLAS entry points whose argument types are
certain are used: `scipy_cblas_sgemm64_` (the OpenBLAS inside numpy's PyPI wheels) and
`cblas_sgemm64_`. With any other BLAS `matmul_add` is None and callers add through a scratch
buffer instead. ctypes releases the GIL during the call, as numpy does.
"""

from __future__ import annotations

import ctypes

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
SGEMM_NAMES = ("scipy_cblas_sgemm64_", "cblas_sgemm64_")  # cblas_sgemm with 64-bit integer sizes


def _find_sgemm():
    """numpy's cblas_sgemm (64-bit sizes) as a ctypes function, or None."""
    try:
        from threadpoolctl import threadpool_info

        libraries = [info["filepath"] for info in threadpool_info() if info.get("user_api") == "blas"]
    except Exception:  # threadpoolctl cannot inspect this process: no fast path
        return None
    for path in libraries:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in SGEMM_NAMES:
            fn = getattr(lib, name, None)
            if fn is not None:
                i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, i64, i64, i64, f32, ptr, i64, ptr, i64,
                               f32, ptr, i64]
                fn.restype = None
                return fn
    return None


_sgemm = _find_sgemm()


def _operand(x: np.ndarray) -> tuple[int, int]:
    """(transpose flag, leading dimension) of a float32 matrix that is row-major or a transposed view of one."""
    if x.dtype != np.float32 or x.ndim != 2:
        raise TypeError(f"matmul_add: expected 2-D float32 matrices, got {x.dtype} {x.shape}")
    rows, cols = x.shape
    s0, s1 = x.strides[0] // 4, x.strides[1] // 4
    if s1 == 1 and s0 >= max(1, cols) and x.strides[0] % 4 == 0:
        return NO_TRANS, s0
    if s0 == 1 and s1 >= max(1, rows) and x.strides[1] % 4 == 0:
        return TRANS, s1
    raise ValueError(f"matmul_add: a matrix with strides {x.strides} is neither row-major nor its transpose")


def _matmul_add(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """c (M, N) += a (M, K) @ b (K, N); each a row-major matrix or a transposed view of one, c row-major."""
    (M, K), (K2, N) = a.shape, b.shape
    if K2 != K or c.shape != (M, N):
        raise ValueError(f"matmul_add: shapes {a.shape} @ {b.shape} -> {c.shape} do not match")
    if M == 0 or N == 0 or K == 0:  # nothing to add (and empty arrays have no usable strides)
        return
    trans_a, lda = _operand(a)
    trans_b, ldb = _operand(b)
    trans_c, ldc = _operand(c)
    if trans_c != NO_TRANS:
        raise ValueError("matmul_add: the output must be row-major")
    _sgemm(ROW_MAJOR, trans_a, trans_b, M, N, K, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 1.0, c.ctypes.data, ldc)


matmul_add = _matmul_add if _sgemm is not None else None
"""c += a @ b through numpy's BLAS, or None where that BLAS's sgemm cannot be called safely."""
