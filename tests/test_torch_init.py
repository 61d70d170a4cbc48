"""torch.Generator / normal_ port and llm.c's train_gpt2.py random init (no torch needed here).

Every pinned value below was produced with torch 2.13.0+cpu (pip wheel), once with the default
dispatch on an AVX2 machine (kernel "avx2") and once with ATEN_CPU_CAPABILITY=default (kernel
"scalar"), by:

    g = torch.Generator(); g.manual_seed(42)
    torch.empty(5, dtype=torch.int32).random_(generator=g)          # raw & 0x7fffffff
    torch.empty(n).normal_(0.0, std, generator=g).view(torch.int32) # bit patterns below

(the "seq" case reuses one generator for sizes 5, 3, 16, 1 in that order).
"""

import math

import numpy as np
import pytest

from tui_llm.engine.models.gpt2_config import GPTConfig, ParamTensors, init_draws
from tui_llm.engine.models.torch_init import TorchGenerator, llmc_random_init, torch_kernel, torch_normal
from tui_llm.engine.mt19937 import init_genrand_key, mt19937

KERNELS = ("avx2", "scalar")


def bits(a):
    return np.asarray(a, np.float32).view(np.int32).tolist()


def test_mt19937_first_outputs_seed_42():
    g = TorchGenerator(42)
    assert g.random() == 1_608_637_542  # also llm.c's and numpy's legacy-seeded MT19937
    assert g.random_raw(2).tolist() == [3_421_126_067, 4_083_286_876]


def test_mt19937_matches_torch_random_and_numpy_stream():
    raw = TorchGenerator(42).random_raw(5)
    assert (raw & 0x7FFFFFFF).tolist() == [1608637542, 1273642419, 1935803228, 787846414, 996406378]
    # long stream (several twists, odd chunk sizes) against mt19937ar.c's genrand_int32, written out here
    g = TorchGenerator(1234)
    ours = np.concatenate([g.random_raw(n) for n in (1, 623, 1, 5000, 20011)])
    assert ours.tolist() == reference_mt19937(1234, ours.size)
    assert mt19937(2**32 + 1234).random_raw(3).tolist() == reference_mt19937(1234, 3)  # low 32 bits of the seed


