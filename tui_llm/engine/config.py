"""Model configuration and the parameter layout shared by every part of the engine.

The 16 parameter tensors live in one contiguous float32 buffer, in llm.c's order and
shapes (see llm.c's train_gpt2.c `fill_in_parameter_sizes`). Gradients and the AdamW
moments use exactly the same layout, so one flat loop updates everything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

GPT2_VOCAB_SIZE = 50257
EOT_TOKEN = 50256

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
        if self.padded_vocab_size == 0:
            object.__setattr__(self, "padded_vocab_size", pad_vocab(self.vocab_size))
        for name in ("max_seq_len", "vocab_size", "num_layers", "num_heads", "channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.channels % self.num_heads:
            raise ValueError(f"channels ({self.channels}) must be divisible by heads ({self.num_heads})")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded vocab {self.padded_vocab_size} < vocab {self.vocab_size}")

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


def num_parameters(cfg: GPTConfig) -> int:
    return sum(int(np.prod(shape)) for _, shape in param_shapes(cfg))


class ParamTensors:
    """Named views (p.wte, p.qkvw, ...) into one flat float32 buffer in llm.c's layout."""

    def __init__(self, cfg: GPTConfig, flat: np.ndarray | None = None):
        n = num_parameters(cfg)
        if flat is None:
            flat = np.zeros(n, dtype=np.float32)
        if flat.dtype != np.float32 or flat.ndim != 1 or flat.size != n or not flat.flags.c_contiguous:
            raise ValueError(f"flat parameter buffer must be contiguous float32 of size {n}")
        self.config = cfg
        self.flat = flat
        self.views: dict[str, np.ndarray] = {}
        self.offsets: dict[str, tuple[int, int]] = {}
        offset = 0
        for name, shape in param_shapes(cfg):
            size = int(np.prod(shape))
            self.views[name] = flat[offset:offset + size].reshape(shape)
            self.offsets[name] = (offset, offset + size)
            offset += size

    def __getattr__(self, name: str) -> np.ndarray:
        views = self.__dict__.get("views")
        if views is not None and name in views:
            return views[name]
        raise AttributeError(name)

    def items(self):
        return self.views.items()
