"""AdamW exactly as llm.c, gradient clipping, and learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tui_llm.engine.kernels.optimizer import adamw_update, sum_of_squares
from tui_llm.engine.models.base import Model


@dataclass
class AdamWConfig:
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0   # decoupled; only the matrix tensors are decayed
    grad_clip: float = 0.0      # global-norm clipping threshold; 0 = off


class AdamW:
    """m and v live in flat buffers with the trained parameters' layout (model.trainable: every
    weight, or a LoRA run's adapters); one fused pass per step.

    shard=(start, end): this process updates only params[start:end] and keeps m and v for that
    slice alone (ZeRO-1: the ranks of an MPI run share the optimizer state; distributed.py
    gathers the weights after each update and the state for a checkpoint).
    """

    def __init__(self, model: Model, config: AdamWConfig | None = None, shard: tuple[int, int] | None = None):
        self.model = model
        self.config = config or AdamWConfig()
        self.start, self.end = shard if shard is not None else (0, model.num_trainable)
        self.m = np.zeros(self.end - self.start, np.float32)
        self.v = np.zeros(self.end - self.start, np.float32)
        self.step = 0  # number of updates done; the next one uses t = step + 1
        # the weight-decayed ranges (the matrix tensors) that fall inside the shard, from its start
        starts, ends = model.decay_ranges()
        starts, ends = np.clip(starts, self.start, self.end), np.clip(ends, self.start, self.end)
        inside = ends > starts
        self.decay_starts, self.decay_ends = starts[inside] - self.start, ends[inside] - self.start

    def load_state(self, m: np.ndarray, v: np.ndarray) -> None:
        """m and v of every parameter (a checkpoint's): this shard's part is kept."""
        self.m[:] = m[self.start:self.end]
        self.v[:] = v[self.start:self.end]

    def grad_norm(self, grads: np.ndarray | None = None, grad_scale: float = 1.0) -> float:
        """L2 norm (float64 accumulation) of grad_scale * grads (default: the model's gradients);
        with a shard, the caller adds up the shards' squares (the norm is global)."""
        grads = self.model.allocate_grads().flat if grads is None else grads
        return math.sqrt(sum_of_squares(grads)) * grad_scale

    def update(self, lr: float, grad_norm: float | None = None, grads: np.ndarray | None = None,
               grad_scale: float = 1.0) -> float:
        """One AdamW step with learning rate lr on the gradient grad_scale * grads (default: the
        model's gradients; gradient accumulation passes the sum of K micro-batch gradients and 1/K,
        which saves a pass over them). With a shard, grads is the shard's gradient and grad_norm
        the global norm. Returns the gradient norm before clipping."""
        cfg = self.config
        grads = self.model.allocate_grads().flat[self.start:self.end] if grads is None else grads
        if grad_norm is None:
            grad_norm = self.grad_norm(grads, grad_scale)
        scale = grad_scale
        if cfg.grad_clip > 0 and grad_norm > cfg.grad_clip:
            scale *= cfg.grad_clip / grad_norm
        self.step += 1
        adamw_update(self.model.trainable.flat[self.start:self.end], grads, self.m, self.v,
                       self.decay_starts, self.decay_ends, lr, cfg.beta1, cfg.beta2, cfg.eps,
                       cfg.weight_decay, self.step, scale)
        return grad_norm


def learning_rate(step: int, base_lr: float, total_steps: int, schedule: str = "constant",
                  warmup: int = 0, final_fraction: float = 0.1) -> float:
    """Learning rate for update number `step` (0-based).

    constant: base_lr after an optional linear warmup.
    cosine: linear warmup over `warmup` steps (lr * (step+1)/warmup, as llm.c), then cosine
    decay from base_lr to base_lr * final_fraction at the last step.
    """
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        decay_steps = max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / decay_steps)
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
        min_lr = base_lr * final_fraction
        return min_lr + coeff * (base_lr - min_lr)
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (constant or cosine)")
