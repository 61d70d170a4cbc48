"""PyTorch's CPU random init, bit for bit: `torch.Generator` (MT19937) and `Tensor.normal_`.

llm.c's train_gpt2.py `--model d12` (and d24/d36/d48) initialises GPT-2 from a dedicated
`torch.Generator` seeded 42; `llmc_random_init` reproduces those weights exactly, so our
trainer can be compared loss for loss with llm.c's C trainer started from that file.

How PyTorch draws (aten/src/ATen/native/cpu/DistributionTemplates.h, ATen/core/MT19937RNGEngine.h,
ATen/core/DistributionsHelper.h), all reproduced here:

* Engine: the reference MT19937 (init_genrand seeding of the low 32 bits of the seed, standard
  tempering). `random()` is one raw 32-bit output, `random64()` two of them, first = high word.
* `normal_` on a contiguous float32 tensor with numel >= 16 ("fill" path): first one uniform per
  element, u = (random() & 0xFFFFFF) * 2^-24, then Box-Muller in place on blocks of 16 (pairs j, j+8:
  u1 = 1 - u[j], u2 = u[j+8], r = sqrt(-2 log u1), theta = 2 pi u2, out = r cos, r sin, each
  `* std + mean`). If numel % 16 != 0 the last 16 elements are redrawn (16 more uniforms) and
  transformed again. Which log/sin/cos depends on the CPU capability torch dispatched to
  (`torch.backends.cpu.get_cpu_capability()`):
    - "AVX2": `normal_fill_16_AVX2`, Cephes polynomials from avx_mathfun.h (`log256_ps`,
      `sincos256_ps`) as compiled in the official wheels, i.e. with GCC's FMA contractions, and
      `fmadd(n, std, mean)` at the end. -> kernel="avx2"
    - "DEFAULT" and "AVX512": the scalar `normal_fill_16` with libm `logf`, `cosf`, `sinf` (glibc's,
      called here through ctypes) and theta = float(2 pi_double * u2); `r*cos*std + mean` is compiled
      as fma(r*cos, std, mean) (measured on torch 2.13's DEFAULT kernel). -> kernel="scalar"
  The two kernels round differently: for the d12 init 37% of the values differ by an ulp or two
  (max 5e-8). kernel="auto" (the default) picks the one torch picks on this CPU (torch_kernel()).
* numel < 16 (or non-contiguous): element by element, `normal_distribution<double>`: two 53-bit
  uniforms u1, u2 (from random64), r = sqrt(-2 log1p(-u2)), theta = 2 pi u1, value r cos(theta), and
  r sin(theta) is cached in the generator for the next such draw (the cache survives across calls
  and is cleared by manual_seed). Result `x * std + mean` in double, then rounded to float32.

Checked bit for bit against torch 2.13.0 (CPU wheel), both kernels (ATEN_CPU_CAPABILITY=default
forces the scalar one): single tensors of 1..17, 31..33, 100, 1000, 4099, 768x768 and 2^20 values
with several std/mean, and the whole d12 init of a replica of train_gpt2.py's GPT.__init__
(124,475,904 values) plus tiny configs whose tensors hit the < 16 and the tail paths.
tests/test_torch_init.py pins values obtained from torch.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from tui_llm.engine.models.gpt2_config import GPTConfig, init_params
from tui_llm.engine.mt19937 import mt19937, random_raw32

KERNELS = ("avx2", "scalar")
DEFAULT_KERNEL = "auto"  # whatever torch would dispatch to on this CPU (see torch_kernel())
_CHUNK = 1 << 22        # uniforms drawn per batch (a multiple of 16): bounded memory for big tensors
_U24 = np.float32(1.0 / (1 << 24))
_U53 = 1.0 / (1 << 53)


def torch_kernel(cpu_flags: set[str] | None = None, env: str | None = None) -> str:
    """The normal_ kernel torch's CPU dispatch picks here: "avx2" or "scalar".

    Mirrors ATen's DispatchStub: ATEN_CPU_CAPABILITY if set, else AVX512 when the CPU has
    avx512vl/bw/dq + fma (-> the scalar template), else AVX2 when it has avx2 + fma, else DEFAULT.
    cpu_flags: /proc/cpuinfo flags (read on Linux when None; elsewhere assumed not x86 -> "scalar").
    """
    import os
    env = os.environ.get("ATEN_CPU_CAPABILITY", "") if env is None else env
    if env.lower() == "avx2":
        return "avx2"
    if env.lower() in ("default", "avx512", "avx512_256", "zvector", "vsx", "sve256"):
        return "scalar"
    if cpu_flags is None:
        cpu_flags = set()
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("flags"):
                        cpu_flags = set(line.split(":", 1)[1].split())
                        break
        except OSError:
            pass
    if {"avx512vl", "avx512bw", "avx512dq", "fma"} <= cpu_flags:
        return "scalar"
    if {"avx2", "fma"} <= cpu_flags:
        return "avx2"
    return "scalar"


def _resolve(kernel: str) -> str:
    if kernel == "auto":
        return torch_kernel()
    if kernel not in KERNELS:
        raise ValueError(f"unknown normal_ kernel {kernel!r} (choose from auto, {', '.join(KERNELS)})")
    return kernel


class TorchGenerator:
    """A CPU `torch.Generator`: MT19937 plus the cached second Box-Muller value of `normal_`."""

    def __init__(self, seed: int = 67280421310721):  # torch.Generator()'s default seed
        self.manual_seed(seed)

    def manual_seed(self, seed: int) -> TorchGenerator:
        self._seed = int(seed)
        self._mt = mt19937(seed)  # at::mt19937(seed): init_genrand on the low 32 bits
        self._next_double_normal: float | None = None
        return self

    def initial_seed(self) -> int:
        return self._seed

    # raw draws --------------------------------------------------------------------------
    def random_raw(self, n: int) -> np.ndarray:
        """n raw 32-bit outputs (uint32), i.e. n calls of at::mt19937::operator()."""
        return random_raw32(self._mt, n)

    def random(self) -> int:
        return int(self.random_raw(1)[0])

    def random64(self) -> int:
        hi, lo = (int(v) for v in self.random_raw(2))
        return (hi << 32) | lo

    def uniform_float(self, n: int) -> np.ndarray:
        """n of uniform_real_distribution<float>(0, 1): (random() & 0xFFFFFF) * 2^-24 (exact)."""
        return (self.random_raw(n) & np.uint32(0xFFFFFF)).astype(np.float32) * _U24

    def uniform_double(self) -> float:
        return (self.random64() & ((1 << 53) - 1)) * _U53

    # normal_ ----------------------------------------------------------------------------
    def normal_(self, out: np.ndarray, mean: float = 0.0, std: float = 1.0, kernel: str = DEFAULT_KERNEL) -> np.ndarray:
        """Fill `out` (float32, C-contiguous, any shape) like `out.normal_(mean, std, generator=self)`."""
        kernel = _resolve(kernel)
        if out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError("normal_ needs a C-contiguous float32 array")
        flat = out.reshape(-1)
        n = flat.size
        if n < 16:
            self._normal_small(flat, mean, std)
            return out
        mean32, std32 = np.float32(mean), np.float32(std)
        whole = n - n % 16
        # Uniforms for every element are drawn before any transform, but a block of 16 only
        # depends on its own 16 uniforms: draw and transform chunk by chunk.
        for start in range(0, whole, _CHUNK):
            stop = min(start + _CHUNK, whole)
            _fill(flat[start:stop], self.random_raw(stop - start), mean32, std32, kernel)
        if n % 16:
            # the uniforms of the last n % 16 elements are drawn (and then overwritten) too
            self.random_raw(n % 16)
            _fill(flat[n - 16:], self.random_raw(16), mean32, std32, kernel)
        return out

    def _normal_small(self, flat: np.ndarray, mean: float, std: float) -> None:
        """normal_distribution<double>, one element at a time (glibc's double log1p/sin/cos via math)."""
        for i in range(flat.size):
            if self._next_double_normal is not None:
                x, self._next_double_normal = self._next_double_normal, None
            else:
                u1 = self.uniform_double()
                u2 = self.uniform_double()
                r = math.sqrt(-2.0 * math.log1p(-u2))
                theta = 2.0 * math.pi * u1
                self._next_double_normal = r * math.sin(theta)
                x = r * math.cos(theta)
            flat[i] = np.float32(x * std + mean)


def torch_normal(shape, mean: float = 0.0, std: float = 1.0, seed: int = 42, kernel: str = DEFAULT_KERNEL) -> np.ndarray:
    """`torch.manual_seed(seed); torch.empty(shape).normal_(mean, std)` as a numpy array."""
    out = np.empty(shape, dtype=np.float32)
    return TorchGenerator(seed).normal_(out, mean, std, kernel)


# ---------------------------------------------------------------------------------------
# The Box-Muller kernels. Every operation is float32, in the order (and with the fused
# multiply-adds) of the compiled torch code; numba must not add its own contractions, so no
# fastmath here.

@intrinsic
def _fma(typingctx, a, b, c):
    """float32 fused multiply-add a*b + c with a single rounding (llvm.fma)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic("llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32]))
        return builder.call(fn, args)

    return sig, codegen


F = np.float32
ONE, HALF, ZERO, MINUS_TWO = F(1.0), F(0.5), F(0.0), F(-2.0)
TWO_PI = F(2.0 * math.pi)             # _mm256_set1_ps(2.0f * c10::pi<double>)
MIN_NORM_POS = F(np.finfo(np.float32).tiny)
SQRTHF = F(0.707106781186547524)
LOG_P = tuple(F(v) for v in (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1,
                             1.4249322787e-1, -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1,
                             3.3333331174e-1))
LOG_P0, LOG_P1, LOG_P2, LOG_P3, LOG_P4, LOG_P5, LOG_P6, LOG_P7, LOG_P8 = LOG_P
LOG_Q1, LOG_Q2 = F(-2.12194440e-4), F(0.693359375)
FOPI = F(1.27323954473516)            # 4 / pi
MDP1, MDP2, MDP3 = F(-0.78515625), F(-2.4187564849853515625e-4), F(-3.77489497744594108e-8)
SINCOF_P0, SINCOF_P1, SINCOF_P2 = F(-1.9515295891e-4), F(8.3321608736e-3), F(-1.6666654611e-1)
COSCOF_P0, COSCOF_P1, COSCOF_P2 = F(2.443315711809948e-5), F(-1.388731625493765e-3), F(4.166664568298827e-2)


@intrinsic
def _bits(typingctx, x):
    """The bit pattern of a float32 as int32 (a register move, like _mm256_castps_si256)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@intrinsic
def _from_bits(typingctx, i):
    """The float32 whose bit pattern is the int32 i."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(inline="always", cache=True)
def _cephes_log(x):
    """avx_mathfun's log256_ps for one lane (x > 0), with the wheel's FMA contractions."""
    x = max(x, MIN_NORM_POS)
    bits = _bits(x)
    e = F((bits >> 23) - np.int32(0x7F)) + ONE
    x = _from_bits((bits & np.int32(~0x7F800000)) | np.int32(0x3F000000))  # mantissa, exponent of 0.5
    small = x < SQRTHF
    tmp = x if small else ZERO
    x = x - ONE
    e = e - (ONE if small else ZERO)
    x = x + tmp
    z = x * x
    y = _fma(LOG_P0, x, LOG_P1)
    y = _fma(y, x, LOG_P2)
    y = _fma(y, x, LOG_P3)
    y = _fma(y, x, LOG_P4)
    y = _fma(y, x, LOG_P5)
    y = _fma(y, x, LOG_P6)
    y = _fma(y, x, LOG_P7)
    y = _fma(y, x, LOG_P8)
    y = y * x
    y = _fma(y, z, e * LOG_Q1)         # y*z + e*q1: the y*z product is the fused one
    y = _fma(z, -HALF, y)              # y - z*0.5
    x = x + y
    return _fma(e, LOG_Q2, x)          # x + e*q2


@njit(inline="always", cache=True)
def _cephes_sincos(x):
    """avx_mathfun's sincos256_ps for one lane, with the wheel's FMA contractions: (sin, cos)."""
    bits = _bits(x)
    sign_sin = bits & np.int32(-0x80000000)
    x = _from_bits(bits & np.int32(0x7FFFFFFF))
    j = np.int32(x * FOPI)             # cvttps: truncation
    j = (j + np.int32(1)) & np.int32(-2)
    y = F(j)
    sign_sin = sign_sin ^ ((j & np.int32(4)) << 29)
    sign_cos = (~(j - np.int32(2)) & np.int32(4)) << 29
    cos_poly_is_cos = (j & np.int32(2)) == 0
    x = _fma(y, MDP1, x)
    x = _fma(y, MDP2, x)
    x = _fma(y, MDP3, x)
    z = x * x
    yc = _fma(COSCOF_P0, z, COSCOF_P1)
    yc = _fma(yc, z, COSCOF_P2)
    yc = yc * z
    yc = _fma(yc, z, -(z * HALF))     # yc*z - z*0.5 (fmsub)
    yc = yc + ONE
    ys = _fma(SINCOF_P0, z, SINCOF_P1)
    ys = _fma(ys, z, SINCOF_P2)
    ys = ys * z
    ys = _fma(ys, x, x)
    s = ys if cos_poly_is_cos else yc
    c = yc if cos_poly_is_cos else ys
    return _from_bits(_bits(s) ^ sign_sin), _from_bits(_bits(c) ^ sign_cos)


@njit(nogil=True, cache=True)
def _box_muller_avx2(out1, out2, raw1, raw2, mean, std):
    """normal_fill_16_AVX2 on lane pairs: raw1 = draws of lanes 0-7 of each 16-block, raw2 = lanes 8-15.

    Laid out as two contiguous streams so the loop vectorises (a branch-free 8-wide body, like the
    original): the lane-interleaved loop runs several times slower on branch mispredictions.
    """
    for i in range(out1.shape[0]):
        u1 = ONE - F(raw1[i] & np.uint32(0xFFFFFF)) * _U24  # [0, 1) -> (0, 1] for the log
        u2 = F(raw2[i] & np.uint32(0xFFFFFF)) * _U24
        radius = np.sqrt(MINUS_TWO * _cephes_log(u1))
        s, c = _cephes_sincos(TWO_PI * u2)
        out1[i] = _fma(radius * c, std, mean)
        out2[i] = _fma(radius * s, std, mean)


def _libm_functions():
    """glibc's float logf, cosf, sinf as ctypes functions (numba calls them in nopython mode)."""
    name = ctypes.util.find_library("m") or "libm.so.6"
    try:
        libm = ctypes.CDLL(name)
    except OSError:  # no separate libm (e.g. Windows): the C runtime of the process
        libm = ctypes.CDLL(None)
    fns = []
    for fname in ("logf", "cosf", "sinf"):
        fn = getattr(libm, fname)
        fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
        fns.append(fn)
    return fns


try:
    _logf, _cosf, _sinf = _libm_functions()
except (OSError, AttributeError):  # no C math library found: only the "scalar" kernel needs it
    _logf = _cosf = _sinf = None


@njit(nogil=True)  # not cached: it embeds the address of libm's functions
def _box_muller_scalar(out1, out2, raw1, raw2, mean, std):
    """normal_fill_16 (scalar template, libm float functions) on lane pairs, as _box_muller_avx2."""
    two_pi = 2.0 * math.pi
    for i in range(out1.shape[0]):
        u1 = ONE - F(raw1[i] & np.uint32(0xFFFFFF)) * _U24
        u2 = F(raw2[i] & np.uint32(0xFFFFFF)) * _U24
        radius = np.sqrt(MINUS_TWO * _logf(u1))
        theta = F(two_pi * np.float64(u2))   # 2.0f * c10::pi<double> * u2, rounded to float
        out1[i] = _fma(radius * _cosf(theta), std, mean)
        out2[i] = _fma(radius * _sinf(theta), std, mean)


def _fill(out: np.ndarray, raw: np.ndarray, mean, std, kernel: str) -> None:
    """Box-Muller over the 16-blocks of out (len(out) % 16 == 0), from one raw draw per element."""
    blocks = raw.reshape(-1, 16)
    raw1, raw2 = np.ascontiguousarray(blocks[:, :8]).reshape(-1), np.ascontiguousarray(blocks[:, 8:]).reshape(-1)
    out1, out2 = np.empty(raw1.size, np.float32), np.empty(raw2.size, np.float32)
    if kernel == "scalar" and _logf is None:
        raise RuntimeError("the scalar normal_ kernel needs the C math library (logf, cosf, sinf)")
    (_box_muller_avx2 if kernel == "avx2" else _box_muller_scalar)(out1, out2, raw1, raw2, mean, std)
    o = out.reshape(-1, 16)
    o[:, :8] = out1.reshape(-1, 8)
    o[:, 8:] = out2.reshape(-1, 8)


# ---------------------------------------------------------------------------------------

def llmc_random_init(cfg: GPTConfig, seed: int = 42, kernel: str = DEFAULT_KERNEL) -> np.ndarray:
    """The flat float32 parameters (our layout) of train_gpt2.py's random init (`--model d12` etc.).

    Bit-identical to the weights train_gpt2.py writes into gpt2_d12.bin for the same torch CPU
    kernel (see the module docstring for `kernel`); padded wte rows are 0, biases 0, LayerNorm
    weights 1. d12 (124M values) takes a few seconds.
    """
    kernel = _resolve(kernel)
    gen = TorchGenerator(seed)
    return init_params(cfg, lambda view, std: gen.normal_(view, 0.0, std, kernel))
