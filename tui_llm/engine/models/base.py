"""What every model shares: one flat float32 parameter buffer, gradients made on first use, the
activation buffers of the last (B, T), and the API the trainer, the optimizer and the sampler use.

    model = GPT(config) | Llama(config)           # or .random_init(config, seed)
    loss = model.forward(inputs, targets, training=True)   # (B, T) int32 token ids
    model.backward(accumulate=False)              # gradients into model.grads (or added to them)
    cache = model.new_kv_cache()                  # sampling: positions appended one call at a time
    logits = model.extend(cache, tokens, t0)

A model is the math of one architecture over `params` (named views into `params.flat`); it keeps
no optimizer state and knows nothing of files or training runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tui_llm.engine.models.gpt2_config import ParamTensors


class Model:
    """The shared part of GPT and Llama. A subclass sets MATRIX_PARAMS (the weight-decayed
    tensors), make_params (its parameter layout) and make_activations, and writes forward,
    backward, new_kv_cache and extend."""

    MATRIX_PARAMS: tuple[str, ...] = ()

    def __init__(self, config: Any, params: np.ndarray | None = None):
        self.config = config
        self.params = self.make_params(config, params)
        self.num_parameters = int(self.params.flat.size)
        self.grads: ParamTensors | None = None
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

    def decay_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) offsets of the matrix tensors in the flat buffer (weight-decayed ones)."""
        ranges = sorted(self.params.offsets[name] for name in self.MATRIX_PARAMS if name in self.params.offsets)
        return (np.array([r[0] for r in ranges], np.int64), np.array([r[1] for r in ranges], np.int64))

    def allocate_grads(self) -> ParamTensors:
        """The gradient buffer, the same layout as params (allocated on first use)."""
        if self.grads is None:
            self.grads = self.make_params(self.config)
        return self.grads

    def _ensure_buffers(self, B: int, T: int) -> Any:
        """The activation buffers for (B, T), reused while the shape stays the same."""
        if self.config.max_seq_len < T:
            raise ValueError(f"sequence length {T} exceeds the model's maximum {self.config.max_seq_len}")
        if self.acts is None or (self.acts.B, self.acts.T) != (B, T):
            self.acts = None  # free the old buffers before allocating new ones
            self.acts = self.make_activations(B, T)
        return self.acts

    # the math, per architecture
    def forward(self, inputs: np.ndarray, targets: np.ndarray | None = None, training: bool = False) -> float | None:
        raise NotImplementedError

    def backward(self, accumulate: bool = False) -> None:
        raise NotImplementedError

    def new_kv_cache(self) -> Any:
        raise NotImplementedError

    def extend(self, cache: Any, tokens: np.ndarray, t0: int) -> np.ndarray:
        raise NotImplementedError
