"""A run directory: the one place that knows its file names.

    runs/20261201-101500-d6/
        config.json                  the run's configuration and model (atomic, rewritten on resume)
        metrics.jsonl                every event, one JSON object a line, appended as they happen
        ckpt_00000250.safetensors    resumable checkpoints (weights, AdamW state, loader, RNG)
        keep.json                    checkpoints marked to keep (never pruned)
        .lock                        held (flock) while a process trains here

`metrics.jsonl` is the run's only history. A checkpoint records how many bytes of it existed
when it was written; resuming from that checkpoint cuts the file back to there, so the history
and the weights always agree. Each record is appended with one write; a torn last line (a crash
or a full disk in the middle of a write) is cut off, never parsed.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import json
import os
import re
import shutil
from pathlib import Path

from tui_llm.engine.formats.atomic import atomic_write, remove_stale_temp_files
from tui_llm.engine.errors import TuiLlmError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
KEEP = "keep.json"
LOCK = ".lock"
CONTROL_SOCKET = "control.sock"   # the trainer's control channel (engine/channel.py)
CONTROL_ADDRESS = "control.addr"  # where it is instead, when the run directory's path is too long
CHECKPOINT_GLOB = "ckpt_*.safetensors"
CHECKPOINT_RE = re.compile(r"^ckpt_(\d{8,})\.safetensors$")

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
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "run_config" in config


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
        self._metrics_fd: int | None = None
        self.created = False   # this process made the directory (a fresh run)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- opening ---------------------------------------------------------------------------

    def create(self) -> None:
        """For a fresh run: the directory must not exist yet or be empty."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out-dir {self.path}: exists and is not a directory")
        if self.path.is_dir() and any(self.path.iterdir()):
            hint = " (it holds a run: continue it with --resume)" if is_run_dir(self.path) else ""
            raise RunDirError(f"--out-dir {self.path}: directory is not empty{hint}")
        try:
            self.created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"--out-dir {self.path}: cannot create it ({e.strerror})") from None

    def lock(self) -> None:
        """Hold the directory for this process; a second trainer gets a clear error."""
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
        if self._metrics_fd is not None:
            os.close(self._metrics_fd)
            self._metrics_fd = None
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
            names = json.loads((self.path / KEEP).read_text(encoding="utf-8"))
        except (OSError, ValueError):
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
            config = json.loads((self.path / CONFIG).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunDirError(f"{self.path / CONFIG}: cannot read it ({e})") from None
        if not isinstance(config, dict):
            raise RunDirError(f"{self.path / CONFIG}: not a JSON object")
        return config

    # -- metrics.jsonl -------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def open_metrics(self, keep_bytes: int = 0) -> None:
        """Start appending; the history is cut back to its first `keep_bytes` bytes (0: a fresh file)."""
        path = self.metrics_path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            if keep_bytes > size:
                raise RunDirError(f"{path}: the history is shorter ({size} bytes) than the checkpoint "
                                  f"recorded ({keep_bytes} bytes)")
            os.ftruncate(fd, keep_bytes)
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        self._metrics_fd = fd

    def metrics_size(self) -> int:
        return os.fstat(self._metrics_fd).st_size if self._metrics_fd is not None else 0

    def append(self, record: dict) -> None:
        """One record, written whole or not at all (a partial write is cut back off)."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        fd = self._metrics_fd
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(errno.ENOSPC, "short write")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise

    def sync_metrics(self) -> None:
        if self._metrics_fd is not None:
            os.fsync(self._metrics_fd)

    def _whole_records(self, start: int = 0):
        """(record, line length) of each whole, parseable line from byte `start` on; stops at the first other."""
        try:
            with open(self.metrics_path, "rb") as f:
                f.seek(start)
                for line in f:
                    if not line.endswith(b"\n"):
                        return
                    try:
                        record = json.loads(line)
                    except ValueError:
                        return
                    if not isinstance(record, dict):
                        return
                    yield record, len(line)
        except OSError:
            return

    def history_end(self, checkpoint_bytes: int, checkpoint_path: Path | None = None) -> int:
        """Where to cut metrics.jsonl for a resume from a checkpoint that recorded `checkpoint_bytes`:
        there, plus the record of that checkpoint itself (written just after the save)."""
        end = checkpoint_bytes
        for record, length in self._whole_records(checkpoint_bytes):
            if record.get("type") == "checkpoint" and checkpoint_path is not None \
                    and Path(str(record.get("path"))).name == Path(checkpoint_path).name:
                return end + length
            if record.get("type") not in ("checkpoint", "notice"):
                break
            end += length
        return end

    def history_end_at_step(self, step: int) -> int:
        """The cut for a checkpoint from before history offsets were recorded: the records up to
        its step (such old train records count from 0, so one with step >= `step` came after it)."""
        end = 0
        for record, length in self._whole_records():
            s = record.get("step")
            if isinstance(s, int) and (s > step or (record.get("type") == "train" and s >= step)):
                break
            end += length
        return end

    def read_metrics(self, limit_bytes: int | None = None) -> list[dict]:
        """Every whole record (a torn or unreadable line is skipped)."""
        return read_records(self.metrics_path, limit_bytes)

    # -- CSV export ---------------------------------------------------------------------------

    def export_csv(self) -> Path:
        """metrics.csv next to metrics.jsonl: one row per step, validation in its own column."""
        rows: dict[int, dict] = {}
        for record in self.read_metrics():
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


def read_records(path: Path, limit_bytes: int | None = None) -> list[dict]:
    records = []
    try:
        with open(path, "rb") as f:
            data = f.read() if limit_bytes is None else f.read(limit_bytes)
    except OSError:
        return records
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn (or empty)
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
