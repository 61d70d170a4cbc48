"""Packed rows: documents (conversations) laid into rows of T tokens, and the loss mask file beside them.

On disk, for a dataset <name> (and each shard, `<name>_train_000000.bin` + `<name>_train_000000.mask`):

  <name>_train.bin   an llm.c token file (data.py: uint16, or uint32 beyond 65,536 tokens) holding a
                     whole number of rows of exactly T tokens; readable by every token loader.
  <name>_train.mask  one flag byte per token of that file, after a 64-byte little-endian header:

      offset  type     field
      0       8 bytes  magic b"TUIMASK\\0"
      8       uint32   version (1)
      12      uint32   row_tokens: T, the row length (>= 2)
      16      uint64   num_tokens: the token file's count, a multiple of T
      24      uint64   num_documents: tokens flagged DOC_START (padding runs included)
      32      uint64   num_loss_tokens: tokens flagged LOSS
      40      uint32   tokens_crc32: CRC-32 of the first and last rows' token ids as little-endian
                       uint32 (which token file this mask was written for)
      44      20 bytes zero (reserved)
      64      num_tokens bytes: the flags

      bit 0  LOSS       predicting this token counts in the loss
      bit 1  DOC_START  this token begins a document: its attention and its position restart here
      bit 2  PAD        row padding (the pad token; a document of its own, never in the loss)
      bits 3-7 zero

  Invariants (checked when a mask file is opened, one DataError line otherwise): the size is
  64 + num_tokens; num_tokens is a multiple of T and equals the token file's count; the counts and
  tokens_crc32 match; every row starts a document; no token is LOSS together with DOC_START or PAD;
  every PAD token follows a PAD or DOC_START|PAD token; reserved bits are zero.

Targets: position t of a row predicts token t+1 of the SAME row, weighted by that token's LOSS bit;
the row's last position has no target (weight 0). Since a document's first token never carries LOSS,
no counted prediction crosses from one document into the next; rows are independent of each other.
A document never spans two rows: one longer than a row is truncated to T tokens, dropped or refused
(`on_long`). Packing is first-fit over a window of open rows (RowPacker), so rows fill well while
the data streams; a row's unused tail is padding.

    rows = PackedFile.open("data/chat_train.bin")                 # validates .bin and .mask together
    x, y, weight, doc, pos = rows.batch([0, 5, 9])                # (B, T) each, see row_batch
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tui_llm.engine.data.tokens import DataError, TokenFile, open_tokens

MASK_MAGIC = b"TUIMASK\0"
MASK_VERSION = 1
MASK_HEADER = struct.Struct("<8sIIQQQI20s")  # 64 bytes
MASK_HEADER_BYTES = MASK_HEADER.size
MASK_SUFFIX = ".mask"

LOSS, DOC_START, PAD = 1, 2, 4
FLAG_BITS = LOSS | DOC_START | PAD
ON_LONG = ("truncate", "drop", "error")

assert MASK_HEADER_BYTES == 64


class LongDocument(Exception):
    """A document longer than a row under on_long="error"."""


def mask_path(token_path) -> Path:
    """<x>.mask beside <x>.bin."""
    p = Path(token_path)
    return p.with_suffix(MASK_SUFFIX) if p.suffix == ".bin" else p.with_name(p.name + MASK_SUFFIX)


def tokens_crc32(tokens: np.ndarray, row_tokens: int) -> int:
    """CRC-32 of the first and the last row's token ids (as little-endian uint32)."""
    if len(tokens) == 0:
        return 0
    first, last = tokens[:row_tokens], tokens[len(tokens) - row_tokens:]
    return zlib.crc32(np.concatenate([first, last]).astype("<u4").tobytes())


# ----------------------------------------------------------------------------------------------------
# packing

