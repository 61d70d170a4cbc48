"""Model configuration and the parameter layout shared by every part of the engine.

The 16 parameter tensors live in one contiguous float32 buffer, in llm.c's order and
shapes (see llm.c's train_gpt2.c `fill_in_parameter_sizes`). Gradients and the AdamW
moments use exactly the same layout, so one flat loop updates everything.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from tui_llm.engine.machine import check_fits_memory

GPT2_VOCAB_SIZE = 50257
EOT_TOKEN = 50256
MAX_VOCAB = 2**31 - 1  # token ids are int32
MAX_DIM = 2**31 - 1    # any size field (llm.c stores them as int32)

# llm.c's file order. Linear weights are (out_features, in_features): y = x @ W.T + b.
PARAM_NAMES = (
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb",
)
# The 2-D (matrix) tensors: the only ones weight decay touches (as llm.c's GPU trainer and PyTorch).
MATRIX_PARAMS = ("wte", "wpe", "qkvw", "attprojw", "fcw", "fcprojw")


def pad_vocab(vocab_size: int, multiple: int = 128) -> int:
    """Round the vocabulary up to a multiple of 128, as llm.c does (50257 -> 50304)."""
    return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass(frozen=True)
class GPTConfig:
    max_seq_len: int = 1024   # maxT: rows of wpe
    vocab_size: int = GPT2_VOCAB_SIZE  # V: real tokens
    num_layers: int = 12      # L
    num_heads: int = 12       # NH
    channels: int = 768       # C
    padded_vocab_size: int = 0  # Vp: rows of wte; 0 means pad_vocab(V)

    def __post_init__(self):
        """Refuse anything a model cannot be built from, before any buffer is allocated (ValueError)."""
        for name in ("max_seq_len", "vocab_size", "num_layers", "num_heads", "channels", "padded_vocab_size"):
            value = getattr(self, name)
            # JSON and file headers give ints; numpy ints are fine too. bool, float and str are not.
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer, got {str(value)[:40]!r}")
            if not -MAX_DIM <= value <= MAX_DIM:  # llm.c headers are int32; also keeps the arithmetic below sane
                raise ValueError(f"{name} must be at most {MAX_DIM:,}")
            object.__setattr__(self, name, int(value))
        if self.padded_vocab_size == 0:
            object.__setattr__(self, "padded_vocab_size", pad_vocab(self.vocab_size))
        for name in ("max_seq_len", "vocab_size", "num_layers", "num_heads", "channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size > MAX_VOCAB:
            raise ValueError(f"vocab_size {self.vocab_size} does not fit int32 token ids")
        if self.channels % self.num_heads:
            raise ValueError(f"channels ({self.channels}) must be divisible by heads ({self.num_heads})")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded vocab {self.padded_vocab_size} < vocab {self.vocab_size}")
        # the least any use of this model allocates: its weights as bf16 (a frozen LoRA base); what a
        # run needs in all is estimated before it starts (training/memory.py)
        check_fits_memory(2 * num_parameters(self), f"a {num_parameters(self):,}-parameter model's weights")

    @property
    def head_size(self) -> int:
        return self.channels // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)


# Depth presets as in llm.c (d12 = GPT-2 124M), plus small ones for CPU experiments and tests.
PRESETS = {
    "d2": dict(num_layers=2, num_heads=2, channels=64),
    "d4": dict(num_layers=4, num_heads=4, channels=128),
    "d6": dict(num_layers=6, num_heads=6, channels=384),
    "d12": dict(num_layers=12, num_heads=12, channels=768),
    "d24": dict(num_layers=24, num_heads=16, channels=1024),
    "d36": dict(num_layers=36, num_heads=20, channels=1280),
    "d48": dict(num_layers=48, num_heads=25, channels=1600),
}


def preset_config(name: str, max_seq_len: int = 1024, vocab_size: int = GPT2_VOCAB_SIZE) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (choose from {', '.join(PRESETS)})")
    return GPTConfig(max_seq_len=max_seq_len, vocab_size=vocab_size, **PRESETS[name])


def param_shapes(cfg: GPTConfig) -> list[tuple[str, tuple[int, ...]]]:
    """The 16 tensors in file order with their shapes."""
    Vp, C, L, maxT = cfg.padded_vocab_size, cfg.channels, cfg.num_layers, cfg.max_seq_len
    return [
        ("wte", (Vp, C)), ("wpe", (maxT, C)),
        ("ln1w", (L, C)), ("ln1b", (L, C)),
        ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)),
        ("attprojw", (L, C, C)), ("attprojb", (L, C)),
        ("ln2w", (L, C)), ("ln2b", (L, C)),
        ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)),
        ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)),
        ("lnfw", (C,)), ("lnfb", (C,)),
    ]


def param_ranges(cfg: GPTConfig, shapes=None) -> list[tuple[str, tuple[int, ...], int, int]]:
    """(name, shape, start, end) of each tensor in the flat buffer (of `shapes`, default GPT-2's
    param_shapes(cfg)). Python ints: no overflow, ever."""
    ranges, offset = [], 0
    for name, shape in (param_shapes(cfg) if shapes is None else shapes):
        size = math.prod(shape)
        ranges.append((name, shape, offset, offset + size))
        offset += size
    return ranges


def init_draws(cfg: GPTConfig, p: ParamTensors):
    """GPT-2's init recipe, as (view, std) normal draws in the order train_gpt2.py's
    `GPT._init_weights` makes them (module order): wte (only the V real rows), wpe, then per layer
    c_attn.weight, attn.c_proj.weight, mlp.c_fc.weight, mlp.c_proj.weight. Residual projections
    use 0.02 / sqrt(2 L); lm_head is tied to wte and not drawn. Everything else is set by
    init_params: LayerNorm weights 1, biases and padded wte rows 0."""
    residual_std = 0.02 / math.sqrt(2 * cfg.num_layers)
    yield p.wte[:cfg.vocab_size], 0.02
    yield p.wpe, 0.02
    for layer in range(cfg.num_layers):
        yield p.qkvw[layer], 0.02
        yield p.attprojw[layer], residual_std
        yield p.fcw[layer], 0.02
        yield p.fcprojw[layer], residual_std


def init_params(cfg: GPTConfig, normal) -> np.ndarray:
    """A fresh flat buffer initialised by the recipe above; normal(view, std) fills one contiguous
    view with N(0, std) draws from whichever generator the caller uses."""
    p = ParamTensors(cfg)  # zeros: biases and padded wte rows stay 0
    for view, std in init_draws(cfg, p):
        normal(view, std)
    p.ln1w[:] = 1.0
    p.ln2w[:] = 1.0
    p.lnfw[:] = 1.0
    return p.flat


def num_parameters(cfg: GPTConfig) -> int:
    return param_ranges(cfg)[-1][3]


def training_bytes(cfg: GPTConfig) -> int:
    """float32 params + grads + AdamW m and v: the least memory training this model takes."""
    return 4 * 4 * num_parameters(cfg)


class ParamTensors:
    """Named views (p.wte, p.qkvw, ...) into one flat float32 buffer: llm.c's GPT-2 layout, or
    the (name, shape) list another architecture passes as `shapes`. A frozen base may be bf16
    bits instead (uint16; models/weights.py widens them for the math)."""

    def __init__(self, cfg, flat: np.ndarray | None = None, shapes=None, dtype=np.float32):
        ranges = param_ranges(cfg, shapes)
        n = ranges[-1][3] if ranges else 0
        if flat is None:
            check_fits_memory(n * np.dtype(dtype).itemsize, f"{n:,} parameters")
            flat = np.zeros(n, dtype=dtype)
        if flat.dtype not in (np.float32, np.uint16) or flat.ndim != 1 or flat.size != n or not flat.flags.c_contiguous:
            raise ValueError(f"flat parameter buffer must be contiguous float32 (or bf16 bits) of size {n}")
        self.config = cfg
        self.flat = flat
        self.views: dict[str, np.ndarray] = {}
        self.offsets: dict[str, tuple[int, int]] = {}
        for name, shape, start, end in ranges:
            self.views[name] = flat[start:end].reshape(shape)
            self.offsets[name] = (start, end)

    def __getattr__(self, name: str) -> np.ndarray:
        views = self.__dict__.get("views")
        if views is not None and name in views:
            return views[name]
        raise AttributeError(name)

    def items(self):
        return self.views.items()
