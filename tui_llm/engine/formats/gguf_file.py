"""The GGUF container, read with bounds: header, metadata, tensor table and tensor data.

    GGUF v2/v3, little-endian (llama.cpp's ggml/docs/gguf.md):
        magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
        n_kv x (key: string, type: u32, value)           string = u64 length + UTF-8 bytes
        n_tensors x (name: string, n_dims u32, ne[n_dims] u64, type u32, offset u64)
        padding to `general.alignment` (default 32), then the tensor data, each at its offset

`gguf`'s own GGUFReader memory-maps the file and builds numpy views from whatever counts it finds,
so a damaged count or offset surfaces as an arbitrary exception (or a huge allocation) deep inside
it. We parse the header ourselves instead: every count, length and offset is checked against the
bytes that remain in the file before anything is allocated, and every problem is one
CheckpointError. The `gguf` package supplies the type tables and the (de)quantisers only.

Tensor shapes are kept in numpy order (rows first): GGUF's ne[] is the reverse, ne[0] being the
contiguous dimension. A ggml (out, in) weight matrix is numpy (out, in), as in our flat layout.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, quants

from tui_llm.engine.formats.common import CheckpointError, file_size

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4            # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
# What we decode to float32. Anything else is named in the refusal.
READABLE_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16,
                  GGMLQuantizationType.Q8_0)
CHUNK_BYTES = 1 << 22   # tensor data converted 4 MB at a time (dequantising makes a few float32 copies)

_SCALARS = {  # value type -> struct format
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
          GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
          GGUFValueType.FLOAT32: "<f4", GGUFValueType.UINT64: "<u8", GGUFValueType.INT64: "<i8",
          GGUFValueType.FLOAT64: "<f8", GGUFValueType.BOOL: "<u1"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]        # numpy order
    type: GGMLQuantizationType
    start: int                    # absolute file offset
    nbytes: int


@dataclass
class GGUFContents:
    path: str
    version: int
    metadata: dict                # key -> int | float | bool | str | list[str] | np.ndarray
    tensors: dict[str, TensorInfo]
    size: int


def tensor_nbytes(shape: tuple[int, ...], qtype: GGMLQuantizationType) -> int:
    block, type_size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=object)) // block * type_size


class _Cursor:
    """Reads little-endian values from a memory map, refusing anything past its end."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path = buf, 0, path

    def fail(self, problem: str) -> NoReturn:
        raise CheckpointError(self.path, f"damaged GGUF: {problem}")

    def take(self, n: int, what: str) -> int:
        if n < 0 or self.pos + n > len(self.buf):
            self.fail(f"{what} at byte {self.pos} needs {n} bytes; the file ends at {len(self.buf)} (truncated?)")
        start, self.pos = self.pos, self.pos + n
        return start

    def scalar(self, fmt: str, what: str):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self, what: str) -> str:
        n = self.scalar("<Q", f"{what} length")
        start = self.take(n, what)
        try:
            return bytes(self.buf[start:start + n]).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} at byte {start} is not UTF-8")

    def value_type(self, what: str) -> GGUFValueType:
        code = self.scalar("<I", f"{what} type")
        try:
            return GGUFValueType(code)
        except ValueError:
            self.fail(f"{what} has unknown value type {code}")

    def value(self, vtype: GGUFValueType, what: str):
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype], what)
        # an array: element type, count, elements (nested arrays are not used by any model file)
        etype = self.value_type(f"{what} element")
        count = self.scalar("<Q", f"{what} count")
        if etype == GGUFValueType.ARRAY:
            self.fail(f"{what} is an array of arrays")
        if etype == GGUFValueType.STRING:  # each element is at least its 8-byte length
            if count > (len(self.buf) - self.pos) // 8:
                self.fail(f"{what} claims {count} strings, more than the rest of the file can hold (truncated?)")
            return [self.string(f"{what}[{i}]") for i in range(count)]
        item = np.dtype(_NUMPY[etype])
        start = self.take(count * item.itemsize, f"{what} ({count} values)")
        values = np.frombuffer(self.buf, dtype=item, count=count, offset=start).copy()
        return values.astype(bool) if etype == GGUFValueType.BOOL else values


