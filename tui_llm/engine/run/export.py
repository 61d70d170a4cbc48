"""Where an export may go, and what it says about where it came from.

`tui-llm export SOURCE DEST` must never destroy something by accident: the model it reads, a run
directory, a device or pipe, or an existing file nobody asked to replace (check_export_destination).
A GGUF export names its model and describes the fine-tune (export_provenance)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tui_llm.engine.formats.common import CheckpointError
from tui_llm.engine.formats.hf_gpt2 import HF_CONFIG, HF_WEIGHTS
from tui_llm.engine.formats.peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS

EXPORT_KINDS = ("llmc", "hf", "gguf", "peft")  # one file / a directory / OUT.gguf + OUT.Modelfile / an adapter dir


def is_run_directory(directory: Path) -> bool:
    """A tui-llm run directory (run_dir.py knows its files; imported here, not at the top: run_dir
    itself writes through formats.atomic)."""
    from tui_llm.engine.run.run_dir import is_run_dir

    return is_run_dir(directory)


def check_export_destination(source, dest, kind: str, force: bool = False) -> Path:
    """Raise CheckpointError (one line) unless `dest` is a safe place for an export of `source`.

    kind "llmc" writes one file, "hf" a directory (config.json + model.safetensors), "gguf" one
    file and its Ollama Modelfile beside it (OUT.gguf, OUT.Modelfile: both are checked), "peft" a
    directory (adapter_config.json + adapter_model.safetensors). Refused:
    a destination that is neither a regular file nor a directory (device node, FIFO, socket), one
    of the wrong kind, the export's own source (or a directory holding it), an existing run
    directory, an existing model file or HF export unless force=True, and a place whose nearest
    existing parent is not a writable directory. Returns dest as a Path.
    """
    if kind not in EXPORT_KINDS:
        raise ValueError(f"export kind must be one of {EXPORT_KINDS}, got {kind!r}")
    dest = Path(dest)
    if kind == "gguf":
        from tui_llm.engine.formats.gguf import MODELFILE_SUFFIX, modelfile_path  # imports gguf: only here

        if dest.suffix == MODELFILE_SUFFIX:
            raise CheckpointError(dest, "is the name of its own Modelfile; give the GGUF a name ending in .gguf")
        check_export_destination(source, modelfile_path(dest), "llmc", force)
        kind = "llmc"  # the GGUF itself: one file, as an llm.c export
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
                raise CheckpointError(dest, "is a directory; this export is one file (give a file name)")
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


def export_provenance(source) -> tuple[str, str]:
    """(general.name, general.description) for a GGUF export of `source`, file names without
    their directories (a model file travels; the user's paths stay home):

    - a run directory or training checkpoint: the run's name, and what was trained from what:
      "fine-tuned with tui-llm from SmolLM2-135M for 300 steps on story_train.bin (run x, ckpt_300)";
    - a GGUF file: its own general.name and general.description (a re-export says the same);
    - anything else (an HF dir or cached name, an llm.c file): its name, "exported by tui-llm from NAME".
    """
    from tui_llm.engine.formats import detect_checkpoint_kind, load_training_checkpoint

    path = Path(str(source)).expanduser()
    if not path.exists():
        return str(source), f"exported by tui-llm from {source}"
    kind = "hf" if path.is_dir() and not is_run_directory(path) else None
    if kind is None:
        from tui_llm.engine.run.run_dir import resolve_checkpoint

        path = resolve_checkpoint(path)
        kind = detect_checkpoint_kind(path)
    if kind == "gguf":
        from tui_llm.engine.formats.gguf_file import read_contents

        md = read_contents(path).metadata
        name, description = md.get("general.name"), md.get("general.description")
        return (name if isinstance(name, str) else path.stem,
                description if isinstance(description, str) else "")
    if kind != "training":
        return path.name if path.is_dir() else path.stem, f"exported by tui-llm from {path.name}"
    _, meta = load_training_checkpoint(path, names=[])
    run_config = meta.get("run_config")
    run_config = run_config if isinstance(run_config, dict) else {}
    step, init_from, train_file = meta.get("step"), run_config.get("init_from"), run_config.get("train_file")
    origin = f"from {_base_name(init_from)}" if isinstance(init_from, str) else \
        f"from scratch ({run_config.get('arch', 'gpt2')} {run_config.get('model', '')})".replace(" )", ")")
    steps = f" for {step} steps" if isinstance(step, int) else ""
    data = f" on {_base_name(train_file)}" if isinstance(train_file, str) else ""
    verb = "fine-tuned" if isinstance(init_from, str) else "trained"
    return path.parent.name, f"{verb} with tui-llm {origin}{steps}{data} (run {path.parent.name}, {path.stem})"


def _base_name(spec: str) -> str:
    """A path's last part ("runs/x/" -> "x"), or a cached model name as it is ("org/model")."""
    p = Path(spec)
    return p.name if p.exists() or spec.startswith((".", "/", "~")) else spec
