"""Numba kernels for GPT-2: everything that is not a big matrix product.

Each kernel mirrors one function of llm.c's train_gpt2.c (same math, float32 throughout) and
is compiled with `nogil=True` so a training thread never freezes the UI, and `cache=True` so
the compile happens once per machine. Row-parallel kernels use `prange`; the matrix products
themselves go through numpy's BLAS in model.py and attention.py (which uses the causal softmax here).

Shapes use llm.c's letters: B batch, T time, C channels, NH heads, hs = C/NH, N = B*T rows,
V real vocabulary, Vp padded vocabulary.

(Over 400 lines on purpose: one kernel per llm.c function, read side by side with train_gpt2.c;
the helpers the Llama kernels share — exp, attend, the causal softmax, cached attention — live here.)
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

JIT = dict(nogil=True, cache=True, fastmath=True)
PJIT = dict(nogil=True, cache=True, fastmath=True, parallel=True)

GELU_SCALE = np.float32(math.sqrt(2.0 / math.pi))
GELU_CUBE = np.float32(0.044715)


# ---------------------------------------------------------------------------------------
# tanh without a libm call, so the GELU loops vectorise. A [13/6] rational approximation of
# tanh on [-7.9, 7.9] (the form Eigen uses for float); beyond that tanh is +-1 in float32.
# Max error against float64 tanh is about 1 ulp (checked in tests/test_kernels.py).

TANH_CLAMP = np.float32(7.90531110763549805)


@njit(inline="always", **JIT)
def fast_tanh(x):
    x = min(max(x, -TANH_CLAMP), TANH_CLAMP)
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    p = p * x
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return p / q


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


@njit(**PJIT)
def exp_array(out, x, shift):
    """out = exp(x - shift) through exp_block (exposed for the accuracy test)."""
    ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
    for start in range(0, x.shape[0], EXP_BLOCK):
        count = min(EXP_BLOCK, x.shape[0] - start)
        exp_block(x[start:start + count], shift, np.float32(1.0), ibuf, pbuf)
        out[start:start + count] = pbuf[:count]


@njit(**PJIT)
def tanh_array(out, x):
    """Elementwise fast_tanh (exposed for the accuracy test)."""
    for i in prange(x.shape[0]):
        out[i] = fast_tanh(x[i])


# ---------------------------------------------------------------------------------------
# Encoder: x[b, t] = wte[token] + wpe[t]

@njit(**PJIT)
def encoder_forward(out, tokens, wte, wpe):
    # out (B, T, C), tokens (B, T) int32, wte (Vp, C), wpe (maxT, C)
    B, T, C = out.shape
    for bt in prange(B * T):
        b, t = bt // T, bt % T
        tok = tokens[b, t]
        for c in range(C):
            out[b, t, c] = wte[tok, c] + wpe[t, c]


@njit(**JIT)
def encoder_backward(dwte, dwpe, dout, tokens):
    """Accumulate (+=) into dwte rows and dwpe rows. Serial: tokens repeat, rows would race."""
    B, T, C = dout.shape
    for b in range(B):
        for t in range(T):
            tok = tokens[b, t]
            for c in range(C):
                d = dout[b, t, c]
                dwte[tok, c] += d
                dwpe[t, c] += d


# ---------------------------------------------------------------------------------------
# LayerNorm over the last axis, eps 1e-5, biased variance; caches mean and 1/std.

@njit(**PJIT)
def layernorm_forward(out, mean, rstd, x, weight, bias):
    # out, x (N, C); mean, rstd (N,); weight, bias (C,)
    N, C = x.shape
    eps = np.float32(1e-5)
    for r in prange(N):
        row = x[r]
        m = np.float32(0.0)
        for c in range(C):
            m += row[c]
        m = m / C
        var = np.float32(0.0)
        for c in range(C):
            d = row[c] - m
            var += d * d
        var = var / C
        s = np.float32(1.0) / np.sqrt(var + eps)
        o = out[r]
        for c in range(C):
            o[c] = (row[c] - m) * s * weight[c] + bias[c]
        mean[r] = m
        rstd[r] = s


@njit(**PJIT)
def layernorm_backward(dx, dweight, dbias, dout, x, mean, rstd, weight, accumulate):
    """dx += d(out)/dx . dout (rows in parallel); dweight, dbias are overwritten (accumulate=False)
    or added to (True: the next micro-batch of an accumulated step)."""
    N, C = x.shape
    for r in prange(N):
        m, s = mean[r], rstd[r]
        row, drow, dxr = x[r], dout[r], dx[r]
        # g = weight * dout; dx = s * (g - mean(g) - n * mean(g * n)), n = normalised x
        g_mean = np.float32(0.0)
        gn_mean = np.float32(0.0)
        for c in range(C):
            n = (row[c] - m) * s
            g = weight[c] * drow[c]
            g_mean += g
            gn_mean += g * n
        g_mean = g_mean / C
        gn_mean = gn_mean / C
        for c in range(C):
            n = (row[c] - m) * s
            g = weight[c] * drow[c]
            dxr[c] += s * (g - g_mean - n * gn_mean)
    # parameter gradients: column sums over rows (serial over rows, vectorised over C)
    if not accumulate:
        dweight[:] = 0.0
        dbias[:] = 0.0
    for r in range(N):
        m, s = mean[r], rstd[r]
        for c in range(C):
            d = dout[r, c]
            dweight[c] += (x[r, c] - m) * s * d
            dbias[c] += d


# ---------------------------------------------------------------------------------------
# Bias, residual, GELU (the matmul's bias is fused into the kernel that follows it)

@njit(**PJIT)
def add_bias(out, bias):
    # out (N, OC) += bias (OC,)
    N, OC = out.shape
    for r in prange(N):
        o = out[r]
        for c in range(OC):
            o[c] += bias[c]


@njit(**PJIT)
def residual_bias_forward(out, residual, proj, bias):
    """out = residual + proj + bias (the projection's bias fused in). All (N, C)."""
    N, C = out.shape
    for r in prange(N):
        o, a, p = out[r], residual[r], proj[r]
        for c in range(C):
            o[c] = a[c] + p[c] + bias[c]


@njit(**PJIT)
def bias_gelu_forward(out, x, bias):
    """x += bias (kept: the backward needs the pre-activation), out = gelu(x), tanh form."""
    N, C = x.shape
    for r in prange(N):
        xr, o = x[r], out[r]
        for c in range(C):
            v = xr[c] + bias[c]
            xr[c] = v
            u = GELU_SCALE * (v + GELU_CUBE * v * v * v)
            o[c] = np.float32(0.5) * v * (np.float32(1.0) + fast_tanh(u))


@njit(**PJIT)
def gelu_backward_inplace(dx, x):
    """dx (holding d gelu(x)) is turned into dx in place."""
    N, C = x.shape
    for r in prange(N):
        xr, d = x[r], dx[r]
        for c in range(C):
            v = xr[c]
            u = GELU_SCALE * (v + GELU_CUBE * v * v * v)
            th = fast_tanh(u)
            # 1 - tanh^2, exactly 0 where fast_tanh saturates (as 1/cosh^2 underflows in llm.c)
            sech2 = np.float32(1.0) - th * th if abs(u) < TANH_CLAMP else np.float32(0.0)
            grad = np.float32(0.5) * (np.float32(1.0) + th) + \
                v * np.float32(0.5) * sech2 * GELU_SCALE * (np.float32(1.0) + np.float32(3.0) * GELU_CUBE * v * v)
            d[c] = d[c] * grad


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


# The causal softmax of training attention (attention.py does its products through BLAS) and its
# backward, one (head, row) per parallel task. Rows are (head, query position t) of a (BH, T, T)
# block: positions 0..t take part, the rest is set to zero so the products that follow ignore it.

@njit(**PJIT)
def causal_softmax(scores, scale):
    """In place over (BH, T, T): row t becomes softmax(scores[t, :t+1] * scale), then zeros."""
    BH, T, _ = scores.shape
    for i in prange(BH * T):
        row, t = scores[i // T, i % T], i % T
        ibuf, pbuf = np.empty(EXP_BLOCK, np.int32), np.empty(EXP_BLOCK, np.float32)
        maxval = np.float32(-1e30)
        for j in range(t + 1):
            maxval = max(maxval, row[j])
        total = np.float32(0.0)
        for start in range(0, t + 1, EXP_BLOCK):
            count = min(EXP_BLOCK, t + 1 - start)
            exp_block(row[start:start + count], maxval, scale, ibuf, pbuf)
            for j in range(count):
                total += pbuf[j]
            row[start:start + count] = pbuf[:count]
        inv = np.float32(1.0) / total
        for j in range(t + 1):
            row[j] *= inv
        row[t + 1:] = 0.0


@njit(**PJIT)
def causal_softmax_backward(dscores, probs, scale):
    """In place over (BH, T, T): dP (the gradient of the probabilities) becomes that of the
    unscaled scores, dS = P * (dP - sum(P * dP)) * scale, on row t's positions 0..t; zeros beyond."""
    BH, T, _ = dscores.shape
    for i in prange(BH * T):
        d, p, t = dscores[i // T, i % T], probs[i // T, i % T], i % T
        dot = np.float32(0.0)
        for j in range(t + 1):
            dot += p[j] * d[j]
        for j in range(t + 1):
            d[j] = p[j] * (d[j] - dot) * scale
        d[t + 1:] = 0.0


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
        row = logits[r]
        maxval = np.float32(-1e30)
        for i in range(vocab_size):
            maxval = max(maxval, row[i])
        y = targets[r]
        target_logit = row[y]
        total = np.float32(0.0)
        for start in range(0, vocab_size, EXP_BLOCK):
            count = min(EXP_BLOCK, vocab_size - start)
            exp_block(row[start:start + count], maxval, np.float32(1.0), ibuf, pbuf)
            for j in range(count):
                total += pbuf[j]
            if want_grad:
                row[start:start + count] = pbuf[:count]
        # loss from the log-sum-exp (llm.c's -log(prob), without underflow)
        losses[r] = math.log(total) - (target_logit - maxval)
        if want_grad:
            scale = dloss / total
            for i in range(vocab_size):
                row[i] *= scale
            row[y] -= dloss
            row[vocab_size:] = 0.0


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
# Optimizer: gradient norm and one fused AdamW pass over the flat buffers.

CHUNK = 1 << 16


@njit(nogil=True, cache=True, parallel=True, fastmath={"reassoc", "contract"})
def sum_of_squares(x):
    """sum(x**2) in float64, chunked; reassociation lets the sum vectorise (NaN/inf still propagate).

    Each chunk is a slice indexed from 0 (see exp_block: x[ci * CHUNK + i] compiled to gathers,
    3x slower: 62 against 19 ms for GPT-2 124M's gradients on an AVX-512 machine).
    """
    n = x.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros(nchunks, dtype=np.float64)
    for ci in prange(nchunks):
        chunk = x[ci * CHUNK:min(ci * CHUNK + CHUNK, n)]
        s = 0.0
        for i in range(chunk.shape[0]):
            xi = np.float64(chunk[i])
            s += xi * xi
        partial[ci] = s
    return partial.sum()


@njit(**PJIT)
def accumulate(acc, x):
    """acc += x over flat float32 buffers (gradient accumulation across micro-batches)."""
    n = acc.shape[0]
    nchunks = (n + CHUNK - 1) // CHUNK
    for ci in prange(nchunks):
        a = acc[ci * CHUNK:min(ci * CHUNK + CHUNK, n)]
        b = x[ci * CHUNK:min(ci * CHUNK + CHUNK, n)]
        for i in range(a.shape[0]):
            a[i] += b[i]


@njit(inline="always", **JIT)
def adamw_segment(p, g, m, v, lr, beta1, beta2, eps, wd, inv_b1c, inv_b2c, grad_scale):
    one = np.float32(1.0)
    for j in range(p.shape[0]):
        gj = g[j] * grad_scale
        mj = beta1 * m[j] + (one - beta1) * gj
        vj = beta2 * v[j] + (one - beta2) * gj * gj
        m[j] = mj
        v[j] = vj
        p[j] -= lr * ((mj * inv_b1c) / (np.sqrt(vj * inv_b2c) + eps) + wd * p[j])


@njit(**PJIT)
def adamw_update(params, grads, m, v, decay_starts, decay_ends, lr, beta1, beta2, eps,
                 weight_decay, step, grad_scale):
    """llm.c's AdamW, bias-corrected, decoupled decay; t = step (1-based).

    p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p) where wd applies only inside the
    [start, end) ranges given (the matrix tensors). grad_scale folds in gradient clipping.
    """
    n = params.shape[0]
    inv_b1c = np.float32(1.0 / (1.0 - beta1 ** step))
    inv_b2c = np.float32(1.0 / (1.0 - beta2 ** step))
    beta1, beta2 = np.float32(beta1), np.float32(beta2)
    lr, eps, grad_scale = np.float32(lr), np.float32(eps), np.float32(grad_scale)
    nchunks = (n + CHUNK - 1) // CHUNK
    for ci in prange(nchunks):
        start = ci * CHUNK
        end = min(start + CHUNK, n)
        # split the chunk where a decayed (matrix) range begins or ends; ranges are sorted
        i = start
        while i < end:
            wd = np.float32(0.0)
            seg_end = end
            for k in range(decay_starts.shape[0]):
                s0, s1 = decay_starts[k], decay_ends[k]
                if s0 <= i < s1:
                    wd = np.float32(weight_decay)
                    seg_end = min(end, s1)
                    break
                if s0 > i:
                    seg_end = min(seg_end, s0)
                    break
            adamw_segment(params[i:seg_end], grads[i:seg_end], m[i:seg_end], v[i:seg_end], lr, beta1, beta2,
                          eps, wd, inv_b1c, inv_b2c, grad_scale)
            i = seg_end


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


# ---------------------------------------------------------------------------------------
# Compile (or load from numba's on-disk cache) every kernel up front, with the argument types
# the model uses, so the first training step is not also a compile step.

def compile_kernels(progress=None) -> None:
    """progress(done, total, name) is called before each kernel."""
    f32 = np.float32
    a2, a1 = np.zeros((2, 6), f32), np.zeros(6, f32)
    a3, tok = np.zeros((1, 2, 6), f32), np.zeros((1, 2), np.int32)
    att4 = np.zeros((1, 2, 2, 2), f32)
    qkv2, cache = np.zeros((2, 18), f32), np.zeros((4, 6), f32)
    ranges = np.zeros(1, np.int64)
    calls = [
        ("encoder", lambda: (encoder_forward(a3, tok, a2, a2), encoder_backward(a2, a2, a3, tok))),
        ("layernorm", lambda: (layernorm_forward(a2, np.zeros(2, f32), np.zeros(2, f32), a2, a1, a1),
                               layernorm_backward(a2, a1, a1, a2, a2, np.zeros(2, f32), np.zeros(2, f32), a1, False))),
        ("bias and residual", lambda: (add_bias(a2, a1), residual_bias_forward(a2, a2, a2, a1), column_sum(a1, a2, False))),
        ("gelu", lambda: (bias_gelu_forward(a2, a2, a1), gelu_backward_inplace(a2, a2))),
        ("attention softmax", lambda: (causal_softmax(att4[0], f32(1.0)), causal_softmax_backward(att4[0], att4[0], f32(1.0)))),
        ("attention (cached)", lambda: attention_cached(a2, qkv2, cache, cache, 0, 2, 2)),
        ("softmax / cross-entropy", lambda: (
            softmax_crossentropy(a2, np.zeros(2, f32), np.zeros(2, np.int32), 5, f32(0.5), True),
            softmax_rows(a2, a2, 5, f32(1.0)))),
        ("adamw", lambda: (sum_of_squares(a1), accumulate(a1.copy(), a1), adamw_update(a1, a1, a1.copy(), a1.copy(), ranges, ranges,
                                                             1e-4, 0.9, 0.999, 1e-8, 0.0, 1, 1.0))),
    ]
    compile_calls(calls, progress)


def compile_calls(calls, progress=None) -> None:
    """Run each (name, call) once, telling progress(done, total, name) before each and at the end."""
    for i, (name, call) in enumerate(calls):
        if progress is not None:
            progress(i, len(calls), name)
        call()
    if progress is not None:
        progress(len(calls), len(calls), "done")
