"""Which tokenizer a model speaks: GPT-2's, or a Hugging Face tokenizer.json.

A model's tokenizer is GPT-2's (tiktoken, built offline) unless its run names a Hugging Face
tokenizer directory (`RunConfig.tokenizer`, a dir holding tokenizer.json): a Llama loaded from an
HF dir takes that dir's, a fresh `--arch llama` model needs `--tokenizer DIR`.

Which tokenizer made a token file is recorded beside it (data/sidecar.py).
"""

from __future__ import annotations

from pathlib import Path

from tui_llm.engine.tokenizers.gpt2 import TokenizerError, get_tokenizer

GPT2_IDENTITY = {"tokenizer": "gpt2", "fingerprint": "gpt2"}


def find_tokenizer_dir(spec) -> Path:
    """A directory holding tokenizer.json: a path (the dir or the file) or a name in the local
    Hugging Face cache. TokenizerError (one line) otherwise."""
    p = Path(spec).expanduser()
    if p.is_file() and p.name == "tokenizer.json":
        return p.parent.absolute()
    if p.is_dir():
        if not (p / "tokenizer.json").is_file():
            raise TokenizerError(f"{spec}: no tokenizer.json in this directory")
        return p.absolute()
    from tui_llm.engine.hf_cache import hf_cache_dir
    repo = hf_cache_dir() / ("models--" + str(spec).replace("/", "--")) / "snapshots"
    found = sorted((d for d in repo.glob("*") if (d / "tokenizer.json").is_file()), key=lambda d: d.stat().st_mtime) \
        if repo.is_dir() else []
    if not found:
        raise TokenizerError(f"{spec}: no such directory, and no tokenizer.json for it in the local Hugging Face "
                             f"cache ({hf_cache_dir()})")
    return found[-1]


def load_tokenizer(directory=None):
    """The HFTokenizer of a directory (or cached name); None: GPT-2's tiktoken encoding."""
    if directory is None:
        return get_tokenizer()
    from tui_llm.engine.tokenizers.hf import HFTokenizer
    return HFTokenizer.from_dir(find_tokenizer_dir(directory))


def identity(tokenizer) -> dict:
    """{"tokenizer": name, "fingerprint": ...} of an HFTokenizer, or GPT-2's."""
    if not hasattr(tokenizer, "fingerprint"):
        return dict(GPT2_IDENTITY)
    directory = tokenizer.path.parent.absolute()
    return {"tokenizer": tokenizer_name(directory), "fingerprint": tokenizer.fingerprint(),
            "vocab_size": tokenizer.vocab_size, "path": str(directory)}


def tokenizer_name(directory: Path) -> str:
    """A tokenizer's name for messages: "org/name" for a Hugging Face cache snapshot, else the dir's name."""
    parts = directory.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return directory.name
