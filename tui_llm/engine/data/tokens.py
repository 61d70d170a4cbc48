"""Token files: llm.c's formats, shards, and the windows of tokens a batch is cut from.

File formats (all little-endian):
  * "llmc"   llm.c's current format: 256 int32 header (magic 20240520, version 1, slot 2 = token
             count), then uint16 tokens. The file size must be exactly 1024 + 2 * count. Vocabularies
             beyond 65,536 tokens use llm.c's Llama-3 variant: magic 20240801, version 7, uint32
             tokens (1024 + 4 * count bytes); both read as "llmc".
  * "int32"  llm.c before May 2024 and llm.rust: headerless int32 tokens.
  * "uint16" nanoGPT's train.bin: headerless uint16 tokens. Never guessed (any even-sized file would
             match), only read when the caller asks for it.

Files are memory-mapped, so a corpus larger than RAM costs nothing until batches are read. A dataset
that outgrows one file is a glob of shards ("data/fineweb_train_*.bin", open_dataset).

The loaders that turn them into (inputs, targets) batches are in loader.py.
"""

from __future__ import annotations

import glob
import os
import stat
from pathlib import Path

import numpy as np

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.formats.atomic import atomic_write
from tui_llm.engine.models.gpt2_config import GPT2_VOCAB_SIZE

LLMC_MAGIC = 20240520
LLMC_VERSION = 1
LLMC_MAGIC_U32, LLMC_VERSION_U32 = 20240801, 7  # llm.c's uint32 tokens (Llama 3)
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
FORMATS = ("llmc", "int32", "uint16")


class DataError(TuiLlmError):
    """A token file or loader request that cannot work; the message names the file and the problem."""


class TokenFile:
    """A token file opened for reading: `.tokens` is a read-only 1-D memmap (or an empty array)."""

    def __init__(self, path: Path, tokens: np.ndarray, fmt: str):
        self.path = path
        self.tokens = tokens
        self.format = fmt

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, format={self.format!r}, num_tokens={self.num_tokens:,})"


