"""A model's weights as its math reads them: float32 arrays, whatever the storage.

    w = Weights(params, layer_matrices=("qkvw", "attprojw", "fcw", "fcprojw"))
    np.matmul(x, w("qkvw", l).T, out=y)         # layer l's matrix, float32
    w.gather(out, "wte", tokens)                # embedding rows
    w.head_forward(logits, x, "wte")            # x @ Wᵀ over the whole vocabulary
    w.head_backward(dx, dlogits, "wte")         # dlogits @ W

Float32 storage (every full fine-tuning run, and LoRA over an fp32 base): each call returns a view
of the flat buffer, so the math is exactly what it was before this class existed.

bfloat16 storage (a frozen LoRA base, `--base-dtype bf16`): the flat buffer holds uint16 bits,
2 bytes per parameter. The small tensors (norm weights, biases, GPT-2's position table) are
widened once, at construction. A layer's matrix is widened when a product asks for it, into one
scratch buffer the size of the largest layer matrix that the next call overwrites (so a caller uses
the returned array before asking for another). The embedding and output head (vocabulary x
channels, the largest tensors) are widened in row blocks of that scratch as the products go.
There is never a second full-size float32 copy of the model: the extra memory is one layer matrix
plus the small tensors.

The products with the weights go through here too, in the precision `matmul_dtype` names
(`--matmul-dtype`): "fp32", numpy's BLAS (np.matmul, exactly as before); "bf16", the bf16 GEMM of
kernels/bf16_matmul.py, which rounds both inputs to bf16 as it packs them and sums in float32
(CPUs with avx512_bf16). The weights themselves, their gradients and AdamW's state stay float32.

    w.linear(y, x, "fcw", l)                    # y = x @ Wᵀ
    w.linear_dx(dx, dy, "fcw", l)               # dx = dy @ W
    w.weight_grad(dW, dy, x, scratch, acc)      # dW (+)= dyᵀ @ x
"""

from __future__ import annotations

import numpy as np

from tui_llm.engine.kernels import blas
from tui_llm.engine.kernels.bf16 import widen_bf16
from tui_llm.engine.kernels.bf16_matmul import bf16_matmul
from tui_llm.engine.kernels.grad_accumulation import head_grad, matmul_grad
from tui_llm.engine.models.gpt2_config import ParamTensors


