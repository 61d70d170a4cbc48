"""A GGUF file's tokenizer as a directory the rest of tui-llm reads, kept where a run finds it again.

Everything that tokenizes (training, `prepare --tokenizer`, the sampler, `export`) takes a
directory holding tokenizer.json + tokenizer_config.json, and a run records that directory's
absolute path (`run_config.tokenizer`) so that its resume, `sample --init-from RUN` and `export`
use the same one. A GGUF file carries its tokenizer as metadata instead (gguf_vocab.py rebuilds
it), so the rebuilt files are written once into the user's cache, in a directory named by their
content:

    $XDG_CACHE_HOME/tui-llm/tokenizers/gguf-<first 16 hex of sha256(tokenizer.json, tokenizer_config.json)>/

    (~/.cache when XDG_CACHE_HOME is unset.) The same GGUF gives the same bytes and so the same
    path, every time and in every process (the MPI ranks of a run make it together: the first
    complete one stays, atomic_files(replace=False)). A directory whose files were changed is
    written again. If the cache is cleared, the next load of the GGUF makes it again (and
    training/model_source.py does so for a run whose recorded directory is gone).

GPT-2's own vocabulary (an export of GPT-2) maps to None, the built-in tiktoken tokenizer, as
everywhere else. Layers: tokenizers/ may not import formats/, so the "a path that may be a GGUF"
lookups live here: resolve_tokenizer_dir(spec) and load_any_tokenizer(spec).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from tui_llm.engine.formats.atomic import atomic_files, atomic_write
from tui_llm.engine.formats.common import CheckpointError
from tui_llm.engine.tokenizers.gpt2 import TokenizerError
from tui_llm.engine.tokenizers.lookup import find_tokenizer_dir, load_tokenizer

GGUF_MAGIC = b"GGUF"
CACHE_PREFIX = "gguf-"
_CACHE_NAME = re.compile(r"^gguf-[0-9a-f]{16}$")


def is_cache_dir_path(path) -> bool:
    """An absolute path named like one of our cache directories (whether it exists or not)."""
    p = Path(str(path))
    return p.is_absolute() and _CACHE_NAME.match(p.name) is not None


def tokenizer_cache_dir() -> Path:
    """Where rebuilt tokenizers live: $XDG_CACHE_HOME/tui-llm/tokenizers (default ~/.cache/...)."""
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "tui-llm" / "tokenizers"


def is_gguf(path) -> bool:
    """A file that starts with GGUF's magic (damage beyond that is read_gguf's to report)."""
    p = Path(str(path)).expanduser()
    try:
        if not p.is_file():  # never open a FIFO or device to look
            return False
        with open(p, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def gguf_tokenizer_dir(vocab) -> Path | None:
    """The cache directory holding this GGUFVocab's tokenizer files (written if missing or
    changed); None for GPT-2's own vocabulary."""
    if vocab.is_gpt2:
        return None
    files = vocab.tokenizer_files()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    directory = tokenizer_cache_dir() / f"{CACHE_PREFIX}{digest.hexdigest()[:16]}"
    if _holds(directory, files):
        return directory
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with atomic_files(directory, replace=directory.exists()) as tmp:  # changed files: written again
            for name, data in files.items():
                with atomic_write(tmp / name) as f:
                    f.write(data)
    except OSError as e:
        raise CheckpointError(directory, f"cannot write the GGUF's tokenizer there: {e.strerror or e} "
                                         f"(set XDG_CACHE_HOME to a writable directory)") from None
    return directory


def _holds(directory: Path, files: dict[str, bytes]) -> bool:
    try:
        return all((directory / name).read_bytes() == data for name, data in files.items())
    except OSError:
        return False


def resolve_tokenizer_dir(spec) -> Path | None:
    """The tokenizer directory `spec` names: a GGUF file's (rebuilt into the cache; None for
    GPT-2's vocabulary), or find_tokenizer_dir's (a directory, a tokenizer.json, a cached name).
    None stays None (GPT-2's)."""
    if spec is None:
        return None
    if is_gguf(spec):
        from tui_llm.engine.formats.gguf import read_gguf_vocab  # imports gguf only for a GGUF file

        return gguf_tokenizer_dir(read_gguf_vocab(Path(str(spec)).expanduser()))
    path = Path(str(spec)).expanduser()
    if path.exists() and not path.is_dir() and path.name != "tokenizer.json":
        raise TokenizerError(f"{spec}: neither a tokenizer directory, a tokenizer.json nor a GGUF model file")
    return find_tokenizer_dir(spec)


def load_any_tokenizer(spec):
    """load_tokenizer, where `spec` may also be a GGUF file: an HFTokenizer, or GPT-2's encoding."""
    return load_tokenizer(resolve_tokenizer_dir(spec))
