"""Where an export may go. `tui-llm export SOURCE DEST` must never destroy something by accident:
the model it reads, a run directory, a device or pipe, or an existing file nobody asked to replace."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tui_llm.engine.formats.common import CheckpointError
from tui_llm.engine.formats.hf_gpt2 import HF_CONFIG, HF_WEIGHTS
from tui_llm.engine.formats.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS

EXPORT_KINDS = ("llmc", "hf", "peft")  # a single file / a directory of files / an adapter directory


def is_run_directory(directory: Path) -> bool:
    """A tui-llm run directory (run_dir.py knows its files; imported here, not at the top: run_dir
    itself writes through formats.atomic)."""
    from tui_llm.engine.run.run_dir import is_run_dir

    return is_run_dir(directory)


def check_export_destination(source, dest, kind: str, force: bool = False) -> Path:
    """Raise CheckpointError (one line) unless `dest` is a safe place for an export of `source`.

    kind "llmc" writes one file, "hf" a directory (config.json + model.safetensors), "peft" a
    directory (adapter_config.json + adapter_model.safetensors). Refused:
    a destination that is neither a regular file nor a directory (device node, FIFO, socket), one
    of the wrong kind, the export's own source (or a directory holding it), an existing run
    directory, an existing model file or HF export unless force=True, and a place whose nearest
    existing parent is not a writable directory. Returns dest as a Path.
    """
    if kind not in EXPORT_KINDS:
        raise ValueError(f"export kind must be one of {EXPORT_KINDS}, got {kind!r}")
    dest = Path(dest)
    try:
        st = os.stat(dest)  # follows symlinks: a link to /dev/null is a device
    except (FileNotFoundError, NotADirectoryError):  # a missing parent is checked below
        st = None
    except OSError as e:
        raise CheckpointError(dest, f"cannot use as export destination: {e.strerror or e}") from None

    if st is not None:
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise CheckpointError(dest, "is not a regular file or directory (a device, pipe or socket); "
                                        "refusing to export there")
        if os.path.exists(source):
            src = Path(source).resolve()
            real = dest.resolve()
            if real == src or real in src.parents:
                raise CheckpointError(dest, f"is the export's own source ({source}); choose another destination")
        if stat.S_ISDIR(st.st_mode):
            if kind == "llmc":
                raise CheckpointError(dest, "is a directory; an llm.c export is one file (give a file name)")
            if is_run_directory(dest):
                raise CheckpointError(dest, "is a tui-llm run directory; refusing to export into it")
            if not force and ((dest / HF_CONFIG).exists() or (dest / HF_WEIGHTS).exists()):
                raise CheckpointError(dest, "already holds a model; pass --force to replace it")
            if not force and ((dest / ADAPTER_CONFIG).exists() or (dest / ADAPTER_WEIGHTS).exists()):
                raise CheckpointError(dest, "already holds an adapter; pass --force to replace it")
        else:
            if kind in ("hf", "peft"):
                raise CheckpointError(dest, f"is a file; a{' Hugging Face' if kind == 'hf' else ' PEFT adapter'} "
                                            "export is a directory")
            if not force:
                raise CheckpointError(dest, "already exists; pass --force to replace it")

    parent = dest.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # the nearest existing ancestor: the export creates the rest
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(dest, f"cannot create it: {parent} is not a writable directory")
    return dest
