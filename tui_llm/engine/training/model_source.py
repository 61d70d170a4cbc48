"""Models for a run: fresh ones of either architecture, or weights from anywhere with the
tokenizer that goes with them.

    model, name = fresh_model(run_config)                             # --arch, --model, sizes, --tokenizer

    config, flat, name, tokenizer_dir = load_model_source("runs/x")   # or a checkpoint, an llm.c .bin,
                                                                      # an HF dir or a cached name
    recorded_chat_template("runs/x")                                  # the run's --chat-template, if any
The tokenizer directory is where the model's tokenizer.json lives: a Llama-family HF dir's own,
or the one a run recorded (`run_config.tokenizer` in its checkpoints); None means GPT-2's.
"""

from __future__ import annotations

import math
from pathlib import Path

from tui_llm.engine.formats import detect_checkpoint_kind, load_model_weights, load_training_checkpoint
from tui_llm.engine.formats.hf_llama import hf_model_type
from tui_llm.engine.hf_cache import find_hf_cached
from tui_llm.engine.machine import NotEnoughMemory
from tui_llm.engine.models.base import Model
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig, preset_config
from tui_llm.engine.models.llama import Llama, LlamaConfig, LlamaConfigError
from tui_llm.engine.models.torch_init import llmc_random_init
from tui_llm.engine.run.run_dir import is_run_dir, resolve_checkpoint
from tui_llm.engine.tokenizers.lookup import load_tokenizer
from tui_llm.engine.training.run_config import ConfigError, RunConfig


def load_model_source(source) -> tuple:
    """(config, flat, name, tokenizer_dir or None) of a run directory (its newest checkpoint), a
    checkpoint, an llm.c .bin, a Hugging Face directory or a cached name."""
    path = Path(str(source)).expanduser()
    hf_dir = path.is_dir() and (hf_model_type(path) is not None or (path / "model.safetensors").is_file()
                                or (path / "model.safetensors.index.json").is_file())
    if path.is_dir() and is_run_dir(path) and not hf_dir:  # an HF dir has a config.json too
        path = resolve_checkpoint(path)
    target = str(path) if path.exists() else str(source)
    config, flat, name = load_model_weights(target)
    return config, flat, name, recorded_tokenizer(target)


def recorded_tokenizer(target: str) -> str | None:
    """The tokenizer directory that belongs to these weights (None: GPT-2's)."""
    path = Path(target)
    if not path.exists():
        path = find_hf_cached(target) or path
    if path.is_dir() or (path.is_file() and path.suffix == ".safetensors" and (path.parent / "config.json").is_file()
                         and detect_checkpoint_kind(path) != "training"):
        directory = path if path.is_dir() else path.parent
        llama = hf_model_type(directory) not in (None, "gpt2")
        return str(directory.absolute()) if llama and (directory / "tokenizer.json").is_file() else None
    if path.is_file() and detect_checkpoint_kind(path) == "training":
        _, meta = load_training_checkpoint(path, names=[])
        run_config = meta.get("run_config")
        tokenizer = run_config.get("tokenizer") if isinstance(run_config, dict) else None
        return tokenizer if isinstance(tokenizer, str) else None
    return None


def recorded_chat_template(source) -> str | None:
    """The chat template a run was given (`run_config.chat_template` of a run directory's newest
    checkpoint, or of a checkpoint); None for anything else, or a run without one."""
    path = Path(str(source)).expanduser()
    if path.is_dir() and is_run_dir(path) and hf_model_type(path) is None:
        path = resolve_checkpoint(path)
    if not (path.is_file() and detect_checkpoint_kind(path) == "training"):
        return None
    _, meta = load_training_checkpoint(path, names=[])
    run_config = meta.get("run_config")
    template = run_config.get("chat_template") if isinstance(run_config, dict) else None
    return template if isinstance(template, str) else None


def fresh_model(c: RunConfig) -> tuple[Model, str]:
    """A new model of the preset's sizes (or the given ones), and its name."""
    tokenizer = load_tokenizer(c.tokenizer) if c.tokenizer else None
    try:
        base = preset_config(c.model, max_seq_len=c.max_seq_len)
    except ValueError as e:
        raise ConfigError("model", str(e)) from None
    L, H, C = c.layers or base.num_layers, c.heads or base.num_heads, c.channels or base.channels
    vocab_size = tokenizer.vocab_size if tokenizer else base.vocab_size
    custom = any(v is not None for v in (c.layers, c.heads, c.channels, c.kv_heads, c.ffn_channels))
    name = "custom" if custom else c.model
    if c.arch == "llama":
        if tokenizer is None:
            raise ConfigError("tokenizer", "is needed for a fresh Llama model (the directory holding its "
                                           "tokenizer.json, e.g. a Llama-family model's)")
        try:
            llama_cfg = LlamaConfig(num_layers=L, num_heads=H, channels=C, max_seq_len=c.max_seq_len,
                                    vocab_size=vocab_size, num_kv_heads=c.kv_heads or 0,
                                    ffn_channels=c.ffn_channels or 64 * math.ceil(8 * C / 3 / 64),
                                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        except (LlamaConfigError, NotEnoughMemory) as e:
            raise ConfigError(None, f"a Llama of these sizes cannot be built: {e}") from None
        return Llama.random_init(llama_cfg, seed=c.seed), f"llama-{name}"
    try:
        cfg = GPTConfig(num_layers=L, num_heads=H, channels=C, max_seq_len=c.max_seq_len, vocab_size=vocab_size)
    except ValueError as e:
        raise ConfigError("model", str(e)) from None
    if c.init_style == "llmc":  # bit-identical to llm.c's train_gpt2.py --model dN init
        return GPT(cfg, llmc_random_init(cfg, seed=c.seed)), name
    return GPT.random_init(cfg, seed=c.seed), name