def read_contents(path) -> GGUFContents:
    """Parse and check the header, metadata and tensor table of a GGUF file (no tensor data read)."""
    size = file_size(path)
    if size < 24:
        raise CheckpointError(path, f"only {size} bytes: not a GGUF file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        c = _Cursor(buf, str(path))
        if bytes(buf[:4]) != MAGIC:
            raise CheckpointError(path, "not a GGUF file (no GGUF magic)")
        c.pos = 4
        version = c.scalar("<I", "version")
        if version not in VERSIONS:
            swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
            why = "a big-endian GGUF file" if swapped in VERSIONS else f"GGUF version {version}"
            raise CheckpointError(path, f"{why} is not supported (little-endian v2/v3 only)")
        n_tensors, n_kv = c.scalar("<Q", "tensor count"), c.scalar("<Q", "metadata count")
        # the smallest key/value takes 8 + 1 + 4 + 1 bytes, the smallest tensor entry 8 + 1 + 4 + 8 + 4 + 8
        if n_kv > size // 14 or n_tensors > size // 33:
            c.fail(f"{n_kv} metadata entries and {n_tensors} tensors cannot fit in {size} bytes")
        metadata: dict = {}
        for i in range(n_kv):
            key = c.string(f"metadata key {i}")
            if key in metadata:
                c.fail(f"metadata key {key!r} appears twice")
            metadata[key] = c.value(c.value_type(f"metadata {key!r}"), f"metadata {key!r}")
        alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1):
            c.fail(f"general.alignment {alignment!r} is not a power of two")
        table = []
        for i in range(n_tensors):
            name = c.string(f"tensor name {i}")
            n_dims = c.scalar("<I", f"tensor {name!r} dimension count")
            if not 1 <= n_dims <= MAX_DIMS:
                c.fail(f"tensor {name!r} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
            ne = [c.scalar("<Q", f"tensor {name!r} size") for _ in range(n_dims)]
            code = c.scalar("<I", f"tensor {name!r} type")
            offset = c.scalar("<Q", f"tensor {name!r} offset")
            try:
                qtype = GGMLQuantizationType(code)
            except ValueError:
                c.fail(f"tensor {name!r} has unknown type {code}")
            if qtype not in GGML_QUANT_SIZES:
                c.fail(f"tensor {name!r} has type {qtype.name}, which has no size")
            block = GGML_QUANT_SIZES[qtype][0]
            if min(ne) < 1 or max(ne) > size * block or ne[0] % block:
                c.fail(f"tensor {name!r} has impossible shape {ne[::-1]} for type {qtype.name}")
            shape = tuple(ne[::-1])
            table.append((name, shape, qtype, offset, tensor_nbytes(shape, qtype)))
        data_start = -(-c.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    end_of_previous = 0
    for name, shape, qtype, offset, nbytes in sorted(table, key=lambda t: t[3]):
        if name in tensors:
            raise CheckpointError(path, f"damaged GGUF: tensor {name!r} appears twice")
        if offset % alignment or offset < end_of_previous or data_start + offset + nbytes > size:
            raise CheckpointError(path, f"damaged GGUF: tensor {name!r} ({nbytes} bytes at data offset {offset}) "
                                        f"is misaligned, overlaps another or runs past the end of the file (truncated?)")
        end_of_previous = offset + nbytes
        tensors[name] = TensorInfo(name, shape, qtype, data_start + offset, nbytes)
    return GGUFContents(str(path), version, metadata, tensors, size)


def read_tensor_into(f, path, info: TensorInfo, dest: np.ndarray) -> None:
    """Decode one tensor (F32, F16, BF16 or Q8_0) into the float32 array dest, a chunk of rows at a
    time; refuses NaN/inf."""
    if info.type not in READABLE_TYPES:
        raise CheckpointError(path, f"tensor {info.name} is {info.type.name}; only F32, F16, BF16 and Q8_0 GGUF files "
                                    f"can be loaded (convert it with llama.cpp to one of those)")
    rows = dest.reshape(-1, info.shape[-1])
    row_bytes = info.nbytes // rows.shape[0]
    step = max(1, CHUNK_BYTES // row_bytes)
    for r in range(0, rows.shape[0], step):
        n = min(step, rows.shape[0] - r)
        f.seek(info.start + r * row_bytes)
        raw = np.fromfile(f, dtype=np.uint8, count=n * row_bytes)
        if raw.size != n * row_bytes:
            raise CheckpointError(path, f"tensor {info.name}: truncated")
        values = quants.dequantize(raw.reshape(n, row_bytes), info.type).reshape(n, -1)
        if not np.isfinite(values).all():
            raise CheckpointError(path, f"tensor {info.name} has NaN or infinite values; refusing them")
        rows[r:r + n] = values


def encode_chunks(array: np.ndarray, qtype: GGMLQuantizationType):
    """The bytes of a float32 array stored as qtype, a chunk of rows at a time (rows are
    independent in every type, so the concatenation is the whole tensor's encoding)."""
    rows = array.reshape(-1, array.shape[-1]) if array.ndim > 1 else array.reshape(1, -1)
    step = max(1, (CHUNK_BYTES // 4) // rows.shape[1])
    for r in range(0, rows.shape[0], step):
        chunk = np.ascontiguousarray(rows[r:r + step], dtype=np.float32)
        yield np.ascontiguousarray(quants.quantize(chunk, qtype))