class RowPacker:
    """Lays documents into rows of T tokens: first fit among the `open_rows` most recent unfinished rows
    (1: strictly in order). add() returns the rows it finished, each (tokens (T,), flags (T,) uint8);
    finish() returns the rest. Counts: documents packed, truncated (longer than a row, cut), dropped
    (longer than a row, on_long="drop"), emptied (nothing left in the loss: a reply cut away by
    truncation, or a one-token document), padding tokens, rows."""

    def __init__(self, row_tokens: int, pad_id: int, on_long: str = "truncate", open_rows: int = 16):
        if isinstance(row_tokens, bool) or not isinstance(row_tokens, int) or row_tokens < 2:
            raise ValueError(f"rows must hold at least 2 tokens, got {row_tokens!r}")
        if on_long not in ON_LONG:
            raise ValueError(f"on_long must be one of {', '.join(ON_LONG)}, got {on_long!r}")
        self.T, self.pad_id, self.on_long, self.open_rows = row_tokens, int(pad_id), on_long, max(1, open_rows)
        self._open: list[tuple[list, list, int]] = []  # (token parts, flag parts, tokens used)
        self.documents = self.truncated = self.dropped = self.emptied = self.padding = self.rows = 0

    def add(self, ids, loss) -> list[tuple[np.ndarray, np.ndarray]]:
        """Add one document: ids and its per-token loss mask (1: predicting this token counts)."""
        ids = np.asarray(ids, dtype=np.int64)
        flags = np.where(np.asarray(loss, dtype=bool), LOSS, 0).astype(np.uint8)
        if len(ids) != len(flags):
            raise ValueError(f"{len(ids)} token ids but {len(flags)} mask values")
        if len(ids) == 0:
            return []
        if len(ids) > self.T:
            if self.on_long == "error":
                raise LongDocument(f"{len(ids):,} tokens, longer than a row of {self.T:,} (--on-long truncate or drop)")
            if self.on_long == "drop":
                self.dropped += 1
                return []
            ids, flags = ids[:self.T], flags[:self.T]
            self.truncated += 1
        flags[0] = DOC_START  # nothing before it in its document predicts it
        if not (flags & LOSS).any():
            self.emptied += 1
            return []
        self.documents += 1
        for k, (tok_parts, flag_parts, used) in enumerate(self._open):
            if used + len(ids) <= self.T:
                tok_parts.append(ids)
                flag_parts.append(flags)
                self._open[k] = (tok_parts, flag_parts, used + len(ids))
                return self._close_full()
        finished = [self._close(0)] if len(self._open) == self.open_rows else []  # the oldest row is done
        self._open.append(([ids], [flags], len(ids)))
        return finished + self._close_full()

    def finish(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self._close(0) for _ in range(len(self._open))]

    def _close_full(self) -> list[tuple[np.ndarray, np.ndarray]]:
        full = [k for k, (_, _, used) in enumerate(self._open) if used == self.T]
        return [self._close(k - n) for n, k in enumerate(full)]

    def _close(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        tok_parts, flag_parts, used = self._open.pop(k)
        pad = self.T - used
        if pad:
            tok_parts.append(np.full(pad, self.pad_id, dtype=np.int64))
            flag_parts.append(np.full(pad, PAD, dtype=np.uint8))
            flag_parts[-1][0] = DOC_START | PAD
        self.padding += pad
        self.rows += 1
        return np.concatenate(tok_parts), np.concatenate(flag_parts)


# ----------------------------------------------------------------------------------------------------
# the mask file

def mask_bytes(flags: np.ndarray, row_tokens: int, tokens: np.ndarray) -> bytes:
    """The whole .mask file for `flags` (one per token of `tokens`, rows of row_tokens)."""
    flags = np.ascontiguousarray(flags, dtype=np.uint8)
    if flags.ndim != 1 or len(flags) != len(tokens) or len(flags) % row_tokens:
        raise ValueError(f"{len(flags)} flags for {len(tokens)} tokens in rows of {row_tokens}")
    header = MASK_HEADER.pack(MASK_MAGIC, MASK_VERSION, row_tokens, len(flags),
                              int(np.count_nonzero(flags & DOC_START)), int(np.count_nonzero(flags & LOSS)),
                              tokens_crc32(np.asarray(tokens), row_tokens), bytes(20))
    return header + flags.tobytes()


def write_mask(path, flags: np.ndarray, row_tokens: int, tokens: np.ndarray) -> int:
    """Write a .mask file atomically (formats/atomic.py); returns bytes written."""
    from tui_llm.engine.formats.atomic import atomic_write

    data = mask_bytes(flags, row_tokens, tokens)
    with atomic_write(path) as f:
        f.write(data)
    return len(data)


@dataclass
class MaskFile:
    path: Path
    flags: np.ndarray        # (num_tokens,) uint8, read-only memmap
    row_tokens: int
    num_documents: int
    num_loss_tokens: int
    tokens_crc32: int

    @property
    def num_tokens(self) -> int:
        return int(self.flags.shape[0])

    @property
    def num_rows(self) -> int:
        return self.num_tokens // self.row_tokens


def open_mask(path, check: bool = True) -> MaskFile:
    """Open and validate a .mask file (header, size, and with check every invariant over all flags)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise DataError(f"{path}: not a regular file")
        with open(path, "rb") as f:
            head = f.read(MASK_HEADER_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (packed chat data needs the loss mask written beside its tokens)") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if len(head) < MASK_HEADER_BYTES or head[:8] != MASK_MAGIC:
        raise DataError(f"{path}: not a tui-llm loss mask file (no {MASK_MAGIC[:7].decode()} header)")
    _, version, T, count, docs, loss, crc, reserved = MASK_HEADER.unpack(head)
    if version != MASK_VERSION:
        raise DataError(f"{path}: unsupported mask file version {version} (this tui-llm reads version {MASK_VERSION})")
    if T < 2:
        raise DataError(f"{path}: row length {T} in the header (must be at least 2)")
    if size != MASK_HEADER_BYTES + count:
        raise DataError(f"{path}: header says {count:,} tokens, so the file should be {MASK_HEADER_BYTES + count:,} "
                        f"bytes, but it is {size:,} (truncated or corrupt)")
    if count % T:
        raise DataError(f"{path}: {count:,} tokens is not a whole number of rows of {T:,}")
    if reserved != bytes(20):
        raise DataError(f"{path}: reserved header bytes are not zero (written by a newer tui-llm?)")
    flags = np.memmap(path, dtype=np.uint8, mode="r", offset=MASK_HEADER_BYTES, shape=(count,)) if count else \
        np.zeros(0, dtype=np.uint8)
    mask = MaskFile(path, flags, T, docs, loss, crc)
    if check:
        _check_flags(mask)
    return mask


def _check_flags(mask: MaskFile, chunk_rows: int = 1 << 14) -> None:
    """Every invariant of the flags, a block of rows at a time (bounded memory for any file)."""
    T, path = mask.row_tokens, mask.path
    docs = loss = 0
    for first in range(0, mask.num_rows, chunk_rows):
        rows = np.asarray(mask.flags[first * T:(first + chunk_rows) * T]).reshape(-1, T)

        def where(bad, first=first) -> int:  # the first bad row
            return first + int(np.argmax(bad.any(axis=1)))

        if (bad := (rows & np.uint8(0xFF ^ FLAG_BITS)) != 0).any():
            raise DataError(f"{path}: unknown flag bits in row {where(bad):,}")
        if (bad := (rows[:, :1] & DOC_START) == 0).any():
            raise DataError(f"{path}: row {where(bad):,} does not start a document")
        if (bad := ((rows & LOSS) != 0) & ((rows & (DOC_START | PAD)) != 0)).any():
            raise DataError(f"{path}: row {where(bad):,} counts the loss on a document start or padding")
        pad = (rows & PAD) != 0
        pad_start = pad & ((rows & DOC_START) != 0)
        follows = np.zeros_like(pad)
        follows[:, 1:] = pad[:, :-1]
        if (bad := pad & ~pad_start & ~follows).any():
            raise DataError(f"{path}: row {where(bad):,} has padding that does not begin a padding run")
        docs += int(np.count_nonzero(rows & DOC_START))
        loss += int(np.count_nonzero(rows & LOSS))
    if (docs, loss) != (mask.num_documents, mask.num_loss_tokens):
        raise DataError(f"{path}: the header counts {mask.num_documents:,} documents and {mask.num_loss_tokens:,} "
                        f"loss tokens, the flags {docs:,} and {loss:,} (corrupt)")


# ----------------------------------------------------------------------------------------------------
# reading rows

def row_batch(tokens: np.ndarray, flags: np.ndarray, rows, T: int, pad_id: int = 0):
    """The training view of some rows.

    Returns (x, y, weight, doc, pos), each (B, T):
      x       int32  the rows' tokens
      y       int32  y[b, t] = x[b, t+1]; the last position gets pad_id
      weight  float32 1 where predicting y counts (the LOSS bit of token t+1), else 0; last position 0
      doc     int32  document index within the row (0, 1, ...): attend only where doc matches (and causal)
      pos     int32  position within the document (RoPE / learned positions restart at 0)
    """
    rows = np.asarray(rows, dtype=np.int64)
    starts = (rows * T)[:, None] + np.arange(T)
    x = np.asarray(tokens[starts.ravel()], dtype=np.int32).reshape(len(rows), T)
    f = np.asarray(flags[starts.ravel()], dtype=np.uint8).reshape(len(rows), T)
    y = np.full_like(x, pad_id)
    y[:, :-1] = x[:, 1:]
    weight = np.zeros(x.shape, dtype=np.float32)
    weight[:, :-1] = (f[:, 1:] & LOSS) != 0
    is_start = (f & DOC_START) != 0
    doc = np.cumsum(is_start, axis=1, dtype=np.int32) - 1
    t = np.arange(T, dtype=np.int32)
    pos = t - np.maximum.accumulate(np.where(is_start, t, 0), axis=1)
    return x, y, weight, doc, pos.astype(np.int32)


@dataclass
class PackedFile:
    """A token file and its mask, checked against each other."""
    tokens: TokenFile
    mask: MaskFile

    @property
    def row_tokens(self) -> int:
        return self.mask.row_tokens

    @property
    def num_rows(self) -> int:
        return self.mask.num_rows

    @classmethod
    def open(cls, token_path, mask_file=None, vocab_size: int = 2**32, check: bool = True) -> PackedFile:
        tokens = open_tokens(token_path, "auto", vocab_size=vocab_size, check_ids=check)
        mpath = Path(mask_file) if mask_file is not None else mask_path(token_path)
        mask = open_mask(mpath, check=check)
        if mask.num_tokens != tokens.num_tokens:
            raise DataError(f"{mpath}: a mask for {mask.num_tokens:,} tokens, but {tokens.path} has "
                            f"{tokens.num_tokens:,} (the mask belongs to another token file)")
        if tokens_crc32(tokens.tokens, mask.row_tokens) != mask.tokens_crc32:
            raise DataError(f"{mpath}: written for other tokens than {tokens.path}'s (checksum differs; "
                            f"prepare the data again)")
        return cls(tokens, mask)

    def batch(self, rows, pad_id: int = 0):
        """row_batch of these row indices."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_rows):
            raise DataError(f"{self.tokens.path}: row index out of range 0..{self.num_rows - 1}")
        return row_batch(self.tokens.tokens, self.mask.flags, rows, self.row_tokens, pad_id)


def open_packed(spec, vocab_size: int = 2**32) -> list[PackedFile] | None:
    """The PackedFiles of a token file or a glob of shards when a .mask lies beside them; None for plain
    token files (no masks). DataError (one line) for a mask that does not match its tokens, or shards of
    which only some have one."""
    from tui_llm.engine.data.tokens import open_dataset

    files = open_dataset(spec, "auto", vocab_size=vocab_size, check_ids=False).files
    masked = [mask_path(f.path).is_file() for f in files]
    if not any(masked):
        return None
    if not all(masked):
        plain = files[masked.index(False)].path
        raise DataError(f"{plain}: no {mask_path(plain).name} beside it, while other shards of {spec} have a mask "
                        f"(prepare them together)")
    return [PackedFile.open(f.path, vocab_size=vocab_size) for f in files]
