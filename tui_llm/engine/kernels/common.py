"""Numba kernels every model shares: everything that is not a big matrix product.

Fast exp (so softmax loops vectorise), bias, column sums, attention's causal softmax and the
sampler's cached attention, and softmax + cross-entropy over the vocabulary. Each kernel is
float32 throughout, compiled with `nogil=True` so a training thread never freezes the UI, and
`cache=True` so the compile happens once per machine. Row-parallel kernels use `prange`; the
matrix products themselves go through numpy's BLAS in the models and attention.py (which uses the
attention softmax here).

The other kernels: gpt2.py (encoder, LayerNorm, GELU), llama.py (RMSNorm, RoPE, SwiGLU),
optimizer.py (gradient norm, accumulation, AdamW); compile.py compiles a model's set up front.

Shapes use llm.c's letters: B batch, T time, C channels, NH heads, hs = C/NH, N = B*T rows,
V real vocabulary, Vp padded vocabulary.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

# error_model="numpy": a division by zero gives inf/nan, as numpy's would, instead of raising: a
# diverging run reaches the trainer's non-finite check (one clear error) instead of a ZeroDivisionError.
#
# FASTMATH is LLVM's "fast" without nsz (no signed zeros) and arcp (division as a product with the
# reciprocal). A prange loop's body is compiled as a function of its own, then optimised again inside
# the kernel numba caches: a process that compiled the kernel runs the first copy, one that loaded it
# from the cache the second. With reassoc on, nsz or arcp let the second pass rewrite the arithmetic
# (seen: layernorm_backward's dx and the cross-entropy's dlogits, one ulp), so a resumed run left
# the straight one in the last bit. Without them the copies agree: tests/test_kernel_cache.py runs
# every kernel compiled and then loaded, and compares the bits.
FASTMATH = {"reassoc", "contract", "afn", "nnan", "ninf"}
JIT = dict(nogil=True, cache=True, fastmath=FASTMATH, error_model="numpy")
PJIT = dict(nogil=True, cache=True, fastmath=FASTMATH, parallel=True, error_model="numpy")


# exp without a libm call, for the softmaxes (arguments are <= 0 there: x - max). Cephes' expf:
# x = k*ln2 + r with |r| <= ln2/2, e^r from a degree-7 polynomial, 2^k built from its exponent
# bits. Relative error about 2e-7 (checked in tests/test_kernels.py). Works on blocks so that
# both loops vectorise: pbuf gets e^r, ibuf the bits of 2^k. The block comes in as a slice that
# starts at 0: indexing src[start + j] instead compiled (inside prange loops, where LLVM cannot
# prove start + j >= 0 and keeps numba's negative-index wraparound) to gather instructions.
EXP_BLOCK = 512
LOG2E = np.float32(1.44269504088896341)


@njit(inline="always", **JIT)
def exp_block(src, shift, scale, ibuf, pbuf):
    """pbuf[j] = exp((src[j] - shift) * scale) for j < len(src) <= EXP_BLOCK."""
    count = src.shape[0]
    for j in range(count):
        x = max((src[j] - shift) * scale, np.float32(-87.0))
        k_int = np.int32(x * LOG2E - np.float32(0.5))  # round(x / ln2) for x <= 0
        k = np.float32(k_int)
        r = x - k * np.float32(0.693359375) - k * np.float32(-2.12194440e-4)
        p = np.float32(1.9875691500e-4)
        p = p * r + np.float32(1.3981999507e-3)
        p = p * r + np.float32(8.3334519073e-3)
        p = p * r + np.float32(4.1665795894e-2)
        p = p * r + np.float32(1.6666665459e-1)
        p = p * r + np.float32(5.0000001201e-1)
        pbuf[j] = p * r * r + r + np.float32(1.0)
        ibuf[j] = (k_int + np.int32(127)) << 23
    two_k = ibuf.view(np.float32)
    for j in range(count):
        pbuf[j] *= two_k[j]


MAX_LANES = 16


@njit(inline="always", **JIT)
def row_max(x, lanes):
    """max(x) of a non-empty row, in MAX_LANES running maxima (lanes: a scratch of that many
    floats) that vectorise; a plain max loop does not (LLVM vectorises a float max only with
    no-signed-zeros, which FASTMATH leaves out)."""
    n = x.shape[0]
    full = n - n % MAX_LANES
    m = np.float32(-1e30)
    if full:
        lanes[:] = x[:MAX_LANES]
        for j in range(MAX_LANES, full, MAX_LANES):
            for lane in range(MAX_LANES):
                v = x[j + lane]
                lanes[lane] = v if v > lanes[lane] else lanes[lane]
        for lane in range(MAX_LANES):
            m = max(m, lanes[lane])
    for j in range(full, n):
        m = max(m, x[j])
    return m


@njit(**PJIT)
def exp_array(out, x, shift):
    """out = exp(x - shift) through exp_block (exposed for the accuracy test)."""
    ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
    for start in range(0, x.shape[0], EXP_BLOCK):
        count = min(EXP_BLOCK, x.shape[0] - start)
        exp_block(x[start:start + count], shift, np.float32(1.0), ibuf, pbuf)
        out[start:start + count] = pbuf[:count]


# ---------------------------------------------------------------------------------------
# Bias and its gradient

@njit(**PJIT)
def add_bias(out, bias):
    # out (N, OC) += bias (OC,)
    N, OC = out.shape
    for r in prange(N):
        o = out[r]
        for c in range(OC):
            o[c] += bias[c]


@njit(**JIT)
def column_sum(out, x, accumulate):
    """out (C,) = sum over rows of x (N, C): the bias gradient (added to out when accumulate)."""
    N, C = x.shape
    if not accumulate:
        out[:] = 0.0
    for r in range(N):
        xr = x[r]
        for c in range(C):
            out[c] += xr[c]


# ---------------------------------------------------------------------------------------
# One query's attention over positions 0..num-1 (the sampler's cached attention, below).

@njit(inline="always", **JIT)
def attend(out, probs, q, keys, k0, values, v0, num, scale, ibuf, pbuf):
    """One query over positions 0..num-1: probs = softmax(q . key * scale), out = sum probs * value.

    keys/values are 2-D (position, columns); this head's vectors start at columns k0 / v0.
    """
    hs = q.shape[0]
    maxval = np.float32(-1e30)
    for t2 in range(num):
        k = keys[t2, k0:k0 + hs]
        s = np.float32(0.0)
        for i in range(hs):
            s += q[i] * k[i]
        s *= scale
        probs[t2] = s
        maxval = max(maxval, s)
    total = np.float32(0.0)
    for start in range(0, num, EXP_BLOCK):
        count = min(EXP_BLOCK, num - start)
        exp_block(probs[start:start + count], maxval, np.float32(1.0), ibuf, pbuf)
        for j in range(count):
            total += pbuf[j]
        probs[start:start + count] = pbuf[:count]
    inv = np.float32(1.0) / total
    for t2 in range(num):
        probs[t2] *= inv
    out[:] = 0.0
    for t2 in range(num):
        a = probs[t2]
        v = values[t2, v0:v0 + hs]
        for i in range(hs):
            out[i] += a * v[i]


# The softmax of training attention (attention.py does its products through BLAS, one block of
# query rows at a time) and its backward. A block holds the raw scores S = q.k of queries
# r0..r0+n-1 against keys k0..k0+m-1, (B, H, n, m); query t of batch row b attends to keys
# starts[b, t]..t (its document, up to itself: starts = 0 is plain causal attention). Every
# other entry of its row is set to 0, so the products that follow read zeros there. Serial:
# attention.py runs passes over different heads in parallel threads (nogil), one kernel call each.

@njit(**JIT)
def attention_softmax(scores, lse, starts, r0, k0, scale):
    """In place: row i of scores (query t = r0 + i) becomes P = softmax(scale * S) over keys
    starts[b, t]..t, zeros elsewhere; lse[b, h, t] = log sum exp(scale * S) over those keys
    (all the backward needs to rebuild P: P = exp(scale * S - lse))."""
    B, H, n, _ = scores.shape
    for bh in range(B * H):
        b, h = bh // H, bh % H
        ibuf, pbuf, lanes = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32), np.empty(MAX_LANES, np.float32)
        for i in range(n):
            t = r0 + i
            lo, hi = starts[b, t] - k0, t + 1 - k0          # the row's keys, as columns of the block
            row = scores[b, h, i]
            keys = row[lo:hi]  # indexed from 0 (see exp_block), so the loops vectorise
            maxval = row_max(keys, lanes)
            total = np.float32(0.0)
            for start in range(0, keys.shape[0], EXP_BLOCK):
                count = min(EXP_BLOCK, keys.shape[0] - start)
                exp_block(keys[start:start + count], maxval, scale, ibuf, pbuf)
                dst = keys[start:start + count]
                for j in range(count):  # the copy and the sum in one loop: 0.8x the time of two
                    p = pbuf[j]
                    dst[j] = p
                    total += p
            inv = np.float32(1.0) / total
            for j in range(keys.shape[0]):
                keys[j] *= inv
            row[:lo] = 0.0
            row[hi:] = 0.0
            lse[b, h, t] = maxval * scale + np.float32(math.log(total))


@njit(**JIT)
def attention_softmax_backward(scores, dscores, lse, y, dy, starts, r0, k0, scale, rebuild):
    """In place, on a block laid out as attention_softmax's: dscores (dP, the gradient of P)
    becomes that of the raw scores, dS = P * (dP - D) * scale, zeros outside the row's keys.
    rebuild: scores holds the raw S (recomputed) and becomes P = exp(scale * S - lse) first;
    otherwise scores already holds the forward's P (kept) and is only read.
    D = sum_j P dP = dY . Y (dP = dY Vᵀ, Y = P V), from the forward's output y and its gradient
    dy, (B, H, T, hd)."""
    B, H, n, _ = scores.shape
    for bh in range(B * H):
        b, h = bh // H, bh % H
        ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
        for i in range(n):
            t = r0 + i
            lo, hi = starts[b, t] - k0, t + 1 - k0
            row, d = scores[b, h, i], dscores[b, h, i]
            yr, dyr = y[b, h, t], dy[b, h, t]
            dot = np.float32(0.0)
            for c in range(yr.shape[0]):
                dot += yr[c] * dyr[c]
            keys, dkeys = row[lo:hi], d[lo:hi]
            if rebuild:
                shift = lse[b, h, t] / scale          # exp((S - lse / scale) * scale) = exp(scale * S - lse)
                for start in range(0, keys.shape[0], EXP_BLOCK):
                    count = min(EXP_BLOCK, keys.shape[0] - start)
                    s, ds = keys[start:start + count], dkeys[start:start + count]
                    exp_block(s, shift, scale, ibuf, pbuf)
                    for j in range(count):
                        p = pbuf[j]
                        s[j] = p
                        ds[j] = p * (ds[j] - dot) * scale
                row[:lo] = 0.0
                row[hi:] = 0.0
            else:
                for j in range(keys.shape[0]):
                    dkeys[j] = keys[j] * (dkeys[j] - dot) * scale
            d[:lo] = 0.0
            d[hi:] = 0.0


# ---------------------------------------------------------------------------------------
# Softmax + cross-entropy over the real vocabulary (padded columns never touched by the math)

@njit(**PJIT)
def softmax_crossentropy(logits, losses, targets, vocab_size, dloss, want_grad):
    """Per row r: losses[r] = -log softmax(logits[r, :V])[targets[r]].

    With want_grad, logits is overwritten in place by dlogits = (probs - onehot) * dloss for
    columns < V and 0 for the padded ones: two passes over the big buffer, no extra memory.
    """
    N, Vp = logits.shape
    for r in prange(N):
        ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
        losses[r] = _crossentropy_row(logits[r], targets[r], vocab_size, dloss, want_grad, ibuf, pbuf)


@njit(**PJIT)
def softmax_crossentropy_weighted(logits, losses, targets, vocab_size, row_dloss, want_grad):
    """softmax_crossentropy with a dloss of each row's own (row_dloss (N,) float32: the loss mask times
    the step's scale). A row of weight 0 is not computed at all: its loss is 0 and its dlogits 0."""
    N, Vp = logits.shape
    for r in prange(N):
        if row_dloss[r] == 0.0:
            losses[r] = 0.0
            if want_grad:
                logits[r, :] = 0.0
            continue
        ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
        losses[r] = _crossentropy_row(logits[r], targets[r], vocab_size, row_dloss[r], want_grad, ibuf, pbuf)


