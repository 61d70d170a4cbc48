"""What every model shares: one flat float32 parameter buffer, gradients made on first use, the
activation buffers of the last (B, T), and the API the trainer, the optimizer and the sampler use.

    model = GPT(config) | Llama(config)           # or .random_init(config, seed)
    loss = model.forward(inputs, targets, training=True)   # (B, T) int32 token ids
    loss = model.forward(inputs, targets, training=True, loss_weights=w)   # sum(w * losses): a masked loss
    model.backward(accumulate=False)              # gradients into model.grads (or added to them)
    cache = model.new_kv_cache()                  # sampling: positions appended one call at a time
    logits = model.extend(cache, tokens, t0)

A model is the math of one architecture over `params` (named views into `params.flat`); it keeps
no optimizer state and knows nothing of files or training runs.

What trains: every parameter (full fine-tuning), or, after `attach_lora`, only the adapters
(lora.py; the base is frozen: no gradient buffer, its weight gradients are never computed, and
it may be stored as bf16, weights.py). `trainable` is what the optimizer updates and
`allocate_grads()` its gradients, either way. `recompute=True` keeps only each layer's input
from the training forward and runs the layer again in the backward (Activations, per model).
Every product with a base matrix goes through `_linear` / `_linear_backward`, which add the
adapters' terms.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tui_llm.engine.kernels import common as K
from tui_llm.engine.models.gpt2_config import ParamTensors
from tui_llm.engine.models.lora import Adapters, LoraConfig, init_adapters
from tui_llm.engine.models.weights import Weights


class Model:
    """The shared part of GPT and Llama. A subclass sets MATRIX_PARAMS (the weight-decayed
    tensors), make_params (its parameter layout) and make_activations, and writes forward,
    backward, new_kv_cache and extend."""

    MATRIX_PARAMS: tuple[str, ...] = ()
    LAYER_MATRICES = ("qkvw", "attprojw", "fcw", "fcprojw")  # per-layer matrices (L, out, in)

    def __init__(self, config: Any, params: np.ndarray | None = None, *, recompute: bool = False):
        self.config = config
        self.params = self.make_params(config, params)   # float32, or bf16 bits (uint16) for a frozen base
        self.w = Weights(self.params, self.LAYER_MATRICES)
        self.num_parameters = int(self.params.flat.size)
        self.lora: Adapters | None = None
        self.recompute = recompute
        self.grads: ParamTensors | None = None           # the base's gradients (never with LoRA)
        self.grad_scratch: np.ndarray | None = None   # backward(accumulate=True)'s, made on first use if needed
        self.acts: Any = None                          # the activations of the last (B, T)
        self.inputs: np.ndarray | None = None
        self.targets: np.ndarray | None = None
        self.doc_starts: np.ndarray | None = None     # (B, T) int32: where each position's document starts
        self.positions: np.ndarray | None = None      # (B, T) int32: each position's place in its document
        self.trained_forward = False
        self.name = ""                                 # what the weights are (load_model sets it)
        self.tokenizer_dir: str | None = None          # where its tokenizer.json is (None: GPT-2's)

    @staticmethod
    def make_params(config: Any, params: np.ndarray | None = None) -> ParamTensors:
        raise NotImplementedError

    def make_activations(self, B: int, T: int) -> Any:
        raise NotImplementedError

    # -- what trains ------------------------------------------------------------------------

    def attach_lora(self, lora: LoraConfig, flat: np.ndarray | None = None, seed: int = 42) -> Adapters:
        """Freeze the base and train LoRA adapters over it: `flat` (a checkpoint's) or PEFT's init."""
        self.lora = Adapters(self.config, lora, flat)
        if flat is None:
            init_adapters(self.lora.params, seed)
        self.grads = None
        self.acts = None  # the activations now keep the adapters' terms too
        return self.lora

    @property
    def base_dtype(self) -> str:
        return "bf16" if self.params.flat.dtype == np.uint16 else "fp32"

    @property
    def trainable(self) -> ParamTensors:
        """The parameters the optimizer updates: the adapters with LoRA, else all of them."""
        return self.lora.params if self.lora is not None else self.params

    @property
    def num_trainable(self) -> int:
        return int(self.trainable.flat.size)

    def decay_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) offsets of the weight-decayed tensors in the trainable flat buffer: the base's
        matrices, or every adapter matrix (PEFT with transformers' Trainer decays them too)."""
        if self.lora is not None:
            return np.array([0], np.int64), np.array([self.lora.num_parameters], np.int64)
        ranges = sorted(self.params.offsets[name] for name in self.MATRIX_PARAMS if name in self.params.offsets)
        return (np.array([r[0] for r in ranges], np.int64), np.array([r[1] for r in ranges], np.int64))

    def allocate_grads(self) -> ParamTensors:
        """The gradient buffer of what trains (the adapters', or the base's in params' layout),
        allocated on first use."""
        if self.lora is not None:
            return self.lora.allocate_grads()
        if self.params.flat.dtype != np.float32:
            raise ValueError("a bf16 base is frozen: it trains only with LoRA adapters")
        if self.grads is None:
            self.grads = self.make_params(self.config)
        return self.grads

    # -- products with the base matrices (and their adapters) --------------------------------

    def _linear(self, out: np.ndarray, x: np.ndarray, matrix: str, layer: int, kept=None, key=None) -> None:
        """out (N, rows) = x (N, in) @ W.T for layer `layer`'s `matrix`, plus its adapters' terms
        (kept: where they keep u for the backward; key: the dropout masks', None for none)."""
        self.w.linear(out, x, matrix, layer)
        if self.lora is not None:
            self.lora.forward(out, x, matrix, layer, kept, key)

    def _rerun_linear(self, x: np.ndarray, matrix: str, layer: int, kept, key) -> None:
        """What a recomputing backward needs of a product it does not redo: its adapters' kept terms."""
        if self.lora is not None and matrix in self.lora.by_matrix:
            self.lora.keep(x, matrix, layer, kept, key)

    def _linear_backward(self, dx: np.ndarray | None, dout: np.ndarray, x: np.ndarray, matrix: str, layer: int,
                         accumulate: bool, kept=None, key=None) -> None:
        """The gradients of _linear from dout (N, rows): W's when the base trains, the adapters'
        with LoRA, and dx (N, in) = dout @ W + the adapters' terms (skipped when dx is None)."""
        if self.lora is None:
            g = self.allocate_grads()
            self.w.weight_grad(g.views[matrix][layer], dout, x, self.grad_scratch, accumulate)
        if dx is not None:
            self.w.linear_dx(dx, dout, matrix, layer)
        if self.lora is not None:
            self.lora.backward(dx, dout, x, matrix, layer, kept, key, accumulate)

    def _ensure_buffers(self, B: int, T: int) -> Any:
        """The activation buffers for (B, T), reused while the shape stays the same."""
        if self.config.max_seq_len < T:
            raise ValueError(f"sequence length {T} exceeds the model's maximum {self.config.max_seq_len}")
        if self.acts is None or (self.acts.B, self.acts.T, self.acts.recompute) != (B, T, self.recompute):
            self.acts = None  # free the old buffers before allocating new ones
            self.acts = self.make_activations(B, T)
        return self.acts

    def _loss(self, targets: np.ndarray, loss_weights: np.ndarray | None, training: bool) -> float:
        """The loss of acts.logits against targets (B, T); with training the logits become dlogits.

        Without loss_weights: the mean over the B*T positions, and its gradient. With loss_weights
        (B, T) float32: sum(loss_weights * losses) and its gradient; a position of weight 0 costs
        nothing. The trainer passes the loss mask divided by the counted tokens of the whole optimizer
        step (times its micro-batches and ranks, which the mean gradient divides by again), so the
        step's loss and gradient are the mean over its counted tokens however the step is split."""
        a, V = self.acts, self.config.vocab_size
        targets = np.ascontiguousarray(targets, dtype=np.int32)
        self.targets = targets
        N = targets.size
        if loss_weights is None:
            K.softmax_crossentropy(a.logits, a.losses, targets.reshape(N), V, np.float32(1.0 / N), training)
            loss = float(a.losses.sum(dtype=np.float32) / N)
        else:
            weights = np.ascontiguousarray(loss_weights, dtype=np.float32)
            if weights.shape != targets.shape:
                raise ValueError(f"loss_weights has shape {weights.shape}, the targets {targets.shape}")
            weights = weights.reshape(N)
            K.softmax_crossentropy_weighted(a.logits, a.losses, targets.reshape(N), V, weights, training)
            loss = float(np.dot(a.losses.astype(np.float64), weights))
        self.trained_forward = training
        return loss

    # the math, per architecture
    def forward(self, inputs: np.ndarray, targets: np.ndarray | None = None, training: bool = False,
                doc_starts: np.ndarray | None = None, loss_weights: np.ndarray | None = None) -> float | None:
        raise NotImplementedError

    def backward(self, accumulate: bool = False) -> None:
        raise NotImplementedError

    def new_kv_cache(self) -> Any:
        raise NotImplementedError

    def extend(self, cache: Any, tokens: np.ndarray, t0: int) -> np.ndarray:
        raise NotImplementedError
