"""c = a @ b (or c += a @ b) in bfloat16 products with float32 sums, on CPUs with AVX512_BF16.

`vdpbf16ps` multiplies bf16 pairs and adds both products into float32 lanes: for each of its 16
lanes, acc[i] += a[2i] * b[2i] + a[2i+1] * b[2i+1]. It does twice the multiply-adds of an fp32
FMA of the same width, so a product whose inputs are rounded to bf16 can run at up to twice the
fp32 rate. None of the BLAS libraries numpy can load use it, so this is a small GEMM of our own,
in the classic GotoBLAS/BLIS shape:

    for each NC-column block of b:                 (split between the threads, or rows of a are)
        for each KC-deep slice of k:
            pack b's (KC, NC) block                -> micro-panels of NR columns
            for each MC-row block of a:
                pack a's (MC, KC) block            -> micro-panels of MR rows
                for each micro-panel pair: the micro-kernel, a (MR, NR) tile of c in registers

Packing is where the inputs are rounded, float32 -> bf16 (nearest, ties to even; NaN stays NaN),
and where the transposes happen: a and b may each be a row-major matrix or a transposed view of
one (x @ W.T, dy @ W, dy.T @ x read their operands in place, no transposed copies). Each 32-bit
word of a packed panel holds two bf16 of consecutive k (k even in the low half), as vdpbf16ps
reads them: b's panel is NR such words per k pair (NR/16 zmm loads), a's is MR words per k pair,
each broadcast to all 16 lanes. Edges (sizes not multiples of the blocking) are zero-padded in
the panels and the micro-kernel writes such a tile to a scratch tile first.

The micro-kernel is LLVM IR built with llvmlite (a numba @intrinsic): MR * NR/16 accumulators
<16 x float> as loop phis, which LLVM keeps in zmm registers, the k-pair loop inside.

Shapes in comments: a (M, K), b (K, N), c (M, N).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from tui_llm.engine.kernels.common import JIT

MR, NR = 12, 32              # register tile: MR rows x NR columns of c, MR * NR/16 zmm accumulators
KC, MC, NC = 768, 96, 3072  # cache blocks: k slice (KC/2 bf16 pairs), rows of a, columns of b
NV = NR // 16                # zmm vectors per row of the tile


class _BFloat(ir.types.Type):
    """LLVM's bfloat type (llvmlite.ir has none): the intrinsic takes <32 x bfloat> operands."""

    def _to_string(self) -> str:
        return "bfloat"

    def __eq__(self, other) -> bool:
        return isinstance(other, _BFloat)

    def __hash__(self) -> int:
        return hash("bfloat")