class Weights:
    def __init__(self, params: ParamTensors, layer_matrices: tuple[str, ...], big: tuple[str, ...] = ("wte", "lm_head")):
        self.params = params
        self.bf16 = params.flat.dtype == np.uint16
        self.matmul_dtype = "fp32"  # "bf16": the products round their inputs to bf16 (set by the trainer)
        self.small: dict[str, np.ndarray] = {}
        self.scratch = np.empty(0, np.float32)
        if self.bf16:
            for name, view in params.items():
                if name not in layer_matrices and name not in big:
                    self.small[name] = widened(view)
            largest = max((params.views[name][0].size for name in layer_matrices if name in params.views), default=0)
            self.scratch = np.empty(largest, np.float32)

    def __call__(self, name: str, layer: int | None = None) -> np.ndarray:
        """Tensor `name` (of layer `layer` when given) as float32."""
        if not self.bf16:
            view = self.params.views[name]
            return view if layer is None else view[layer]
        if name in self.small:
            return self.small[name] if layer is None else self.small[name][layer]
        bits = self.params.views[name] if layer is None else self.params.views[name][layer]
        if bits.size > self.scratch.size:
            raise ValueError(f"{name} is too large to widen at once; use the head/gather methods")
        out = self.scratch[:bits.size].reshape(bits.shape)
        widen_bf16(out.reshape(-1), bits.reshape(-1))
        return out

    def nbytes_extra(self) -> int:
        """Memory beyond the flat buffer: the widened small tensors and the scratch."""
        return self.scratch.nbytes + sum(a.nbytes for a in self.small.values())

    # -- products with a layer's matrix ----------------------------------------------------------

    def _product(self, out: np.ndarray, a: np.ndarray, b: np.ndarray, accumulate: bool = False) -> None:
        """out = a @ b (out += a @ b when accumulate; only the bf16 path is asked to), in matmul_dtype."""
        if self.matmul_dtype == "bf16":
            bf16_matmul(a, b, out=out, accumulate=accumulate)
        else:
            np.matmul(a, b, out=out)

    def linear(self, out: np.ndarray, x: np.ndarray, name: str, layer: int) -> None:
        """out (N, rows) = x (N, in) @ W.T for layer `layer`'s (rows, in) matrix `name`."""
        self._product(out, x, self(name, layer).T)

    def linear_dx(self, dx: np.ndarray, dout: np.ndarray, name: str, layer: int) -> None:
        """dx (N, in) = dout (N, rows) @ W for layer `layer`'s (rows, in) matrix `name`."""
        self._product(dx, dout, self(name, layer))

    def weight_grad(self, grad: np.ndarray, dout: np.ndarray, x: np.ndarray, scratch: np.ndarray | None,
                    accumulate: bool, head: bool = False) -> None:
        """grad (rows, in) = dout (N, rows).T @ x (N, in), or += it when accumulating (the head's
        through head_grad's blocks when fp32 has to add through the scratch)."""
        if self.matmul_dtype == "bf16":
            bf16_matmul(dout.T, x, out=grad, accumulate=accumulate)
        elif head:
            head_grad(grad, dout, x, scratch, accumulate)
        else:
            matmul_grad(grad, dout.T, x, scratch, accumulate)

    # -- the vocabulary-sized tensors, in row blocks ------------------------------------------

    def _blocks(self, rows: int, cols: int):
        step = max(1, self.scratch.size // max(cols, 1))
        return [(r0, min(r0 + step, rows)) for r0 in range(0, rows, step)]

    def gather(self, out: np.ndarray, name: str, tokens: np.ndarray) -> None:
        """out (n, C) = rows `tokens` (n,) of tensor `name` (an embedding)."""
        if not self.bf16:
            np.take(self.params.views[name], tokens, axis=0, out=out)
            return
        bits = np.take(self.params.views[name], tokens, axis=0)            # (n, C) uint16
        widen_bf16(out.reshape(-1), bits.reshape(-1))

    def head_forward(self, out: np.ndarray, x: np.ndarray, name: str) -> None:
        """out (N, Vp) = x (N, C) @ W.T for the (Vp, C) tensor `name`."""
        W = self.params.views[name]
        if not self.bf16:
            self._product(out, x, W.T)
            return
        for r0, r1 in self._blocks(*W.shape):
            block = self.scratch[:(r1 - r0) * W.shape[1]].reshape(r1 - r0, W.shape[1])
            widen_bf16(block.reshape(-1), W[r0:r1].reshape(-1))
            self._product(out[:, r0:r1], x, block.T)

    def head_backward(self, dx: np.ndarray, dout: np.ndarray, name: str) -> None:
        """dx (N, C) = dout (N, Vp) @ W for the (Vp, C) tensor `name`."""
        W = self.params.views[name]
        if not self.bf16:
            self._product(dx, dout, W)
            return
        if self.matmul_dtype == "bf16":
            for i, (r0, r1) in enumerate(self._blocks(*W.shape)):
                block = self.scratch[:(r1 - r0) * W.shape[1]].reshape(r1 - r0, W.shape[1])
                widen_bf16(block.reshape(-1), W[r0:r1].reshape(-1))
                bf16_matmul(dout[:, r0:r1], block, out=dx, accumulate=i > 0)
            return
        add = blas.matmul_add
        part = None if add is not None else np.empty_like(dx)
        for i, (r0, r1) in enumerate(self._blocks(*W.shape)):
            block = self.scratch[:(r1 - r0) * W.shape[1]].reshape(r1 - r0, W.shape[1])
            widen_bf16(block.reshape(-1), W[r0:r1].reshape(-1))
            if i == 0:
                np.matmul(dout[:, r0:r1], block, out=dx)
            elif add is not None:
                add(dx, dout[:, r0:r1], block)
            else:
                assert part is not None
                np.matmul(dout[:, r0:r1], block, out=part)
                dx += part


def widened(bits: np.ndarray) -> np.ndarray:
    """A float32 copy of bf16 bits (any shape)."""
    out = np.empty(bits.shape, np.float32)
    widen_bf16(out.reshape(-1), np.ascontiguousarray(bits).reshape(-1))
    return out
