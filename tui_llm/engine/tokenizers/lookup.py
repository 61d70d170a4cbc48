"""Which tokenizer a model speaks, and which one made a token file.

A model's tokenizer is GPT-2's (tiktoken, built offline) unless its run names a Hugging Face
tokenizer directory (`RunConfig.tokenizer`, a dir holding tokenizer.json): a Llama loaded from an
HF dir takes that dir's, a fresh `--arch llama` model needs `--tokenizer DIR`.

`tui-llm prepare --tokenizer DIR` writes a sidecar `<name>.tokenizer.json` next to
`<name>_train.bin` / `<name>_val.bin` (and shards) holding the tokenizer's identity:

    {"tokenizer": "SmolLM2-135M", "fingerprint": "<sha256 of tokenizer.json>", "vocab_size": 49152, "path": "/abs/dir"}

Token files without a sidecar were made by GPT-2's tokenizer (everything before this existed).
Training refuses data whose tokenizer is not the model's (DataError, one line).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tui_llm.engine.data.tokens import DataError
from tui_llm.engine.tokenizers.gpt2 import TokenizerError, get_tokenizer

GPT2_IDENTITY = {"tokenizer": "gpt2", "fingerprint": "gpt2"}
SIDECAR_SUFFIX = ".tokenizer.json"
_SPLIT = re.compile(r"^(?P<name>.+?)_(train|val)(_[0-9*?\[\]-]+)?\.bin$")


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
    from tui_llm.engine.formats.hf_gpt2 import hf_cache_dir
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


def sidecar_path(token_file) -> Path:
    """<dir>/<name>.tokenizer.json for <name>_train.bin, <name>_val.bin, <name>_train_000001.bin or a glob of them."""
    p = Path(token_file)
    m = _SPLIT.match(p.name)
    return p.with_name((m.group("name") if m else p.name.removesuffix(".bin")) + SIDECAR_SUFFIX)


def sidecar_bytes(tokenizer) -> bytes:
    return (json.dumps(identity(tokenizer), indent=2) + "\n").encode()


def data_identity(token_file) -> dict:
    """The identity recorded beside a token file (GPT-2's when there is no sidecar)."""
    path = sidecar_path(token_file)
    if not path.is_file():
        return dict(GPT2_IDENTITY)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict) or not isinstance(d.get("fingerprint"), str):
            raise ValueError("no fingerprint")
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a tokenizer sidecar ({e})") from None
    return d


def check_data_tokenizer(token_file, tokenizer) -> None:
    """DataError unless the token file was made by this tokenizer."""
    data, model = data_identity(token_file), identity(tokenizer)
    if data["fingerprint"] != model["fingerprint"]:
        made = data.get("tokenizer", "?")
        raise DataError(f"{token_file}: made by the {made} tokenizer, but the model uses {model['tokenizer']}'s "
                        f"(fingerprints {data['fingerprint'][:12]} vs {model['fingerprint'][:12]}); prepare the text "
                        f"again with `tui-llm prepare ... --tokenizer {model.get('path', 'gpt2')}`"
                        if model["fingerprint"] != "gpt2" else
                        f"{token_file}: made by the {made} tokenizer, but the model uses GPT-2's; train it with a "
                        f"model that uses {made}'s tokenizer (--tokenizer {data.get('path', made)})")