def _micro_kernel_ir(context, builder, args, a_type, c_type):
    """Emit: tile c[ci:ci+MR, cj:cj+NR] (+)= apanel (kp, MR) pairs x bpanel (kp, NR) pairs."""
    apack, a_off, bpack, b_off, kp, c, ci, cj, accumulate = args
    i32, i64 = ir.IntType(32), ir.IntType(64)
    f32x16 = ir.VectorType(ir.FloatType(), 16)
    i32x16 = ir.VectorType(i32, 16)
    bf16x32 = ir.VectorType(_BFloat(), 32)
    dpbf16 = builder.module.declare_intrinsic("llvm.x86.avx512bf16.dpbf16ps.512",
                                              fnty=ir.FunctionType(f32x16, [f32x16, bf16x32, bf16x32]))

    a_words = builder.bitcast(context.make_array(a_type)(context, builder, apack).data, i32.as_pointer())
    b_words = builder.bitcast(context.make_array(a_type)(context, builder, bpack).data, i32.as_pointer())
    a0 = builder.gep(a_words, [a_off])
    b0 = builder.gep(b_words, [b_off])
    c_arr = context.make_array(c_type)(context, builder, c)
    row_stride = builder.sdiv(cgutils.unpack_tuple(builder, c_arr.strides, 2)[0], i64(4))  # elements
    c_floats = builder.bitcast(c_arr.data, ir.FloatType().as_pointer())
    c0 = builder.gep(c_floats, [builder.add(builder.mul(ci, row_stride), cj)])

    entry = builder.block
    loop = builder.append_basic_block("bf16_k_loop")
    done = builder.append_basic_block("bf16_k_done")
    builder.branch(loop)

    builder.position_at_end(loop)
    p = builder.phi(i64)
    p.add_incoming(i64(0), entry)
    zero = ir.Constant(f32x16, None)
    accs = []
    for _ in range(MR * NV):
        phi = builder.phi(f32x16)
        phi.add_incoming(zero, entry)
        accs.append(phi)
    a_row = builder.gep(a0, [builder.mul(p, i64(MR))])
    b_row = builder.gep(b0, [builder.mul(p, i64(NR))])
    b_vecs = [builder.load(builder.bitcast(builder.gep(b_row, [i64(16 * v)]), bf16x32.as_pointer()), align=4)
              for v in range(NV)]
    new_accs = []
    undef16 = ir.Constant(i32x16, ir.Undefined)
    splat_mask = ir.Constant(i32x16, [0] * 16)
    for r in range(MR):
        word = builder.load(builder.gep(a_row, [i64(r)]), align=4)
        splat = builder.shuffle_vector(builder.insert_element(undef16, word, i32(0)), undef16, splat_mask)
        a_vec = builder.bitcast(splat, bf16x32)
        for v in range(NV):
            new_accs.append(builder.call(dpbf16, [accs[r * NV + v], a_vec, b_vecs[v]]))
    p_next = builder.add(p, i64(1))
    p.add_incoming(p_next, loop)
    for phi, new in zip(accs, new_accs):
        phi.add_incoming(new, loop)
    builder.cbranch(builder.icmp_signed("<", p_next, kp), loop, done)

    builder.position_at_end(done)
    add_old = builder.icmp_unsigned("!=", accumulate, ir.Constant(accumulate.type, 0))
    for r in range(MR):
        row = builder.gep(c0, [builder.mul(i64(r), row_stride)])
        for v in range(NV):
            ptr = builder.bitcast(builder.gep(row, [i64(16 * v)]), f32x16.as_pointer())
            acc = new_accs[r * NV + v]
            with builder.if_else(add_old) as (then, otherwise):
                with then:
                    builder.store(builder.fadd(acc, builder.load(ptr, align=4)), ptr, align=4)
                with otherwise:
                    builder.store(acc, ptr, align=4)


@intrinsic
def _micro_kernel(typingctx, apack, a_off, bpack, b_off, kp, c, ci, cj, accumulate):
    """c[ci:ci+MR, cj:cj+NR] = (or +=, when accumulate) the product of the packed micro-panels at
    apack[a_off:] ((kp, MR) words) and bpack[b_off:] ((kp, NR) words); kp >= 1."""
    sig = types.void(apack, types.int64, bpack, types.int64, types.int64, c, types.int64, types.int64,
                     accumulate)

    def codegen(context, builder, signature, args):
        args = list(args)
        for i in (1, 3, 4, 6, 7):  # integer arguments as i64
            args[i] = context.cast(builder, args[i], signature.args[i], types.int64)
        _micro_kernel_ir(context, builder, args, signature.args[0], signature.args[5])
        return context.get_dummy_value()

    return sig, codegen


# -- rounding and packing ---------------------------------------------------------------------------

