"""MT19937 as llm.c, PyTorch and the C reference seed it: init_genrand(seed & 0xffffffff).

numpy's np.random.MT19937 is the same generator (same twist and tempering, and random_raw()
yields the raw 32-bit outputs) but its public seeding hashes the seed through SeedSequence.
Setting its state to the init_genrand key instead gives exactly the reference stream:
seed 42 starts 1608637542, 3421126067, 4083286876 (torch.manual_seed(42), llm.c's mt19937).
Both the torch-compatible weight init and the training loader's shuffle draw from here.
"""

from __future__ import annotations

import numpy as np

MT_N = 624  # words of state


def init_genrand_key(seed: int) -> np.ndarray:
    """The 624-word state after init_genrand(seed & 0xffffffff) (mt19937ar.c, at::mt19937(seed))."""
    key = np.empty(MT_N, dtype=np.uint32)
    x = int(seed) & 0xFFFFFFFF
    key[0] = x
    for i in range(1, MT_N):
        x = (1812433253 * (x ^ (x >> 30)) + i) & 0xFFFFFFFF
        key[i] = x
    return key


def mt19937(seed: int) -> np.random.MT19937:
    """A numpy MT19937 bit generator whose random_raw() stream is the reference one for `seed`."""
    gen = np.random.MT19937()
    # pos = 624: the whole state is twisted before the first output, as after init_genrand.
    gen.state = {"bit_generator": "MT19937", "state": {"key": init_genrand_key(seed), "pos": MT_N}}
    return gen


def random_raw32(gen: np.random.MT19937, n: int) -> np.ndarray:
    """The next n raw 32-bit outputs as uint32 (numpy hands them out widened to uint64)."""
    return gen.random_raw(n).astype(np.uint32)
