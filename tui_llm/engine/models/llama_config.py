"""Llama-family configuration, parameter layout and RoPE frequencies (the model is in llama.py).

The parameters live in one contiguous float32 buffer, like GPT-2's (config.py); gradients and
AdamW moments share the layout. Per layer, q/k/v are one fused matrix and SwiGLU's gate/up
another, so each is a single BLAS product:

    wte       (Vp, C)               token embedding (padded rows zero)
    ln1w      (L, C)                RMSNorm before attention   (HF input_layernorm)
    qkvw      (L, (H + 2KV) hd, C)  [q_proj | k_proj | v_proj] rows
    qkvb      (L, (H + 2KV) hd)     only with qkv_bias (Qwen2)
    qnormw    (L, hd)               only with qk_norm (Qwen3): RMSNorm of each query head, before RoPE
    knormw    (L, hd)               only with qk_norm: the same for each key head
    attprojw  (L, C, H hd)          o_proj
    ln2w      (L, C)                RMSNorm before the MLP     (HF post_attention_layernorm)
    fcw       (L, 2F, C)            [gate_proj | up_proj] rows
    fcprojw   (L, C, F)             down_proj
    lnfw      (C,)                  final RMSNorm              (HF model.norm)
    lm_head   (Vp, C)               only when not tied to wte
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.machine import check_fits_memory
from tui_llm.engine.models.gpt2_config import ParamTensors, pad_vocab

ROPE_TYPES = ("linear", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
MATRIX_PARAMS = ("wte", "qkvw", "attprojw", "fcw", "fcprojw", "lm_head")  # weight-decayed


class LlamaConfigError(TuiLlmError, ValueError):
    """A Llama configuration that cannot be built. str() is one line."""


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 32000          # V: real tokens
    max_seq_len: int = 2048          # longest sequence (RoPE table rows, cache length)
    num_layers: int = 12             # L
    num_heads: int = 12              # H query heads
    num_kv_heads: int = 0            # KV key/value heads; 0 means H (plain multi-head attention)
    channels: int = 768              # C
    ffn_channels: int = 2048         # F: SwiGLU hidden width
    head_dim: int = 0                # hd; 0 means C / H
    padded_vocab_size: int = 0       # Vp; 0 means V rounded up to a multiple of 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False)  # None, {"rope_type": "linear", ...}
    tied_embeddings: bool = True
    qkv_bias: bool = False           # Qwen2
    qk_norm: bool = False            # Qwen3: RMSNorm over each q and k head (own weights) before RoPE
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self):
        def err(msg):
            raise LlamaConfigError(msg)
        def is_int(value):
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        for name in ("vocab_size", "max_seq_len", "num_layers", "num_heads", "channels", "ffn_channels"):
            value = getattr(self, name)
            if not is_int(value) or value <= 0:
                err(f"{name} must be a positive integer, got {value!r}")
        for name in ("num_kv_heads", "head_dim", "padded_vocab_size"):  # 0 = derived
            value = getattr(self, name)
            if not is_int(value) or value < 0:
                err(f"{name} must be a positive integer (or 0 for the default), got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            if not isinstance(getattr(self, name), (int, float)) or isinstance(getattr(self, name), bool):
                err(f"{name} must be a number, got {getattr(self, name)!r}")
        for name in ("bos_token_id", "eos_token_id"):
            if getattr(self, name) is not None and not is_int(getattr(self, name)):
                err(f"{name} must be an integer or None, got {getattr(self, name)!r}")
        if self.num_kv_heads == 0:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim == 0:
            if self.channels % self.num_heads:
                err(f"channels ({self.channels}) must be divisible by heads ({self.num_heads}) unless head_dim is given")
            object.__setattr__(self, "head_dim", self.channels // self.num_heads)
        if self.padded_vocab_size == 0:
            object.__setattr__(self, "padded_vocab_size", pad_vocab(self.vocab_size))
        if self.num_heads % self.num_kv_heads:
            err(f"heads ({self.num_heads}) must be a multiple of key/value heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            err(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.padded_vocab_size < self.vocab_size:
            err(f"padded vocab {self.padded_vocab_size} < vocab {self.vocab_size}")
        if not (self.rms_norm_eps > 0 and math.isfinite(self.rms_norm_eps)):
            err(f"rms_norm_eps must be a positive number, got {self.rms_norm_eps}")
        if not (self.rope_theta > 1 and math.isfinite(self.rope_theta)):
            err(f"rope_theta must be a number > 1, got {self.rope_theta}")
        for name in ("bos_token_id", "eos_token_id"):
            tok = getattr(self, name)
            if tok is not None and not 0 <= tok < self.vocab_size:
                err(f"{name} {tok} is outside the vocabulary of {self.vocab_size}")
        if self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", check_rope_scaling(self.rope_scaling))
        # the least any use allocates: bf16 weights (a frozen LoRA base); a run's whole need is estimated
        # before it starts (training/memory.py)
        check_fits_memory(2 * num_parameters(self), f"a {num_parameters(self):,}-parameter model's weights")

    # shapes used everywhere
    @property
    def q_dim(self) -> int:       # H * hd
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:      # KV * hd
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_dim(self) -> int:     # (H + 2 KV) * hd
        return self.q_dim + 2 * self.kv_dim

    def summary(self) -> str:
        """One line for the run header, like the trainer's GPT-2 line."""
        kv = f" / {self.num_kv_heads} KV" if self.num_kv_heads != self.num_heads else ""
        rope = f", RoPE {self.rope_scaling['rope_type']}" if self.rope_scaling else ""
        return (f"llama | {self.num_layers} layers, {self.num_heads} heads{kv}, {self.channels} channels, "
                f"SwiGLU {self.ffn_channels}, max {self.max_seq_len} positions{rope}, vocab {self.vocab_size} "
                f"(padded {self.padded_vocab_size}), {'tied' if self.tied_embeddings else 'untied'} head"
                f"{', q/k/v bias' if self.qkv_bias else ''}{', q/k norm' if self.qk_norm else ''}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rope_scaling"] = dict(self.rope_scaling) if self.rope_scaling else None
        return {"arch": "llama", **d}

    @classmethod
    def from_dict(cls, d: dict) -> LlamaConfig:
        d = dict(d)
        arch = d.pop("arch", "llama")
        if arch != "llama":
            raise LlamaConfigError(f"model config is for arch {arch!r}, not 'llama'")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise LlamaConfigError(f"unknown Llama config fields: {', '.join(unknown)}")
        return cls(**d)


