"""The local Hugging Face cache (as huggingface_hub lays it out), read without huggingface_hub.

Nothing here downloads: a model or tokenizer named by its hub name must already be in the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

HF_CONFIG, HF_WEIGHTS = "config.json", "model.safetensors"


def hf_cache_dir() -> Path:
    """Where huggingface_hub keeps downloaded repos (same environment variables, same order)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def find_hf_cached(name: str) -> Path | None:
    """The snapshot directory of a model in the local HF cache holding both config.json and
    model.safetensors, or None. 'gpt2' also finds 'openai-community/gpt2' (the repo's newer name)."""
    names = [name] if "/" in name else [name, f"openai-community/{name}", f"distilbert/{name}"]
    for repo in names:
        repo_dir = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
        snapshots = repo_dir / "snapshots"
        if not snapshots.is_dir():
            continue
        complete = [d for d in snapshots.iterdir() if (d / HF_CONFIG).is_file() and (d / HF_WEIGHTS).is_file()]
        # Prefer the revision refs/main points at; otherwise the most recently downloaded one.
        ref = repo_dir / "refs" / "main"
        main = snapshots / ref.read_text().strip() if ref.is_file() else None
        if main in complete:
            return main
        if complete:
            return max(complete, key=lambda d: d.stat().st_mtime)
    return None
