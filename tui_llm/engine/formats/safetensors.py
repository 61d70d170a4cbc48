"""safetensors, written and parsed by hand so that multi-hundred-MB arrays stream to and from disk.

Format: u64 little-endian header length N, N bytes of JSON header, then the raw little-endian
tensor bytes back to back. The header maps each tensor name to {"dtype", "shape",
"data_offsets": [start, end]} (offsets relative to the end of the header) and may hold
"__metadata__": {str: str}. Every field is validated before anything is allocated: the header
must fit in the file, dtypes must be known, shapes non-negative ints whose byte size equals the
offsets, and the tensors must tile the data section exactly (no gap, overlap or trailing bytes).

BF16 has no numpy dtype: it is read as its uint16 bit patterns and widened to float32 exactly
(or kept as those bits, read_tensor(keep_bf16=True)).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

from tui_llm.engine.formats.common import CHUNK, CheckpointError, read_exact, write_array
from tui_llm.engine.machine import check_fits_memory

# Storage dtype of each safetensors code (BF16 is stored as its bit pattern).
DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_CODES = {np.dtype(t): code for code, t in DTYPES.items() if code != "BF16"}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


@dataclass(frozen=True)
class Entry:
    """One tensor of a header: its dtype code, shape and [start, end) in the data section."""
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def storage(self) -> np.dtype:
        return np.dtype(DTYPES[self.dtype]).newbyteorder("<")


def write_safetensors(f, tensors: list[tuple[str, np.ndarray]], metadata: dict[str, str]) -> None:
    """Stream tensors into safetensors format; arrays are written one at a time, never concatenated."""
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name, arr in tensors:
        code = _CODES.get(arr.dtype.newbyteorder("="))
        if code is None:
            raise ValueError(f"array {name!r} has dtype {arr.dtype}, which safetensors cannot store")
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # pad with spaces (allowed by the spec) so the data is 8-byte aligned
    f.write(len(raw).to_bytes(8, "little"))
    f.write(raw)
    for _, arr in tensors:
        write_array(f, arr)


def no_duplicate_keys(pairs):
    """json's object_pairs_hook that refuses an object naming a key twice (ValueError)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _int(value, what: str, path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(path, f"bad safetensors header: {what} must be a non-negative integer, got {value!r}")
    return value


def read_header(f, path) -> tuple[dict[str, Entry], dict[str, str], int]:
    """Parse and validate a safetensors header: ({name: Entry}, metadata, data_start)."""
    size = os.fstat(f.fileno()).st_size
    if size < 8:
        raise CheckpointError(path, f"truncated: {size} bytes, too short for a safetensors header")
    n = int.from_bytes(f.read(8), "little")
    if n > min(size - 8, MAX_HEADER_BYTES):
        raise CheckpointError(path, f"header length {n} does not fit in the {size}-byte file (truncated or not safetensors)")
    try:
        header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=no_duplicate_keys)
        if not isinstance(header, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(path, f"bad safetensors header JSON: {e}") from None
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(path, "bad safetensors header: __metadata__ is not an object of strings")

    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(path, f"bad safetensors header entry for {name!r}: {str(info)[:80]}")
        if not isinstance(info["dtype"], str) or info["dtype"] not in DTYPES:
            raise CheckpointError(path, f"tensor {name!r}: unknown dtype {str(info['dtype'])[:20]!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
            raise CheckpointError(path, f"bad safetensors header entry for {name!r}: {str(info)[:80]}")
        shape = tuple(_int(d, f"a dimension of {name!r}", path) for d in shape)
        start, end = (_int(x, f"an offset of {name!r}", path) for x in offsets)
        entry = Entry(info["dtype"], shape, start, end)
        if end < start or end - start != math.prod(shape) * entry.storage.itemsize:
            raise CheckpointError(path, f"tensor {name!r}: offsets {start}..{end} do not match shape "
                                        f"{list(shape)} {entry.dtype}")
        entries[name] = entry

    # The tensors must tile the data section exactly: no gaps, no overlap, nothing missing or extra.
    data_start, position = 8 + n, 0
    for name, entry in sorted(entries.items(), key=lambda kv: (kv[1].start, kv[1].end)):
        if entry.start != position:
            raise CheckpointError(path, f"tensor {name!r} starts at byte {entry.start}, expected {position}")
        position = entry.end
    if data_start + position != size:
        problem = "truncated" if data_start + position > size else "has trailing bytes"
        raise CheckpointError(path, f"{problem}: {size} bytes, header describes {data_start + position}")
    return entries, metadata, data_start


def read_tensor(f, path, data_start: int, name: str, entry: Entry, keep_bf16: bool = False) -> np.ndarray:
    """A fresh native-endian array holding one tensor of the file: BF16 widened to float32, or with
    keep_bf16 its bits as they are (uint16, for a frozen bf16 base)."""
    widen = entry.dtype == "BF16" and not keep_bf16
    check_fits_memory((entry.end - entry.start) * (2 if widen else 1), f"tensor {name!r}", path=path)
    f.seek(data_start + entry.start)
    if widen:
        out = np.empty(entry.shape, np.float32)
        bits, flat = out.reshape(-1).view(np.uint32), np.empty(min(CHUNK, out.size), "<u2")
        for start in range(0, out.size, CHUNK):
            part = flat[:min(CHUNK, out.size - start)]
            read_exact(f, part, path)
            bits[start:start + part.size] = part
            bits[start:start + part.size] <<= 16  # a bf16 value is the top half of the fp32 bit pattern
        return out
    arr = np.empty(entry.shape, entry.storage)
    read_exact(f, arr, path)
    return arr.astype(entry.storage.newbyteorder("="), copy=False)  # no-op on little-endian hosts