def _memmap(path: Path, dtype: str, offset: int, count: int) -> np.ndarray:
    if count == 0:  # mmap cannot map zero bytes
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def open_tokens(path, format: str = "auto", vocab_size: int = GPT2_VOCAB_SIZE, check_ids: bool = True) -> TokenFile:
    """Open a token file. format: "auto" (llm.c header or legacy int32), "llmc", "int32" or "uint16".

    With check_ids, every token id is checked to be < vocab_size (one vectorised pass over the file).
    """
    path = Path(path)
    if format not in ("auto", *FORMATS):
        raise DataError(f"{path}: unknown token file format {format!r} (use auto, {', '.join(FORMATS)})")
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            raise DataError(f"{path}: not a regular file")
        size = st.st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a token file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None

    if size == 0:
        raise DataError(f"{path}: empty file")
    first = int(np.frombuffer(head[:4], dtype="<i4")[0]) if len(head) >= 4 else None

    if format == "auto":
        if first in (LLMC_MAGIC, LLMC_MAGIC_U32):
            format = "llmc"
        elif first is not None and size % 4 == 0 and 0 <= first < 65536:
            format = "int32"
        else:
            raise DataError(
                f"{path}: not a token file (no llm.c header magic {LLMC_MAGIC}, and not headerless int32 tokens; "
                "for nanoGPT's headerless uint16 .bin files use --format uint16)"
            )

    if format == "llmc":
        if len(head) < HEADER_BYTES:
            raise DataError(f"{path}: {size} bytes is too short for the {HEADER_BYTES}-byte llm.c header")
        header = np.frombuffer(head, dtype="<i4")
        magic, version, count = (int(x) for x in header[:3])
        if magic not in (LLMC_MAGIC, LLMC_MAGIC_U32):
            raise DataError(f"{path}: bad magic {magic} in header (expected {LLMC_MAGIC}, or {LLMC_MAGIC_U32} "
                            f"for uint32 tokens)")
        expected = LLMC_VERSION if magic == LLMC_MAGIC else LLMC_VERSION_U32
        if version != expected:
            hint = f" (version 7 is llm.c's Llama-3 uint32 format, magic {LLMC_MAGIC_U32})" if version == 7 else ""
            raise DataError(f"{path}: unsupported token file version {version} for magic {magic}{hint}, "
                            f"expected {expected}")
        width = 2 if magic == LLMC_MAGIC else 4
        if count < 0 or size != HEADER_BYTES + width * count:
            raise DataError(
                f"{path}: header says {count:,} tokens, so the file should be "
                f"{HEADER_BYTES + width * max(count, 0):,} bytes, but it is {size:,} bytes (truncated or corrupt)"
            )
        tokens = _memmap(path, "<u2" if width == 2 else "<u4", HEADER_BYTES, count)
    elif format == "int32":
        if size % 4:
            raise DataError(f"{path}: {size:,} bytes is not a whole number of int32 tokens")
        tokens = _memmap(path, "<i4", 0, size // 4)
        if tokens.min() < 0:
            raise DataError(f"{path}: negative token id {int(tokens.min())} (not an int32 token file?)")
    else:  # uint16
        if size % 2:
            raise DataError(f"{path}: {size:,} bytes is not a whole number of uint16 tokens")
        tokens = _memmap(path, "<u2", 0, size // 2)

    if check_ids and tokens.size:
        top = int(tokens.max())
        if top >= vocab_size:
            where = int(np.argmax(tokens >= vocab_size))
            raise DataError(
                f"{path}: token id {top} >= vocabulary size {vocab_size} (first bad id at token {where:,}; "
                f"wrong format or tokenizer?)"
            )
    return TokenFile(path, tokens, format)


def write_tokens(path, tokens, format: str = "llmc", wide: bool = False) -> int:
    """Write tokens atomically (atomic_write: temp file in the same directory, fsync, rename). Returns bytes written.

    wide: llm.c's uint32 variant of "llmc" (magic 20240801, version 7), for vocabularies beyond 65,536.

    A reader never sees a half-written file, and a crash leaves the previous file (if any) intact.
    """
    path = Path(path)
    tokens = np.asarray(tokens)
    if format not in FORMATS:
        raise DataError(f"{path}: unknown token file format {format!r} (use {', '.join(FORMATS)})")
    if tokens.ndim != 1:
        raise DataError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if wide and format != "llmc":
        raise DataError(f"{path}: the {format} format holds 16-bit tokens only; use llmc (uint32) or int32")
    limit = 2**32 if wide else 65536
    if tokens.size and (tokens.min() < 0 or (format != "int32" and tokens.max() >= limit)):
        raise DataError(f"{path}: token ids must be in [0, {limit}) for the {format} format")
    if format == "llmc" and tokens.size >= 2**31:
        raise DataError(f"{path}: {tokens.size:,} tokens do not fit llm.c's int32 count; split into shards")

    dtype = "<i4" if format == "int32" else "<u4" if wide else "<u2"
    with atomic_write(path, "wb") as f:
        if format == "llmc":
            header = np.zeros(HEADER_INTS, dtype="<i4")
            header[:3] = (LLMC_MAGIC_U32, LLMC_VERSION_U32, tokens.size) if wide else (LLMC_MAGIC, LLMC_VERSION, tokens.size)
            f.write(header.tobytes())
        chunk = 1 << 22  # convert and write 4M tokens at a time: bounded memory for huge inputs
        for start in range(0, tokens.size, chunk):
            f.write(tokens[start:start + chunk].astype(dtype).tobytes())
    return (HEADER_BYTES if format == "llmc" else 0) + tokens.size * np.dtype(dtype).itemsize


# ----------------------------------------------------------------------------------------------------
# datasets that outgrow one file: llm.c shards

class TokenShards:
    """A dataset of one or more token files (llm.c "shards"), in sorted path order, all of one format."""

    def __init__(self, files: list[TokenFile], pattern: str):
        self.files, self.pattern = files, pattern

    @property
    def format(self) -> str:
        return self.files[0].format

    @property
    def num_tokens(self) -> int:
        return sum(f.num_tokens for f in self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (f"TokenShards({self.pattern!r}, {len(self.files)} files, format={self.format!r}, "
                f"num_tokens={self.num_tokens:,})")


def open_dataset(spec, format: str = "auto", vocab_size: int = GPT2_VOCAB_SIZE, check_ids: bool = True) -> TokenShards:
    """One token file, or a glob pattern of shards ("data/fineweb_train_*.bin"), each opened by open_tokens.

    Shards are taken in sorted path order (llm.c: glob() sorts). They must all have the same format
    (and so the same token dtype); mixing llm.c and headerless files is an error, not a guess.
    """
    pattern = os.fspath(spec)
    if not glob.has_magic(pattern) or os.path.isfile(pattern):  # a file may be called "data[1].bin"
        return TokenShards([open_tokens(pattern, format, vocab_size, check_ids)], pattern)
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise DataError(f"{pattern}: no files match this pattern")
    files = [open_tokens(p, format, vocab_size, check_ids) for p in paths]
    formats = {f.format for f in files}
    if len(formats) > 1:
        first = files[0]
        other = next(f for f in files if f.format != first.format)
        raise DataError(f"{pattern}: the shards mix token formats ({first.path.name} is {first.format}, "
                        f"{other.path.name} is {other.format}); all shards must have one format")
    return TokenShards(files, pattern)


def _as_shards(tokens) -> list[tuple[str, np.ndarray]]:
    """(name, 1-D token array) for each shard of an array, a TokenFile, a TokenShards or a list of them."""
    if isinstance(tokens, TokenShards):
        tokens = tokens.files
    if not isinstance(tokens, (list, tuple)):
        tokens = [tokens]
    if not tokens:
        raise DataError("no token data given")
    shards = []
    for t in tokens:
        if isinstance(t, TokenFile):
            shards.append((t.path.name, t.tokens))
        else:
            shards.append(("", np.asarray(t)))
    if len({a.dtype for _, a in shards}) > 1:
        raise DataError(f"the shards mix token dtypes ({', '.join(sorted({str(a.dtype) for _, a in shards}))})")
    return shards


def _describe(name: str, index: int, count: int) -> str:
    return (name or "tokens") + (f" (shard {index} of {count})" if count > 1 else "")


def _count_samples(tokens: np.ndarray, rows: int, T: int, what: str, unit: str = "one batch of B*T+1") -> int:
    n = (tokens.shape[0] - 1) // (rows * T)
    if n < 1:
        raise DataError(
            f"{what}: {tokens.shape[0]:,} tokens are too few for {unit} = {rows * T + 1:,} tokens "
            "(use a smaller batch or sequence length, or more text)"
        )
    return n


def _window(tokens: np.ndarray, start: int, B: int, T: int) -> tuple[np.ndarray, np.ndarray]:
    window = np.asarray(tokens[start:start + B * T + 1], dtype=np.int32)
    return window[:-1].reshape(B, T), window[1:].reshape(B, T)


def _check_positive(**values) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DataError(f"{name}={v!r} must be a positive integer")
