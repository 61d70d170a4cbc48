"""A deliberately plain float64 LoRA linear layer, written separately from the engine.

    y = x Wᵀ + s · ((x ⊙ m) Aᵀ) Bᵀ        m: the dropout mask, already scaled (0 or 1/(1-p)); 1 without dropout

The backward is derived by hand (below) and checked against finite differences in
tests/test_lora.py. For a whole model the tests use the merged weight W + s B A instead: the
model's output is the base model's with that weight, and the adapters' gradients follow from the
merged weight's gradient G (dL/dW'):  dB = s G Aᵀ,  dA = s Bᵀ G (without dropout).
"""

from __future__ import annotations


def forward(x, W, A, B, s, mask=None):
    """x (N, in), W (out, in), A (r, in), B (out, r) -> y (N, out)."""
    xd = x if mask is None else x * mask
    return x @ W.T + s * (xd @ A.T) @ B.T


def backward(dy, x, W, A, B, s, mask=None):
    """dL/dx, dL/dA, dL/dB from dy = dL/dy (N, out); W is frozen (no gradient)."""
    xd = x if mask is None else x * mask
    u = xd @ A.T                     # (N, r)
    dB = s * dy.T @ u                # (out, r)
    du = s * dy @ B                  # (N, r)
    dA = du.T @ xd                   # (r, in)
    dxd = du @ A                     # (N, in)
    dx = dy @ W + (dxd if mask is None else dxd * mask)
    return dx, dA, dB


def merged(W, A, B, s):
    """The merged weight W + s B A (what PEFT's merge_and_unload writes)."""
    return W + s * B @ A
