"""llm.c model files (`gpt2_124M.bin`, `model_00001000.bin`): a 256 x int32 header, then the 16
parameter tensors back to back in llm.c's order (config.py's param_shapes).

Header: [0] magic 20240326, [1] version, [2] maxT, [3] V, [4] L, [5] NH, [6] C, [7] Vp.
Version 3 = fp32 with the padded vocab (what train_gpt2.c loads), 5 = bf16 padded
(train_gpt2.cu), 1 = fp32 unpadded (old llm.c, llm.rust; slot 7 is 0).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tui_llm.engine.formats.atomic import atomic_write
from tui_llm.engine.formats.common import CHUNK, CheckpointError, check_finite, file_size, read_exact, write_array
from tui_llm.engine.models.gpt2_config import GPTConfig, ParamTensors, num_parameters, param_ranges

LLMC_MAGIC = 20240326
LLMC_HEADER_INTS = 256  # 1,024 bytes
LLMC_VERSIONS = {1: "fp32, unpadded vocab", 3: "fp32", 5: "bf16"}
# Other llm.c files people may pass by mistake, to say what they are instead of "bad magic".
OTHER_LLMC_MAGICS = {
    20240327: "an llm.c debug state file",
    20240328: "an llm.c tokenizer file",
    20240520: "an llm.c token data file",
    20240801: "an llm.c (llama3) token data file",
    20240522: "an llm.c eval data file",
    20240527: "an llm.c optimizer state file (state_*.bin)",
}


def llmc_file_nbytes(cfg: GPTConfig, version: int = 3) -> int:
    """Exact size of an llm.c model file: the 1,024-byte header plus every parameter."""
    numel = num_parameters(cfg)
    if version == 1:  # unpadded: wte has only the V real rows
        numel -= (cfg.padded_vocab_size - cfg.vocab_size) * cfg.channels
    return 4 * LLMC_HEADER_INTS + numel * (2 if version == 5 else 4)


def read_llmc_header(path) -> tuple[int, GPTConfig]:
    """(version, config) of an llm.c model file, after checking the header and the file size."""
    size = file_size(path)
    if size < 4 * LLMC_HEADER_INTS:
        raise CheckpointError(path, f"truncated: {size} bytes, shorter than the 1024-byte llm.c header")
    header = np.fromfile(path, dtype="<i4", count=LLMC_HEADER_INTS)
    magic, version = int(header[0]), int(header[1])
    if magic != LLMC_MAGIC:
        what = OTHER_LLMC_MAGICS.get(magic, "not an llm.c model file")
        raise CheckpointError(path, f"bad magic {magic} (expected {LLMC_MAGIC}): {what}")
    if version not in LLMC_VERSIONS:
        raise CheckpointError(path, f"unsupported llm.c model version {version} (readable: 1, 3, 5)")
    maxT, V, L, NH, C, Vp = (int(x) for x in header[2:8])
    if version == 1:
        Vp = 0  # v1 has no padded rows on disk; GPTConfig pads to a multiple of 128
    elif Vp < V:
        raise CheckpointError(path, f"version {version} header has padded vocab {Vp} < vocab {V}")
    try:
        cfg = GPTConfig(max_seq_len=maxT, vocab_size=V, num_layers=L, num_heads=NH, channels=C, padded_vocab_size=Vp)
    except ValueError as e:  # includes "does not fit in memory": refused before any allocation
        raise CheckpointError(path, f"bad header: {e}") from None
    expected = llmc_file_nbytes(cfg, version)
    if size != expected:
        problem = "truncated" if size < expected else "has trailing bytes"
        raise CheckpointError(path, f"{problem}: {size} bytes, but the header (v{version}, L={L} C={C} "
                                    f"V={V} maxT={maxT}) implies exactly {expected}")
    return version, cfg


def read_llmc(path) -> tuple[GPTConfig, np.ndarray]:
    """Load an llm.c model file (version 1, 3 or 5) into a fresh padded fp32 flat buffer."""
    version, cfg = read_llmc_header(path)
    n, V, C = num_parameters(cfg), cfg.vocab_size, cfg.channels
    with open(path, "rb") as f:
        f.seek(4 * LLMC_HEADER_INTS)
        # Read straight into the final buffer: one copy of the weights in memory, never two.
        if version == 5:
            flat = np.empty(n, dtype=np.float32)
            bits = flat.view(np.uint32)
            chunk = np.empty(min(CHUNK, n), dtype="<u2")
            for start in range(0, n, CHUNK):
                part = chunk[:min(CHUNK, n - start)]
                read_exact(f, part, path)
                out = bits[start:start + part.size]
                out[:] = part
                out <<= 16  # a bf16 value is the top half of the fp32 bit pattern
        else:
            flat = np.empty(n, dtype="<f4")
            if version == 1:
                _, _, _, wte_end = param_ranges(cfg)[0]  # wte comes first
                read_exact(f, flat[:V * C], path)
                flat[V * C:wte_end] = 0  # padded rows are zero, as train_gpt2.py exports them
                read_exact(f, flat[wte_end:], path)
            else:
                read_exact(f, flat, path)
            flat = flat.astype(np.float32, copy=False)  # no-op on little-endian hosts
    check_finite(path, flat, cfg)
    return cfg, flat


def fp32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 as PyTorch does (nearest, ties to even); return the uint16 patterns."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    # Adding 0x7FFF, plus 1 when the lowest kept bit is odd, then dropping the low 16 bits rounds to
    # nearest with ties to even; overflow past the largest bf16 correctly becomes inf.
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    out = (rounded >> 16).astype(np.uint16)
    out[np.isnan(x)] = 0x7FC0  # NaN must stay NaN (the addition could carry it into inf or flip the sign)
    return out


def write_llmc(path, cfg: GPTConfig, flat: np.ndarray, version: int = 3) -> None:
    """Write an llm.c model file: 3 = fp32 padded (train_gpt2.c), 5 = bf16 padded, 1 = fp32 unpadded.

    Refuses NaN/inf weights (and, for bf16, values that overflow to inf); OSErrors (unwritable
    place, full disk) become a one-line CheckpointError, and the previous file stays as it was.
    """
    if version not in LLMC_VERSIONS:
        raise ValueError(f"llm.c model version must be 1, 3 or 5, got {version}")
    p = ParamTensors(cfg, flat)  # validates dtype, size and contiguity
    check_finite(path, flat, cfg)
    header = np.zeros(LLMC_HEADER_INTS, dtype="<i4")
    header[:7] = [LLMC_MAGIC, version, cfg.max_seq_len, cfg.vocab_size, cfg.num_layers,
                  cfg.num_heads, cfg.channels]
    header[7] = 0 if version == 1 else cfg.padded_vocab_size  # exactly what llm.c writes
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            write_array(f, header)
            if version == 3:
                write_array(f, flat)
            elif version == 1:
                write_array(f, p.wte[:cfg.vocab_size])                 # only the V real rows of wte
                write_array(f, flat[p.offsets["wte"][1]:])
            else:
                for start in range(0, flat.size, CHUNK):
                    bits = fp32_to_bf16_bits(flat[start:start + CHUNK])
                    if np.any((bits & 0x7F80) == 0x7F80):
                        raise CheckpointError(path, "a weight overflows bfloat16 (becomes inf); refusing to write it")
                    write_array(f, bits)
    except OSError as e:
        raise CheckpointError(path, f"cannot write: {e.strerror or e}") from None