@njit(inline="always", **JIT)
def _bf16(word):
    """The bf16 bits (in a uint32) nearest the float32 with bits `word`, ties to even; NaN stays a (quiet) NaN."""
    rounded = (word + np.uint32(0x7FFF) + ((word >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    nan = (word & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return ((word >> np.uint32(16)) | np.uint32(0x40)) if nan else rounded


@njit(inline="always", **JIT)
def _pair(lo, hi):
    """One packed word: bf16(lo) in the low half, bf16(hi) in the high half (lo, hi: float32 bits)."""
    return _bf16(lo) | (_bf16(hi) << np.uint32(16))


@njit(**JIT)
def round_to_bf16(bits, x):
    """bits (n,) uint16 = x (n,) float32 rounded to bf16 as the packing rounds it (for tests)."""
    words = x.view(np.uint32)
    for i in range(x.shape[0]):
        bits[i] = np.uint16(_bf16(words[i]))


def _packer(width: int):
    """The packing of one operand into micro-panels of `width` indices (MR rows of a, NR columns
    of b), compiled with the width as a constant (a width passed at run time cost 3-5%)."""

    @njit(**JIT)
    def pack_panels(pack, src, k_major, k0, kc, i0, n):
        """pack = k k0:k0+kc, indices i0:i0+n of the operand, as micro-panels: panel q, pair p,
        index r at word (q * kp + p) * width + r. The operand's [i, k] is src[k, i] when k_major,
        else src[i, k]; a panel's missing indices are zeros."""
        words = src.view(np.uint32)
        kp = (kc + 1) // 2
        full = kc // 2
        panels = (n + width - 1) // width
        if n % width:
            pack[(panels - 1) * kp * width:panels * kp * width] = 0
        if not k_major:  # each line of src is one index over k
            for q in range(panels):
                panel = pack[q * kp * width:(q + 1) * kp * width]
                for r in range(min(width, n - q * width)):
                    line = words[i0 + q * width + r, k0:k0 + kc]
                    for p in range(full):
                        panel[p * width + r] = _pair(line[2 * p], line[2 * p + 1])
                    if kc % 2:
                        panel[full * width + r] = _bf16(line[kc - 1])
            return
        for p in range(kp):  # two whole lines of src (two k) at a time, read in order
            lo = words[k0 + 2 * p, i0:i0 + n]
            hi = words[k0 + 2 * p + 1, i0:i0 + n] if 2 * p + 1 < kc else lo
            for q in range(panels):
                count = min(width, n - q * width)
                out = pack[(q * kp + p) * width:(q * kp + p) * width + count]
                lo_q, hi_q = lo[q * width:q * width + count], hi[q * width:q * width + count]
                if 2 * p + 1 < kc:
                    for r in range(count):
                        out[r] = _pair(lo_q[r], hi_q[r])
                else:
                    for r in range(count):
                        out[r] = _bf16(lo_q[r])

    return pack_panels


_pack_a, _pack_b = _packer(MR), _packer(NR)


# -- the blocked product --------------------------------------------------------------------------

@njit(**JIT)
def _aligned_words(n):
    """An uninitialised (n,) uint32 buffer starting on a 64-byte boundary: a zmm load from it never
    straddles two cache lines (numba's large allocations are only 32-byte aligned)."""
    raw = np.empty(n + 16, np.uint32)
    start = ((64 - raw.ctypes.data % 64) % 64) // 4
    return raw[start:start + n]


@njit(**JIT)
def _gemm_part(c, a_src, a_trans, b_src, b_trans, K, accumulate, i_lo, i_hi, j_lo, j_hi):
    """c[i_lo:i_hi, j_lo:j_hi] (+)= a[i_lo:i_hi, :] @ b[:, j_lo:j_hi], one thread."""
    apack = _aligned_words(((MC + MR - 1) // MR) * MR * (KC // 2))
    bpack = _aligned_words(((NC + NR - 1) // NR) * NR * (KC // 2))
    tile = np.empty((MR, NR), np.float32)
    for jc in range(j_lo, j_hi, NC):
        nc = min(NC, j_hi - jc)
        for pc in range(0, K, KC):
            kc = min(KC, K - pc)
            kp = (kc + 1) // 2
            add = accumulate or pc > 0
            _pack_b(bpack, b_src, not b_trans, pc, kc, jc, nc)   # b[k, j] = b_src[k, j] unless trans
            for ic in range(i_lo, i_hi, MC):
                mc = min(MC, i_hi - ic)
                _pack_a(apack, a_src, a_trans, pc, kc, ic, mc)   # a[i, k] = a_src[i, k] unless trans
                for j_tile in range(0, nc, NR):
                    cols = min(NR, nc - j_tile)
                    b_off = (j_tile // NR) * kp * NR
                    for i_tile in range(0, mc, MR):
                        rows = min(MR, mc - i_tile)
                        a_off = (i_tile // MR) * kp * MR
                        if rows == MR and cols == NR:
                            _micro_kernel(apack, a_off, bpack, b_off, kp, c, ic + i_tile, jc + j_tile, add)
                        else:
                            _micro_kernel(apack, a_off, bpack, b_off, kp, tile, 0, 0, False)
                            for r in range(rows):
                                out = c[ic + i_tile + r, jc + j_tile:jc + j_tile + cols]
                                if add:
                                    for j in range(cols):
                                        out[j] += tile[r, j]
                                else:
                                    for j in range(cols):
                                        out[j] = tile[r, j]


@njit(nogil=True, cache=True, parallel=True, error_model="numpy")
def _gemm(c, a_src, a_trans, b_src, b_trans, K, accumulate, parts):
    """c (M, N) (+)= a @ b over the threads: each takes a band of columns (of rows when a has more
    rows than b has columns, so the smaller operand is the one each thread packs in full)."""
    M, N = c.shape
    split_columns = M <= N
    unit = NR if split_columns else MR
    extent = N if split_columns else M
    units = (extent + unit - 1) // unit
    parts = max(1, min(parts, units))
    for t in prange(parts):
        lo = min(extent, (units * t // parts) * unit)
        hi = min(extent, (units * (t + 1) // parts) * unit)
        if hi > lo:
            if split_columns:
                _gemm_part(c, a_src, a_trans, b_src, b_trans, K, accumulate, 0, M, lo, hi)
            else:
                _gemm_part(c, a_src, a_trans, b_src, b_trans, K, accumulate, lo, hi, 0, N)


def _source(x: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """(the row-major matrix x is, transposed or not) of a float32 matrix x."""
    if x.dtype != np.float32 or x.ndim != 2:
        raise TypeError(f"bf16_matmul: {name} must be a 2-D float32 matrix, got {x.dtype} {x.shape}")
    if x.strides[1] == 4 and x.strides[0] % 4 == 0:
        return x, False
    if x.strides[0] == 4 and x.strides[1] % 4 == 0:
        return x.T, True
    raise ValueError(f"bf16_matmul: {name} with strides {x.strides} is neither row-major nor a transposed view of one")


def bf16_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, accumulate: bool = False) -> np.ndarray:
    """out (M, N) = a (M, K) @ b (K, N) with both inputs rounded to bf16 and float32 sums, or
    out += it when accumulate. a and b: float32, each row-major or a transposed view of a row-major
    matrix; out: float32 with rows of unit stride. Needs a CPU with avx512_bf16 (see cpu_has_bf16)."""
    (M, K), (K2, N) = a.shape, b.shape
    if K2 != K:
        raise ValueError(f"bf16_matmul: shapes {a.shape} @ {b.shape} do not match")
    if out is None:
        if accumulate:
            raise ValueError("bf16_matmul: accumulate needs out")
        out = np.empty((M, N), np.float32)
    if out.shape != (M, N) or out.dtype != np.float32 or (N > 1 and out.strides[1] != 4) or out.strides[0] % 4:
        raise ValueError(f"bf16_matmul: out must be a float32 ({M}, {N}) matrix with unit-stride rows")
    if M == 0 or N == 0:
        return out
    if K == 0:
        if not accumulate:
            out[...] = 0
        return out
    a_src, a_trans = _source(a, "a")
    b_src, b_trans = _source(b, "b")
    _gemm(out, a_src, a_trans, b_src, b_trans, K, accumulate, get_num_threads())
    return out


def cpu_has_bf16() -> bool:
    """Whether this CPU has AVX512_BF16 (vdpbf16ps), from /proc/cpuinfo's flags (False where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "avx512_bf16" in line.split()
    except OSError:
        return False
    return False
