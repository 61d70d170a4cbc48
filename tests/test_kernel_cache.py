"""A kernel compiled in this process and the same kernel loaded from numba's cache give the same bits.

numba compiles a prange loop's body as a function of its own and optimises it again inside the
kernel it caches; with some fast-math flags the two copies round differently, and a resumed run
(kernels from the cache) would leave the uninterrupted one (kernels compiled) in the last bit.
kernels/common.py's FASTMATH leaves those flags out; this test holds it to that for every kernel
a training step, a LoRA step and a sample run (tests/kernel_battery.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.run_helpers import run

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def battery(cache_dir: Path) -> dict[str, str]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
    done = run([sys.executable, "-m", "tests.kernel_battery"], env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_compiled_and_cached_kernels_give_the_same_bits(tmp_path):
    compiled = battery(tmp_path)          # an empty cache: every kernel is compiled (and saved)
    assert any(tmp_path.rglob("*.nbc")), "numba saved nothing in NUMBA_CACHE_DIR"
    loaded = battery(tmp_path)            # the same kernels, loaded from the cache
    assert len(compiled) >= 30
    different = {case: (compiled[case], loaded[case]) for case in compiled if compiled[case] != loaded[case]}
    assert not different, different
