"""Shared helpers for the benchmark scripts: machine description, statistics, tables.

The scripts are run by hand (`python benchmarks/step.py`, ...), from any directory: importing
this module puts the repository root on sys.path so `tui_llm` is found without installing it.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Thread-pool settings as the user gave them, before tui_llm adds its defaults.
THREAD_ENV = ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")
USER_THREAD_ENV = {k: os.environ.get(k) for k in THREAD_ENV}
# The package sets its thread-pool environment on import, which must come before numpy's import
# (OpenBLAS reads it when it loads): benchmark the engine exactly as the product runs it.
import tui_llm  # noqa: F401

# ---------------------------------------------------------------------------------------
# Machine

def cpu_model() -> str:
    """The model name, with family and model numbers (a bare "AMD EPYC" names no generation:
    family 25 model 1 is Zen 3, model 17 is Zen 4)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break
    except OSError:
        pass
    if "model name" not in fields:
        return platform.processor() or platform.machine()
    return f"{fields['model name']}, family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    import numpy  # noqa: F401  (loads numpy's BLAS so threadpoolctl can see it)
    parts = [f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture', '?')}, "
             f"{i.get('threading_layer', '?')}, {i.get('num_threads')} threads)"
             for i in threadpool_info() if i.get("user_api") == "blas"]
    return "; ".join(parts) or "none found"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def numba_threading_layer() -> str:
    """The layer numba's parallel kernels actually use (known only after one has run)."""
    import numba
    import numpy as np
    try:
        return numba.threading_layer()
    except ValueError:
        pass

    @numba.njit(parallel=True)
    def touch(x):
        for i in numba.prange(x.shape[0]):
            x[i] = i

    touch(np.zeros(4))
    return numba.threading_layer()


def machine_info() -> dict[str, str]:
    import numba
    import numpy
    flags = cpu_flags()
    simd = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or "?"
    return {
        "date": datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": f"{cpu_model()} ({simd})",
        "cores": f"{available_cores()} available ({os.cpu_count()} online)",
        "blas": blas_description(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": f"{numba.__version__} (threading layer: {numba_threading_layer()})",
        "thread env": " ".join(f"{k}={os.environ[k]}" for k in THREAD_ENV if k in os.environ) or "none set",
        "load average": load_average(),
    }


def print_machine(info: dict[str, str] | None = None) -> dict[str, str]:
    info = info or machine_info()
    for key, value in info.items():
        print(f"{key:>13}: {value}")
    print()
    return info


def machine_markdown(info: dict[str, str]) -> str:
    return markdown_table(["machine", ""], [[k, v] for k, v in info.items()], numbers=False)


# ---------------------------------------------------------------------------------------
# Statistics and formatting

class Stats:
    """Median / min / max of a list of seconds."""

    def __init__(self, seconds: list[float]):
        if not seconds:
            raise ValueError("no samples")
        self.samples = list(seconds)
        self.median = statistics.median(seconds)
        self.min = min(seconds)
        self.max = max(seconds)

    def ms(self) -> str:
        """'12.3 ms (11.9-13.0)'"""
        return f"{fmt_ms(self.median)} ({fmt_ms(self.min, unit=False)}-{fmt_ms(self.max, unit=False)})"

    def spread(self) -> float:
        """(max - min) / median: how noisy the samples were."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0


def fmt_ms(seconds: float, unit: bool = True) -> str:
    ms = seconds * 1e3
    text = f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"
    return text + (" ms" if unit else "")


def fmt_count(n: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}"
    return f"{n:.0f}"


def fmt_bytes(n: float) -> str:
    for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(n) >= div:
            return f"{n / div:.2f} {suffix}"
    return f"{n:.0f} B"


class Clock:
    """with Clock() as c: ...; c.seconds"""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


# ---------------------------------------------------------------------------------------
# Tables

def text_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain aligned table: first column left-aligned, the others right-aligned."""
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def markdown_table(headers: list[str], rows: list[list[str]], numbers: bool = True) -> str:
    """First column left-aligned, the others right-aligned when they hold numbers."""
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join(["---"] + ["---:" if numbers else "---"] * (len(headers) - 1)) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def emit_markdown(text: str, target: str | None) -> None:
    """target '-' prints the markdown; a path appends it to that file; None does nothing."""
    if target is None:
        return
    if target == "-":
        print("\n" + text)
    else:
        with open(target, "a") as f:
            f.write(text.rstrip("\n") + "\n\n")
        print(f"\nmarkdown appended to {target}")


def add_markdown_arg(parser) -> None:
    parser.add_argument("--markdown", nargs="?", const="-", default=None, metavar="FILE",
                        help="also print a markdown section (or append it to FILE) for BENCHMARKS.md")


def command_line() -> str:
    """The command that ran this script, for the markdown sections."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(REPO_ROOT)
    except ValueError:
        pass
    return " ".join(["python", str(script)] + sys.argv[1:])
