"""Every file this project writes goes through here: complete and durable, or not there at all.

* atomic_write(path): one file. Written to a temporary file beside it, flushed, fsynced, renamed
  over `path` and the directory fsynced; if anything fails the temporary is removed and whatever
  was at `path` stays untouched.
* atomic_files(directory): several files that belong together (config.json + model.safetensors).
  They are written into a temporary directory beside `directory`, which replaces it only once
  every file is complete; until then the previous directory is untouched.
* atomic_write_together(paths): several files side by side that belong together (OUT.gguf and
  OUT.Modelfile, which a user's directory holds among other files, so no directory can be
  swapped). Every file is written to its own temporary and fsynced first; only then are they
  renamed, in the order given, and the LAST rename is the commit point. A failure before it
  removes every temporary and leaves whatever was there untouched; a crash (SIGKILL, power cut)
  between the renames can leave the earlier files new and the last one old or absent, so put the
  file that says "this output is complete" (the model) last.
* remove_stale_temp_files(directory): a process killed mid-save (SIGKILL, power cut) leaves its
  temporary behind; this removes ours, recognised by their name, and nothing else.

Temporaries are named `.<name>.<8 hex digits>.tui-llm-tmp`, and a directory being replaced is
parked as `.<name>.<8 hex digits>.tui-llm-old` for the moment between two renames.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

TEMP_SUFFIX = ".tui-llm-tmp"
OLD_SUFFIX = ".tui-llm-old"
_OURS = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{8}(?P<suffix>\.tui-llm-(?:tmp|old))$")


def temp_name(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A fresh temporary path beside `path`, in our recognisable pattern."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file next to `path` for writing; on success move it into place.

        with atomic_write("out/config.json", "w") as f:
            json.dump(cfg, f)
    """
    path = Path(path)
    _refuse_special(path)
    tmp = temp_name(path)
    # os.open with 0o666 lets the umask decide permissions, as a plain open() would (mkstemp forces 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        # Text: UTF-8, and "\n" written as is (newline=""), which is also what the csv module needs.
        with (os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8", newline="")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)  # Path("x").parent is Path("."): always a usable directory


@contextlib.contextmanager
def atomic_files(directory, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary directory; once the body returns, it becomes `directory`, all at once.

    Write each file inside with atomic_write (so each is fsynced). Files of an existing
    `directory` that the body did not write (e.g. tokenizer files next to a model) are carried
    over. If the body raises, the temporary directory is removed and `directory` is untouched.
    replace=False is for directories named by their content (a cache): if `directory` exists when
    the body is done (another process made it meanwhile), that one stays and ours is dropped, so a
    reader never finds it missing.

        with atomic_files("out/model") as tmp:
            with atomic_write(tmp / "config.json", "w") as f: ...
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(20, "exists and is not a directory", str(directory))
    tmp = temp_name(directory)
    tmp.mkdir()
    try:
        yield tmp
        if not replace and directory.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if directory.is_dir():
            _carry_over(directory, tmp)
        fsync_dir(tmp)
        if not replace:
            try:
                os.rename(tmp, directory)
            except OSError as e:  # made by another process between the check and the rename: keep it
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not directory.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        elif directory.exists():
            # Two renames: the old directory is parked, then the new one takes its name. A crash
            # between them leaves the old one parked, and remove_stale_temp_files puts it back.
            old = temp_name(directory, OLD_SUFFIX)
            os.rename(directory, old)
            os.rename(tmp, directory)
            fsync_dir(directory.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(directory.parent)


@contextlib.contextmanager
def atomic_write_together(paths, mode: str = "wb") -> Iterator[list]:
    """Yield one open file per path (binary, or UTF-8 text for mode "w"); once the body returns,
    all are fsynced and renamed into place in the given order (see the module docstring).

        with atomic_write_together([out.with_suffix(".Modelfile"), out]) as (modelfile, model): ...
    """
    paths = [Path(p) for p in paths]
    if len(set(paths)) != len(paths):
        raise ValueError(f"atomic_write_together: a path is given twice ({paths})")
    for path in paths:
        _refuse_special(path)
    temps: list[Path] = []
    files: list = []
    try:
        for path in paths:
            tmp = temp_name(path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            temps.append(tmp)
            files.append(os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, encoding="utf-8", newline=""))
        yield files
        for f in files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
    except BaseException:
        for f in files:
            with contextlib.suppress(OSError):
                f.close()
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    for directory in dict.fromkeys(path.parent for path in paths):
        fsync_dir(directory)


def _refuse_special(path: Path) -> None:
    """Never rename over a directory, device node, FIFO or socket (as root, /dev/null is replaceable)."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    if not stat.S_ISREG(mode):
        raise OSError(errno.EEXIST, "exists and is not a regular file", str(path))


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) what `old` has and `new` lacks into `new`."""
    def link_or_copy(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in old.iterdir():
        target = new / entry.name
        if target.exists() or _OURS.match(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True, copy_function=link_or_copy)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        else:
            link_or_copy(entry, target)


def remove_stale_temp_files(directory) -> list[Path]:
    """Delete the temporaries interrupted saves left in `directory`; returns what was removed.

    Only names in our pattern are touched. A parked old directory whose replacement never arrived
    is renamed back instead. Call it when no save into this directory is running.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _OURS.match(entry.name)
        if not match:
            continue
        original = entry.parent / match["name"]
        if match["suffix"] == OLD_SUFFIX and not original.exists():
            os.rename(entry, original)  # the swap was interrupted: the old output is the good one
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` survive a power cut (where the OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its rename is durable enough
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the data itself is already synced
        pass
    finally:
        os.close(fd)
