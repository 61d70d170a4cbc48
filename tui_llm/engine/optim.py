"""AdamW exactly as llm.c, gradient clipping, and learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tui_llm.engine import kernels as K
from tui_llm.engine.model import GPT


@dataclass
class AdamWConfig:
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0   # decoupled; only the matrix tensors are decayed
    grad_clip: float = 0.0      # global-norm clipping threshold; 0 = off


class AdamW:
    """m and v live in flat buffers with the parameters' layout; one fused pass per step."""

    def __init__(self, model: GPT, config: AdamWConfig | None = None):
        self.model = model
        self.config = config or AdamWConfig()
        n = model.num_parameters
        self.m = np.zeros(n, np.float32)
        self.v = np.zeros(n, np.float32)
        self.step = 0  # number of updates done; the next one uses t = step + 1
        self.decay_starts, self.decay_ends = model.decay_ranges()

    def grad_norm(self) -> float:
        """Global L2 norm of all gradients (float64 accumulation)."""
        return math.sqrt(K.sum_of_squares(self.model.grads.flat))

    def update(self, lr: float, grad_norm: float | None = None) -> float:
        """One AdamW step with learning rate lr. Returns the gradient norm before clipping."""
        cfg = self.config
        if grad_norm is None:
            grad_norm = self.grad_norm()
        scale = 1.0
        if cfg.grad_clip > 0 and grad_norm > cfg.grad_clip:
            scale = cfg.grad_clip / grad_norm
        self.step += 1
        K.adamw_update(self.model.params.flat, self.model.grads.flat, self.m, self.v,
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