def check_rope_scaling(scaling: dict) -> dict | None:
    """Normalise {"rope_type" or "type": ..., ...} to {"rope_type": t, <floats>}; refuse what we lack."""
    if not isinstance(scaling, dict):
        raise LlamaConfigError(f"rope_scaling must be a dict or None, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind not in ROPE_TYPES:
        raise LlamaConfigError(f"RoPE scaling type {kind!r} is not supported (only default, linear, llama3)")
    keys = ("factor",) if kind == "linear" else LLAMA3_KEYS
    out = {"rope_type": kind}
    for key in keys:
        try:
            out[key] = float(scaling[key]) if key != "original_max_position_embeddings" else int(scaling[key])
        except (KeyError, TypeError, ValueError):
            raise LlamaConfigError(f"{kind} RoPE scaling needs a number for {key!r}") from None
        if not out[key] > 0:
            raise LlamaConfigError(f"{kind} RoPE scaling: {key} must be positive, got {out[key]}")
    if kind == "llama3" and out["high_freq_factor"] <= out["low_freq_factor"]:
        raise LlamaConfigError("llama3 RoPE scaling needs high_freq_factor > low_freq_factor")
    return out


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """inv_freq[j] = theta^(-2j/hd), j < hd/2, scaled as transformers' rope types do (float64)."""
    hd = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    if s["rope_type"] == "linear":
        return inv_freq / s["factor"]
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth ramp in between
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / s["low_freq_factor"], old_len / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    smoothed = (1 - smooth) * inv_freq / s["factor"] + smooth * inv_freq
    return np.where(wavelen > low_wavelen, inv_freq / s["factor"],
                    np.where(wavelen < high_wavelen, inv_freq, smoothed))


def rope_tables(cfg: LlamaConfig, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (length, hd/2) float32 of pos * inv_freq for pos < length."""
    angle = np.arange(length, dtype=np.float64)[:, None] * rope_inv_freq(cfg)[None, :]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def param_shapes(cfg: LlamaConfig) -> list[tuple[str, tuple[int, ...]]]:
    Vp, C, L, F = cfg.padded_vocab_size, cfg.channels, cfg.num_layers, cfg.ffn_channels
    shapes = [("wte", (Vp, C)), ("ln1w", (L, C)), ("qkvw", (L, cfg.qkv_dim, C))]
    if cfg.qkv_bias:
        shapes.append(("qkvb", (L, cfg.qkv_dim)))
    if cfg.qk_norm:
        shapes += [("qnormw", (L, cfg.head_dim)), ("knormw", (L, cfg.head_dim))]
    shapes += [("attprojw", (L, C, cfg.q_dim)), ("ln2w", (L, C)),
               ("fcw", (L, 2 * F, C)), ("fcprojw", (L, C, F)), ("lnfw", (C,))]
    if not cfg.tied_embeddings:
        shapes.append(("lm_head", (Vp, C)))
    return shapes


def num_parameters(cfg: LlamaConfig) -> int:
    return sum(math.prod(shape) for _, shape in param_shapes(cfg))


class LlamaParams(ParamTensors):
    """Named views (p.wte, p.qkvw, ...) into one flat float32 buffer in the layout above."""

    def __init__(self, cfg: LlamaConfig, flat: np.ndarray | None = None, dtype=np.float32):
        super().__init__(cfg, flat, shapes=param_shapes(cfg), dtype=dtype)
