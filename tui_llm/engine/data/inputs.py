"""What every `prepare` starts with: the input files, the dataset's name and its output folder."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tui_llm.engine.errors import TuiLlmError


def collect_files(inputs, wanted: Callable[[Path], bool], kinds: str, error: type[TuiLlmError]) -> list[Path]:
    """Files named explicitly, plus the `wanted` files under each folder (sorted, no hidden ones).
    `kinds` names them in the error a folder without any gives (e.g. "text files (*.txt, *.md)")."""
    if not inputs:
        raise error("no input files given")
    files: list[Path] = []
    for entry in map(Path, inputs):
        if entry.is_dir():
            found = sorted(p for p in entry.rglob("*") if p.is_file() and wanted(p)
                           and not any(part.startswith(".") for part in p.relative_to(entry).parts))
            if not found:
                raise error(f"{entry}: folder has no {kinds}")
            files.extend(found)
        elif entry.is_file():
            files.append(entry)
        elif entry.exists():  # /dev/zero, a FIFO: would never end or block
            raise error(f"{entry}: not a regular file (a device, FIFO or socket); give files or folders")
        else:
            raise error(f"{entry}: no such file or directory")
    return files


def dataset_name(name: str | None, default: str, error: type[TuiLlmError]) -> str:
    """The name of the output files (<name>_train.bin): the given one, else `default`; checked."""
    name = name or default
    if not re.fullmatch(r"[\w.-]+", name):
        raise error(f"dataset name {name!r} may only contain letters, digits, '.', '-' and '_'")
    return name


def output_dir(out_dir, error: type[TuiLlmError]) -> Path:
    """The output folder, made if missing."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create output directory {out}: {e.strerror}") from None
    return out
