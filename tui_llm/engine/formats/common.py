"""What every format shares: the error class and moving arrays between files and memory.

Readers fill preallocated arrays straight from the file (no intermediate bytes object), writers
stream arrays from their own memory; both work in chunks of CHUNK values where a conversion
(bf16, NaN scan) needs a temporary, so memory stays bounded whatever the model size.
"""

from __future__ import annotations

import os

import numpy as np

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.models.gpt2_config import GPTConfig, num_parameters, param_ranges

# Values converted per chunk when encoding/decoding bf16 or scanning for NaN: bounds temporaries to a few MB.
CHUNK = 1 << 20


class CheckpointError(TuiLlmError):
    """A model or checkpoint file cannot be read, found or written. str() is one line: '<file>: <problem>'."""

    def __init__(self, path, problem: str):
        super().__init__(f"{path}: {problem}", path=path)
        self.problem = " ".join(str(problem).split())  # without the path


def write_array(f, arr: np.ndarray) -> None:
    """Write an array's raw little-endian bytes without copying it (unless it is strided or big-endian)."""
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    f.write(arr.reshape(-1).data.cast("B"))


def read_exact(f, arr: np.ndarray, path) -> None:
    """Fill a contiguous array straight from the file; CheckpointError if the file ends first."""
    view = arr.reshape(-1).data.cast("B")
    got = f.readinto(view)
    if got != view.nbytes:
        raise CheckpointError(path, f"truncated: wanted {view.nbytes} more bytes, got {got}")


def check_finite(path, flat: np.ndarray, cfg: GPTConfig | None = None) -> None:
    """Raise if any value is NaN or inf, naming the tensor it is in (cfg given: the parameter layout)."""
    for start in range(0, flat.size, CHUNK):
        chunk = flat[start:start + CHUNK]
        bad = np.flatnonzero(~np.isfinite(chunk))
        if bad.size:
            index = start + int(bad[0])
            where = f"flat index {index}"
            for name, _, lo, hi in param_ranges(cfg) if cfg is not None else []:
                if lo <= index < hi:
                    where = f"tensor {name} (element {index - lo})"
            raise CheckpointError(path, f"non-finite value ({chunk[bad[0]]}) in {where}; refusing NaN/inf weights")


def file_size(path) -> int:
    """Size of a regular file, or CheckpointError saying why it cannot be read."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(path, "no such file") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    if not os.path.isfile(path):
        raise CheckpointError(path, "not a regular file")
    return st.st_size


def millions(cfg: GPTConfig) -> str:
    """'124.5M' (or '12,345' below a million): the parameter count for descriptions."""
    n = num_parameters(cfg)
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"
