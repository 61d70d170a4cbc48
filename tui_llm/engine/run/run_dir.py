"""A run directory: the one place that knows its file names.

    runs/20261201-101500-d6/
        config.json                  the run's configuration and model (atomic, rewritten on resume)
        metrics.jsonl                every event, one JSON object a line, appended as they happen
        ckpt_00000250.safetensors    resumable checkpoints (weights, AdamW state, loader, RNG)
        keep.json                    checkpoints marked to keep (never pruned)
        .lock                        held (flock) while a process trains here

`metrics.jsonl` is the run's only history, read and written by metrics_log.MetricsLog
(`run_dir.metrics`): a checkpoint records how much of it existed, and a resume cuts it back there.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import re
import shutil
import stat
from pathlib import Path

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.formats.atomic import TEMP_SUFFIX, atomic_write, remove_stale_temp_files
from tui_llm.engine.jsonline import BadLine, parse_json
from tui_llm.engine.run.metrics_log import MetricsLog

CONFIG = "config.json"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
KEEP = "keep.json"
LOCK = ".lock"
CONTROL_SOCKET = "control.sock"   # the trainer's control channel (engine/channel.py)
CONTROL_ADDRESS = "control.addr"  # where it is instead, when the run directory's path is too long
CHECKPOINT_GLOB = "ckpt_*.safetensors"
CHECKPOINT_RE = re.compile(r"^ckpt_(\d{8,})\.safetensors$")
LEFTOVERS = frozenset({LOCK, CONFIG, METRICS, CONTROL_SOCKET, CONTROL_ADDRESS})
"""What a run that never saved a checkpoint leaves behind: a fresh run may start over it."""

CSV_COLUMNS = ("step", "loss", "val_loss", "lr", "grad_norm", "fwd_ms", "bwd_ms", "opt_ms", "step_ms",
               "tok_per_s", "tokens", "elapsed_s", "epoch")


class RunDirError(TuiLlmError):
    """A run directory that cannot be used as asked (one line for the user)."""


def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:08d}.safetensors"


def checkpoint_step(path: Path) -> int | None:
    m = CHECKPOINT_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_run_dir(path: Path) -> bool:
    """A tui-llm run directory: it has metrics.jsonl, a checkpoint, or a config.json of ours (a
    Hugging Face model directory has a config.json too, without our run_config)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / METRICS).exists() or any(path.glob(CHECKPOINT_GLOB)):
        return True
    try:
        config = read_json_file(path / CONFIG)
    except (OSError, BadLine):
        return False
    return isinstance(config, dict) and "run_config" in config


