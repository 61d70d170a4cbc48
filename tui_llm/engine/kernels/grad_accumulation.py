"""Weight gradients that add into the running sum of a step's micro-batches, as they are made.

Gradient accumulation sums K micro-batches' gradients before one optimizer step. Writing each
micro-batch's gradients into a buffer of their own and adding that buffer to the sum afterwards
costs a second gradient-sized buffer (4 bytes per parameter) and a pass over three of them per
micro-batch: for GPT-2 d12 40 ms of a 1.2 s micro-batch. Instead, while accumulating:

* where numpy's BLAS lets us (blas.matmul_add: the OpenBLAS of numpy's wheels), the product is
  added inside the gemm (beta = 1), where it costs next to nothing;
* otherwise it goes to a scratch buffer the size of one layer's largest matrix, still in cache
  when it is added to the sum (`accumulate`); the output head's (vocabulary x channels) product
  is done in row blocks of that size.

Bias and norm gradients are added by their kernels (their `accumulate` argument). Without
accumulation (the first micro-batch, or a step of one) products write straight into the
gradient.
"""

from __future__ import annotations

import numpy as np

from tui_llm.engine.kernels import blas
from tui_llm.engine.kernels.optimizer import accumulate as add_into


def needs_scratch() -> bool:
    """Whether accumulating goes through a scratch buffer (numpy's BLAS cannot add in place)."""
    return blas.matmul_add is None


def matmul_grad(out: np.ndarray, a: np.ndarray, b: np.ndarray, scratch: np.ndarray | None, accumulate: bool) -> None:
    """out = a @ b, or out += a @ b when accumulating (scratch: at least out.size floats, used
    when numpy's BLAS cannot add in place)."""
    if not accumulate:
        np.matmul(a, b, out=out)
    elif blas.matmul_add is not None:
        blas.matmul_add(out, a, b)
    else:
        assert scratch is not None, "accumulating without in-place BLAS needs the scratch"
        part = scratch[:out.size].reshape(out.shape)
        np.matmul(a, b, out=part)
        add_into(out.reshape(-1), part.reshape(-1))


def head_grad(out: np.ndarray, dlogits: np.ndarray, x: np.ndarray, scratch: np.ndarray | None,
              accumulate: bool) -> None:
    """out (Vp, C) = dlogitsᵀ (Vp, N) @ x (N, C), or out += it when accumulating (through the
    scratch: in blocks of vocabulary rows that fit it)."""
    if not accumulate or blas.matmul_add is not None:
        matmul_grad(out, dlogits.T, x, scratch, accumulate)
        return
    assert scratch is not None, "accumulating without in-place BLAS needs the scratch"
    rows = scratch.size // out.shape[1]
    for r0 in range(0, out.shape[0], rows):
        r1 = min(r0 + rows, out.shape[0])
        matmul_grad(out[r0:r1], dlogits[:, r0:r1].T, x, scratch, True)
