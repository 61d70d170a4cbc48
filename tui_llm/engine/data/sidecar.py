"""Which tokenizer made a token file: the sidecar `<name>.tokenizer.json` beside it.

`tui-llm prepare --tokenizer DIR` writes it next to `<name>_train.bin` / `<name>_val.bin` (and
shards), holding the tokenizer's identity:

    {"tokenizer": "SmolLM2-135M", "fingerprint": "<sha256 of tokenizer.json>", "vocab_size": 49152, "path": "/abs/dir"}

Token files without a sidecar were made by GPT-2's tokenizer (everything before this existed).
Training refuses data whose tokenizer is not the model's (DataError, one line).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tui_llm.engine.data.tokens import DataError
from tui_llm.engine.tokenizers.lookup import GPT2_IDENTITY, identity

SIDECAR_SUFFIX = ".tokenizer.json"
_SPLIT = re.compile(r"^(?P<name>.+?)_(train|val)(_[0-9*?\[\]-]+)?\.bin$")


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
