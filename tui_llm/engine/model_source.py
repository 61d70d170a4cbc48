"""Weights from anywhere, with the tokenizer that goes with them.

    config, flat, name, tokenizer_dir = load_model_source("runs/x")   # or a checkpoint, an llm.c .bin,
                                                                      # an HF dir or a cached name
The tokenizer directory is where the model's tokenizer.json lives: a Llama-family HF dir's own,
or the one a run recorded (`run_config.tokenizer` in its checkpoints); None means GPT-2's.
"""

from __future__ import annotations

from pathlib import Path

from tui_llm.engine.formats import detect_checkpoint_kind, find_hf_cached, load_model_weights, load_training_checkpoint
from tui_llm.engine.formats.hf_llama import hf_model_type
from tui_llm.engine.run_dir import is_run_dir, resolve_checkpoint


def load_model_source(source) -> tuple:
    """(config, flat, name, tokenizer_dir or None) of a run directory (its newest checkpoint), a
    checkpoint, an llm.c .bin, a Hugging Face directory or a cached name."""
    path = Path(str(source)).expanduser()
    if path.is_dir() and is_run_dir(path) and hf_model_type(path) is None:  # an HF dir has a config.json too
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
