"""One entry point for "give me a model, whatever this is": llm.c file, HF directory/file/name,
GGUF file or our training checkpoint, told apart by their magic bytes or directory contents.

A new format (e.g. hf_llama.py) adds its kind to detect_checkpoint_kind (for HF directories:
by config.json's model_type) and its reader to load_model_weights; nothing else changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tui_llm.engine.formats.checkpoint import TRAINING_FORMAT, load_training_params
from tui_llm.engine.formats.common import CheckpointError, file_size, millions
from tui_llm.engine.formats.hf_gpt2 import HF_CONFIG, HF_WEIGHTS, read_hf
from tui_llm.engine.formats.hf_llama import hf_model_type, read_hf_llama
from tui_llm.engine.formats.llmc import LLMC_MAGIC, LLMC_VERSIONS, OTHER_LLMC_MAGICS, read_llmc, read_llmc_header
from tui_llm.engine.formats.safetensors import MAX_HEADER_BYTES, read_header
from tui_llm.engine.hf_cache import find_hf_cached
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.llama_config import LlamaConfig


def detect_checkpoint_kind(path) -> str:
    """'llmc', 'hf', 'hf_llama', 'gguf' or 'training', from the magic bytes of a file or the contents of a directory."""
    p = Path(path)
    if p.is_dir() and hf_model_type(p) not in (None, "gpt2"):
        return "hf_llama"  # model.safetensors or shards; read_hf_llama names what is missing or unsupported
    if p.is_dir():
        if (p / HF_CONFIG).is_file() and (p / HF_WEIGHTS).is_file():
            return "hf"
        raise CheckpointError(path, f"directory without {HF_CONFIG} + {HF_WEIGHTS}: not a Hugging Face model")
    size = file_size(path)
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(path, f"only {size} bytes: not a model file")
        magic = int.from_bytes(head[:4], "little")
        if head[:4] == b"GGUF":  # llama.cpp's format (gguf.py)
            return "gguf"
        if magic == LLMC_MAGIC:
            return "llmc"
        if magic in OTHER_LLMC_MAGICS:
            raise CheckpointError(path, f"this is {OTHER_LLMC_MAGICS[magic]}, not a model file")
        # safetensors: a u64 header length that fits in the file, then a JSON object.
        n = int.from_bytes(head, "little")
        if 0 < n <= min(size - 8, MAX_HEADER_BYTES) and f.read(1) == b"{":
            f.seek(0)
            _, metadata, _ = read_header(f, path)
            return "training" if metadata.get("format") == TRAINING_FORMAT else "hf"
    raise CheckpointError(path, "unrecognised file: neither an llm.c model file, GGUF nor safetensors")


def load_model_weights(path_or_name) -> tuple[GPTConfig | LlamaConfig, np.ndarray, str]:
    """Load weights from an llm.c file, a HF directory/file/cached name (GPT-2 or Llama family),
    or a training checkpoint.

    Returns (config, flat, description), the description being one line for the UI and logs;
    config is a GPTConfig or a LlamaConfig.
    """
    cfg: GPTConfig | LlamaConfig
    if not os.path.exists(path_or_name):  # not a path: a model name in the HF cache (or an error saying so)
        cached = find_hf_cached(str(path_or_name))
        if cached is not None and hf_model_type(cached) not in (None, "gpt2"):
            cfg, flat = read_hf_llama(cached)
            return cfg, flat, f"Hugging Face {hf_model_type(cached)} {path_or_name} from the local cache " \
                              f"({flat.size / 1e6:.1f}M params)"
        cfg, flat = read_hf(path_or_name)
        return cfg, flat, f"Hugging Face GPT-2 {path_or_name} from the local cache ({millions(cfg)} params)"
    kind = detect_checkpoint_kind(path_or_name)
    if kind == "gguf":
        from .gguf import read_gguf  # imports the gguf package only when a GGUF file is loaded
        cfg, flat, vocab, md = read_gguf(path_or_name)
        return cfg, flat, f"GGUF {md['general.architecture']} {path_or_name} ({flat.size / 1e6:.1f}M params)"
    if kind == "hf_llama":
        cfg, flat = read_hf_llama(path_or_name)
        return cfg, flat, f"Hugging Face {hf_model_type(path_or_name)} {path_or_name} ({flat.size / 1e6:.1f}M params)"
    if kind == "llmc":
        version, _ = read_llmc_header(path_or_name)
        cfg, flat = read_llmc(path_or_name)
        return cfg, flat, f"llm.c model file {path_or_name} (v{version}, {LLMC_VERSIONS[version]}, {millions(cfg)} params)"
    if kind == "hf":
        if hf_model_type(path_or_name) not in (None, "gpt2"):  # a file inside a Llama dir
            return load_model_weights(str(Path(path_or_name).parent))
        cfg, flat = read_hf(path_or_name)
        return cfg, flat, f"Hugging Face GPT-2 {path_or_name} ({millions(cfg)} params)"
    return load_training_params(path_or_name)
