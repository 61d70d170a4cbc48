"""Which architecture a saved model config describes, and the model class that runs it.

GPTConfig.to_dict() has no "arch" key (checkpoints written before Llama support neither);
LlamaConfig.to_dict() says "arch": "llama". Both model classes share one API (base.Model).
"""

from __future__ import annotations

import numpy as np

from tui_llm.engine.models import gpt2_config as gpt_config
from tui_llm.engine.models import llama_config
from tui_llm.engine.models.base import Model
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.llama import Llama, LlamaConfig


def config_from_dict(d: dict) -> GPTConfig | LlamaConfig:
    """The inverse of cfg.to_dict() for either architecture (ValueError, one line, otherwise)."""
    arch = d.get("arch", "gpt2")
    if arch == "llama":
        return LlamaConfig.from_dict(d)
    if arch == "gpt2":
        return GPTConfig(**{k: v for k, v in d.items() if k != "arch"})
    raise ValueError(f"unknown model architecture {arch!r} (gpt2 or llama)")


def build_model(config: GPTConfig | LlamaConfig, params: np.ndarray | None = None) -> Model:
    """A model over the given flat parameters (zeros if None)."""
    return Llama(config, params) if isinstance(config, LlamaConfig) else GPT(config, params)


def num_parameters(config: GPTConfig | LlamaConfig) -> int:
    """Length of the flat parameter buffer of either architecture."""
    if isinstance(config, LlamaConfig):
        return llama_config.num_parameters(config)
    return gpt_config.num_parameters(config)

