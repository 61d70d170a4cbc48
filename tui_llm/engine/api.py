"""Models from anywhere, and text from them: the two calls a notebook needs besides Trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tui_llm.engine.formats import load_model_weights
from tui_llm.engine.model import GPT
from tui_llm.engine.run_dir import is_run_dir, resolve_checkpoint
from tui_llm.engine.sampler import SampleResult, Sampler
from tui_llm.engine.tokenizer import get_tokenizer


def load_model(source) -> GPT:
    """A model from a run directory (its newest checkpoint), one of our checkpoints, an llm.c
    .bin, a Hugging Face directory or a name in the local Hugging Face cache."""
    path = Path(source)
    if path.is_dir() and is_run_dir(path):
        path = resolve_checkpoint(path)
    config, flat, name = load_model_weights(str(path) if path.exists() else str(source))
    model = GPT(config, flat)
    model.name = name
    return model


def generate(model: GPT, prompt: str = "", sample_len: int = 64, temperature: float = 1.0, top_k: int = 0,
             seed: int | None = 42) -> SampleResult:
    """Sample `sample_len` tokens after `prompt` (KV cache; the model's weights are not changed)."""
    sampler = Sampler(model, get_tokenizer())
    return sampler.generate(prompt, sample_len, temperature=temperature, top_k=top_k,
                            rng=np.random.default_rng(seed))