def reference_mt19937(seed, n):
    """Matsumoto and Nishimura's mt19937ar.c (init_genrand + genrand_int32), in plain Python."""
    mt = [int(k) for k in init_genrand_key(seed)]
    assert mt[1] == (1812433253 * (seed ^ (seed >> 30)) + 1) & 0xFFFFFFFF
    out, i = [], 624
    for _ in range(n):
        if i == 624:
            for k in range(624):
                y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7FFFFFFF)
                mt[k] = mt[(k + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            i = 0
        y = mt[i]
        i += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        out.append(y)
    return out


def test_uniform_float_matches_torch_rand():
    u = TorchGenerator(42).uniform_float(3)
    assert [float.hex(float(x)) for x in u] == ['0x1.c3b8cc0000000p-1', '0x1.d47b660000000p-1', '0x1.880d700000000p-2']


# torch.empty(1000).normal_(0, 1): first 4 and last 4 values
N1000 = {
    "avx2": ([0x3ff6a529, 0x3fbe5f53, 0x3f669567, -0x3ff93f25], [0x3f32fae2, -0x42eb703d, -0x413d902d, -0x40a58403]),
    "scalar": ([0x3ff6a527, 0x3fbe5f54, 0x3f669567, -0x3ff93f23], [0x3f32fae2, -0x42eb706f, -0x413d902d, -0x40a58403]),
}
# torch.empty(21).normal_(0, 0.02): 16-block + redrawn overlapping last 16
N21 = {
    "avx2": [0x3d1dda57, 0x3cf3ad37, 0x3c9392d1, -0x42d38407, 0x3c5e4ddd, 0x3cb0abeb, 0x3c833402, 0x3d09ad2b,
             0x3be93762, -0x439f01e4, -0x43de5645, 0x3b9e42ed, -0x4349fd51, 0x3a5af0a4, -0x445b20ac, 0x3c8ce114,
             -0x44350479, -0x43fe5566, 0x3c83a16e, -0x43b450cd, -0x43be0365],
    "scalar": [0x3d1dda56, 0x3cf3ad38, 0x3c9392d1, -0x42d38404, 0x3c5e4ddd, 0x3cb0abeb, 0x3c833402, 0x3d09ad2b,
               0x3be9375d, -0x439f01e4, -0x43de5645, 0x3b9e42ee, -0x4349fd4e, 0x3a5af0a4, -0x445b20ac, 0x3c8ce114,
               -0x44350472, -0x43fe5566, 0x3c83a16e, -0x43b450cd, -0x43be036b],
}
# one generator, sizes 5, 3 (double path with the cached sine), 16 (first 2 values), 1
SEQ = {
    "avx2": [[0x3eac62ae, 0x3e03e69d, 0x3e7016e7, 0x3e6bdc6c, -0x4070463e], [-0x41c13328, 0x400d532c, -0x40dcac3a],
             [0x3fd23771, -0x41dc927b], [0x3fa93bb9]],
    "scalar": [[0x3eac62ae, 0x3e03e69d, 0x3e7016e7, 0x3e6bdc6c, -0x4070463e], [-0x41c13328, 0x400d532c, -0x40dcac3a],
               [0x3fd23771, -0x41dc9285], [0x3fa93bb9]],
}


@pytest.mark.parametrize("kernel", KERNELS)
def test_normal_matches_torch(kernel):
    x = torch_normal(1000, 0.0, 1.0, seed=42, kernel=kernel)
    assert bits(x[:4]) == N1000[kernel][0]
    assert bits(x[-4:]) == N1000[kernel][1]
    assert bits(torch_normal(21, 0.0, 0.02, seed=42, kernel=kernel)) == N21[kernel]


@pytest.mark.parametrize("kernel", KERNELS)
def test_normal_small_tensors_share_the_cached_sample(kernel):
    g = TorchGenerator(42)
    got = [bits(g.normal_(np.empty(n, np.float32), 0.0, 1.0, kernel)) for n in (5, 3)]
    got.append(bits(g.normal_(np.empty(16, np.float32), 0.0, 1.0, kernel)[:2]))
    got.append(bits(g.normal_(np.empty(1, np.float32), 0.0, 1.0, kernel)))
    assert got == SEQ[kernel]


def test_manual_seed_resets_everything():
    g = TorchGenerator(42)
    a = g.normal_(np.empty(3, np.float32)).copy()  # leaves a cached sine value behind
    g.manual_seed(42)
    assert np.array_equal(g.normal_(np.empty(3, np.float32)), a)


@pytest.mark.parametrize("kernel", KERNELS)
def test_normal_shape_std_and_chunking(kernel, monkeypatch):
    import tui_llm.engine.models.torch_init as ti
    whole = torch_normal((37, 48), 0.5, 0.7, seed=3, kernel=kernel)
    assert whole.shape == (37, 48)
    scaled = torch_normal((37, 48), 0.0, 1.0, seed=3, kernel=kernel)
    assert np.allclose(whole, scaled * np.float32(0.7) + np.float32(0.5), atol=1e-6)
    monkeypatch.setattr(ti, "_CHUNK", 64)  # many small chunks give the same numbers
    assert np.array_equal(torch_normal((37, 48), 0.5, 0.7, seed=3, kernel=kernel), whole)


def test_torch_kernel_dispatch():
    assert torch_kernel({"avx2", "fma"}, env="") == "avx2"
    assert torch_kernel({"avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512dq"}, env="") == "scalar"
    assert torch_kernel({"sse4_2"}, env="") == "scalar"
    assert torch_kernel({"avx2", "fma"}, env="default") == "scalar"
    assert torch_kernel(set(), env="AVX2") == "avx2"


TINY = GPTConfig(max_seq_len=7, vocab_size=101, num_layers=2, num_heads=1, channels=6)


@pytest.mark.parametrize("kernel", KERNELS)
def test_llmc_init_draw_order(kernel):
    """wte[:V] first, then wpe continuing the same generator, then per layer qkv, attproj, fc, fcproj."""
    cfg = TINY
    flat = llmc_random_init(cfg, seed=42, kernel=kernel)
    p = ParamTensors(cfg, flat)
    g = TorchGenerator(42)
    wte = g.normal_(np.empty((cfg.vocab_size, cfg.channels), np.float32), 0.0, 0.02, kernel)
    wpe = g.normal_(np.empty((cfg.max_seq_len, cfg.channels), np.float32), 0.0, 0.02, kernel)
    assert np.array_equal(p.wte[:cfg.vocab_size], wte)
    assert np.array_equal(p.wpe, wpe)  # the generator continued after wte (606 values: tail redraw too)
    assert not p.wte[cfg.vocab_size:].any()  # padded rows stay zero
    res = 0.02 / math.sqrt(2 * cfg.num_layers)
    for layer in range(cfg.num_layers):
        for name, std in (("qkvw", 0.02), ("attprojw", res), ("fcw", 0.02), ("fcprojw", res)):
            expect = g.normal_(np.empty(getattr(p, name)[layer].shape, np.float32), 0.0, std, kernel)
            assert np.array_equal(getattr(p, name)[layer], expect), (name, layer)
    for name in ("ln1w", "ln2w", "lnfw"):
        assert np.all(getattr(p, name) == 1.0)
    for name in ("ln1b", "ln2b", "lnfb", "qkvb", "attprojb", "fcb", "fcprojb"):
        assert not getattr(p, name).any()
    drawn = [view.size for view, _ in init_draws(cfg, ParamTensors(cfg))]
    assert drawn == [606, 42] + [108, 36, 144, 144] * 2


# Values of a replica of train_gpt2.py's GPT.__init__ (nn.Embedding/nn.Linear modules, init_rng =
# torch.Generator().manual_seed(42), self.apply(_init_weights), lm_head tied and skipped) in torch
# 2.13: TINY, and T3 whose wpe (15 values) and attn.c_proj weights (9) take the < 16 double path.
T3 = GPTConfig(max_seq_len=5, vocab_size=50, num_layers=2, num_heads=1, channels=3)
TORCH_TINY = {
    "avx2": {"wte0": [0x3d1dda57, 0x3cf3ad37, 0x3c9392d1], "wte100": [0x3c0d3ebf, 0x3bf16762],
             "wpe": [0x3b85dbb4, -0x45f5304e], "attproj1": [0x3c240922, -0x43f14adc], "fcproj1": [0x3baf79fd, -0x4377a6f4]},
    "scalar": {"wte0": [0x3d1dda56, 0x3cf3ad38, 0x3c9392d1], "wte100": [0x3c0d3ebf, 0x3bf16762],
               "wpe": [0x3b85dbb4, -0x45f5306c], "attproj1": [0x3c240922, -0x43f14ae1],
               "fcproj1": [0x3baf79fd, -0x4377a6f4]},
}
TORCH_T3 = {"wpe": [0x3cab2fb1, 0x3d161145, 0x3c6c1934], "attproj0": [-0x44f5cf64, 0x3c770690, 0x3b643c27],
            "attproj1": [0x3bdc960f, 0x393fb3f4]}  # same for both kernels (the double path)


@pytest.mark.parametrize("kernel", KERNELS)
def test_llmc_init_matches_torch_values(kernel):
    p = ParamTensors(TINY, llmc_random_init(TINY, kernel=kernel))
    want = TORCH_TINY[kernel]
    assert bits(p.wte[0, :3]) == want["wte0"]
    assert bits(p.wte[100, -2:]) == want["wte100"]
    assert bits(p.wpe[0, :2]) == want["wpe"]
    assert bits(p.attprojw[1].ravel()[-2:]) == want["attproj1"]
    assert bits(p.fcprojw[1].ravel()[-2:]) == want["fcproj1"]
    p = ParamTensors(T3, llmc_random_init(T3, kernel=kernel))
    assert bits(p.wpe.ravel()[:3]) == TORCH_T3["wpe"]
    assert bits(p.attprojw[0].ravel()[:3]) == TORCH_T3["attproj0"]
    assert bits(p.attprojw[1].ravel()[-2:]) == TORCH_T3["attproj1"]


def test_llmc_init_default_kernel_is_torch_dispatch(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    assert np.array_equal(llmc_random_init(TINY), llmc_random_init(TINY, kernel="scalar"))
    with pytest.raises(ValueError):
        llmc_random_init(TINY, kernel="sse")