@njit(**JIT)
def _crossentropy_row(row, y, vocab_size, dloss, want_grad, ibuf, pbuf):
    """-log softmax(row[:V])[y]; with want_grad the row becomes its dlogits times dloss (padding 0)."""
    maxval = np.float32(-1e30)
    for i in range(vocab_size):
        maxval = max(maxval, row[i])
    target_logit = row[y]
    total = np.float32(0.0)
    for start in range(0, vocab_size, EXP_BLOCK):
        count = min(EXP_BLOCK, vocab_size - start)
        exp_block(row[start:start + count], maxval, np.float32(1.0), ibuf, pbuf)
        for j in range(count):
            total += pbuf[j]
        if want_grad:
            row[start:start + count] = pbuf[:count]
    loss = math.log(total) - (target_logit - maxval)  # from the log-sum-exp (llm.c's -log(prob), no underflow)
    if want_grad:
        scale = dloss / total
        for i in range(vocab_size):
            row[i] *= scale
        row[y] -= dloss
        row[vocab_size:] = 0.0
    return loss


@njit(**PJIT)
def softmax_rows(probs, logits, vocab_size, inv_temperature):
    """probs[r, :V] = softmax(logits[r, :V] / temperature); padded columns get 0."""
    N, Vp = logits.shape
    for r in prange(N):
        ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
        row, p = logits[r], probs[r]
        maxval = np.float32(-1e30)
        for i in range(vocab_size):
            maxval = max(maxval, row[i])
        total = np.float32(0.0)
        for start in range(0, vocab_size, EXP_BLOCK):
            count = min(EXP_BLOCK, vocab_size - start)
            exp_block(row[start:start + count], maxval, inv_temperature, ibuf, pbuf)
            for j in range(count):
                total += pbuf[j]
            p[start:start + count] = pbuf[:count]
        inv = np.float32(1.0) / total
        for i in range(vocab_size):
            p[i] *= inv
        p[vocab_size:] = 0.0


# ---------------------------------------------------------------------------------------
# Attention against a key/value cache (sampling): n new queries at positions t0..t0+n-1
# attend to cached keys/values 0..t (inclusive), so a new token costs one position's work.

@njit(**PJIT)
def attention_cached(atty, qkv, k_cache, v_cache, t0, num_heads, num_kv_heads):
    # n new rows at positions t0..t0+n-1: atty (n, H hs), qkv (n, >= H hs) with the queries first;
    # k_cache, v_cache (maxT, KV hs) already holding positions 0..t0+n-1. Query head h reads
    # key/value head h // (H / KV): GPT-2 is the case KV = H.
    n = qkv.shape[0]
    hs = k_cache.shape[1] // num_kv_heads
    group = num_heads // num_kv_heads
    scale = np.float32(1.0 / math.sqrt(hs))
    for h in prange(num_heads):
        q0, kv0 = h * hs, (h // group) * hs
        scores = np.empty(t0 + n, dtype=np.float32)
        ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
        for i in range(n):
            attend(atty[i, q0:q0 + hs], scores, qkv[i, q0:q0 + hs], k_cache, kv0, v_cache, kv0, t0 + i + 1,
                   scale, ibuf, pbuf)