def read_json_file(path: Path, max_bytes: int = 16 << 20) -> object:
    """A small JSON file of ours (config.json, keep.json): a regular file of at most max_bytes.
    OSError or BadLine (one line) otherwise; never blocks on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadLine("not a regular file")
        if st.st_size > max_bytes:
            raise BadLine(f"larger than {max_bytes:,} bytes")
        return parse_json(f.read(max_bytes + 1), max_bytes)


def resolve_checkpoint(path) -> Path:
    """A run directory (its newest checkpoint) or a checkpoint file."""
    p = Path(path)
    if p.is_dir():
        found = RunDir(p).checkpoints()
        if not found:
            raise RunDirError(f"{p}: no checkpoint (ckpt_*.safetensors) in this run directory")
        return found[-1][1]
    if not p.exists():
        raise RunDirError(f"{p}: no such file or directory")
    return p


class RunDir:
    def __init__(self, path) -> None:
        self.path = Path(path).absolute()
        self._lock_fd: int | None = None
        self.metrics = MetricsLog(self.path / METRICS)   # the run's history
        self.created = False   # this process made the directory (a fresh run)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- opening ---------------------------------------------------------------------------

    def create(self) -> str | None:
        """For a fresh run: the directory must not exist yet, be empty, or hold only what a run
        that never saved a checkpoint leaves behind (killed before its first save: `.lock`,
        config.json, metrics.jsonl, the control socket). Such leftovers are replaced, and the
        returned note says so; a directory with anything else in it is refused."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path}: exists and is not a directory", field="out_dir")
        if self.path.is_dir() and any(self.path.iterdir()):
            if self._unsaved_run_leftovers() is None:
                hint = " (it holds a run: continue it with --resume)" if is_run_dir(self.path) else ""
                raise RunDirError(f"{self.path}: directory is not empty{hint}", field="out_dir")
            return self._start_over()
        try:
            self.created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot create it ({e.strerror})", field="out_dir") from None
        return None

    def _unsaved_run_leftovers(self) -> list[Path] | None:
        """The files of a run that saved no checkpoint, or None if anything else is here (a
        checkpoint, keep.json, a file of the user's, a directory): those are never touched."""
        found = []
        for entry in self.path.iterdir():
            if entry.name in LEFTOVERS and not entry.is_dir():
                found.append(entry)
            elif not (entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)):
                return None
        names = {p.name for p in found}
        if CONFIG in names:  # ours (a run's configuration), not someone else's config.json
            try:
                config = read_json_file(self.path / CONFIG)
            except (OSError, BadLine):
                return None
            if not (isinstance(config, dict) and "run_config" in config):
                return None
        if METRICS in names:  # ours: empty, or a run's records from its start record on
            try:
                first = next(self.metrics.records(), None)
            except TuiLlmError:
                return None
            if first is not None and (first[1] or {}).get("type") != "start":
                return None
        return found

    def _start_over(self) -> str:
        """Take over a directory whose run died before its first checkpoint (the lock proves it is dead)."""
        self.lock()
        leftovers = self._unsaved_run_leftovers()
        if leftovers is None:  # something appeared meanwhile: leave it all alone
            self.close()
            raise RunDirError(f"{self.path}: directory is not empty", field="out_dir")
        steps = sum(1 for _, r in self.metrics.records() if r is not None and r.get("type") == "train") \
            if self.metrics.path.is_file() else 0
        for entry in leftovers:
            if entry.name != LOCK:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        what = f" ({steps} steps recorded, none saved)" if steps else ""
        return f"{self.path} held a run that stopped before its first checkpoint{what}: starting it again from step 0"

    def check_files(self) -> None:
        """RunDirError (one line) when config.json, keep.json or metrics.jsonl is there but is not
        a regular file (a directory, a FIFO): the run could not write or read it."""
        for name in (CONFIG, KEEP, METRICS):
            p = self.path / name
            try:
                mode = p.lstat().st_mode
            except OSError:
                continue
            if stat.S_ISLNK(mode):
                try:
                    mode = p.stat().st_mode
                except OSError:
                    continue  # a dangling link: replaced when written
            if not stat.S_ISREG(mode):
                kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
                raise RunDirError(f"{p}: {kind}; a run directory's {name} must be a regular file (move it away)")

    def lock(self) -> None:
        """Hold the directory for this process; a second trainer gets a clear error."""
        if self._lock_fd is not None:
            return
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot write in the run directory ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunDirError(f"{self.path}: another process is training in this run directory") from None
        self._lock_fd = fd
        self.remove_temp_files()

    def is_locked(self) -> bool:
        """Whether some process trains here now (watchers ask this)."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)

    def close(self) -> None:
        self.metrics.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def discard(self) -> None:
        """Remove a fresh run that never got anywhere (no checkpoint): leave no empty directory."""
        self.close()
        if self.created and not self.checkpoints():
            shutil.rmtree(self.path, ignore_errors=True)

    def remove_temp_files(self) -> list[Path]:
        """Leftovers of saves that were interrupted (kill -9, power cut)."""
        return remove_stale_temp_files(self.path)

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint_path(self, step: int) -> Path:
        return self.path / checkpoint_name(step)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """(step, path) of every checkpoint, oldest first (by step number, not by name)."""
        if not self.path.is_dir():
            return []
        found = [(s, p) for p in self.path.glob(CHECKPOINT_GLOB) if (s := checkpoint_step(p)) is not None]
        return sorted(found)

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1][1] if found else None

    def kept(self) -> set[str]:
        """Names of checkpoints marked to keep."""
        try:
            names = read_json_file(self.path / KEEP)
        except (OSError, BadLine):
            return set()
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def keep(self, path: Path, keep: bool = True) -> None:
        names = self.kept() | {Path(path).name} if keep else self.kept() - {Path(path).name}
        with atomic_write(self.path / KEEP, "w") as f:
            json.dump(sorted(names), f)

    def prune(self, keep_last: int, protect: Path | None = None) -> list[Path]:
        """Delete all but the newest `keep_last` checkpoints (by step). Never the newest, nor
        `protect` (the one just written), nor those marked to keep. keep_last 0: keep all."""
        if keep_last <= 0:
            return []
        found = self.checkpoints()
        kept = self.kept()
        removed = []
        for _, p in found[:-keep_last]:
            if p == protect or p.name in kept:
                continue
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        return removed

    # -- config.json ---------------------------------------------------------------------------

    def write_config(self, config: dict) -> None:
        with atomic_write(self.path / CONFIG, "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")

    def read_config(self) -> dict:
        try:
            config = read_json_file(self.path / CONFIG)
        except OSError as e:
            raise RunDirError(f"{self.path / CONFIG}: cannot read it ({e.strerror or e})") from None
        except BadLine as e:
            raise RunDirError(f"{self.path / CONFIG}: {e}") from None
        if not isinstance(config, dict):
            raise RunDirError(f"{self.path / CONFIG}: not a JSON object")
        return config

    # -- CSV export ---------------------------------------------------------------------------

    def export_csv(self) -> Path:
        """metrics.csv next to metrics.jsonl: one row per step, validation in its own column."""
        rows: dict[int, dict] = {}
        for record in self.metrics.read():
            kind, step = record.get("type"), record.get("step")
            if not isinstance(step, int):
                continue
            if kind == "train":
                rows.setdefault(step, {}).update({k: record.get(k) for k in CSV_COLUMNS if k in record})
            elif kind == "val":
                rows.setdefault(step, {})["val_loss"] = record.get("loss")
        out = self.path / METRICS_CSV
        with atomic_write(out, "w") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows({**rows[step], "step": step} for step in sorted(rows))
        return out
