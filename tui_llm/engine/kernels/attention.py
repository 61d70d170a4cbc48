"""Causal (grouped-query) self-attention for training, in memory linear in T: the products through
BLAS, one block of query rows at a time; the softmax in numba. The T x T probabilities are never
kept: the forward keeps each row's log-sum-exp, the backward rebuilds the probabilities from it
(the FlashAttention idea, on BLAS blocks).

forward, per block of query rows (keys: each query's document, up to itself):
    S = Q Kᵀ,   P = exp(S / √hd - lse),   lse = log Σ_keys exp(S / √hd)   (kept: (B, H, T))
    Y = P V
backward, from dY, with D = rowsum(dY ⊙ Y) (= rowsum(P ⊙ dP)):
    S = Q Kᵀ,  P = exp(S / √hd - lse)                      (recomputed)
    dP = dY Vᵀ,  dS = P ⊙ (dP - D) / √hd
    dQ = dS K,   dK += Σ_group dSᵀ Q,   dV += Σ_group Pᵀ dY   (keys meet several query blocks)

Both models use it: GPT-2 is the case KV = H. The fused q/k/v buffer of one row is
[H*hd query | KV*hd key | KV*hd value]; query head h reads key/value head h // G (G = H / KV).
Keys and values are strided views of that buffer, never copied. The G query heads that share a
key/value head are stacked into one matrix of G*n rows (a copy of the block's n query rows, only
when G > 1), so each product is one BLAS call per (batch row, key/value head), and the group
sums of dK and dV happen inside it. dK and dV add up over the query blocks inside the gemm
(blas.matmul_add, beta = 1) where numpy's BLAS allows it, else through a scratch buffer.

A block's scores go into a scratch buffer that the next block reuses: the memory is O(H n T)
per pass, not O(B H T²) per layer. Short rows are the exception: where a row is one block
(T <= BLOCK, keeps_probabilities), the caller may keep that block's P per layer (`probs`,
(B, H, T, T): at most BLOCK x T per head, still linear in T), and the backward reads it instead
of rebuilding it; at T = 64 the rebuild (one more product and the exponentials) made the
backward's attention about 1.3x the one that kept P. A pass takes as many batch rows (or, for long rows, key/value
heads) as keep a block's scores within SCORES_BYTES, so that they are still in cache when the
softmax kernel and the next products read them. With several threads (the engine's thread
count, machine.py) the work is shared out to that many worker threads, each with BLAS on one
thread and the (serial, nogil) softmax kernels: the heads run in parallel instead of every small
product being split over the cores, which made each a wait for the other thread (the products
are a few hundred per layer; a busy machine made that several times slower). The units shared
out are a pass's query blocks in two groups of equal work: whole passes left one worker with 3
of 5 key/value heads (SmolLM2-360M) while the other waited. The second group's dK and dV go to
a buffer of their own, added to the first's at the end; the groups depend on the blocks alone,
so any number of threads gives the same bits.

Documents: doc_starts (B, T) int32, the position where each position's document starts in its
row (0 everywhere: plain causal attention). Query t attends to keys doc_starts[b, t]..t. A block
of queries r0..r1-1 computes only keys from min_b doc_starts[b, r0] up to r1 - 1: a row packed
with short documents skips most of the triangle, a row of one document costs what causal does.

Letters: B batch, T time, H query heads, KV key/value heads, G = H / KV, hd head dim, n the rows of
a query block (BLOCK), m its keys.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from tui_llm.engine.kernels import blas
from tui_llm.engine.kernels.common import attention_softmax, attention_softmax_backward

BLOCK = 128                   # query rows per block (benchmarks/attention.py)
SCORES_BYTES = 4 << 20        # a pass's block of scores at most (so that it stays in cache)


def _pass_size(B: int, KV: int, G: int, n: int, T: int, workers: int) -> tuple[int, int]:
    """(batch rows, key/value heads) per pass: at most SCORES_BYTES of scores, and at least one
    pass per worker when there is enough work."""
    cap = max(1, SCORES_BYTES // (4 * G * n * T))               # (batch row, kv head) pairs per pass
    pairs = max(1, min(cap, -(-B * KV // workers)))
    if pairs >= KV:
        return pairs // KV, KV
    return 1, -(-KV // -(-KV // pairs))                          # kv heads split into equal passes


class _Buffers:
    """One worker's scratch, for passes of `pairs` (batch row, key/value head) pairs."""

    def __init__(self, pairs: int, G: int, n: int, T: int, hd: int):
        f32 = np.float32
        self.scores = np.empty(pairs * G * n * T, f32)     # S then P of one query block, (rows, heads, n, m)
        self.dscores = np.empty(pairs * G * n * T, f32)    # dP then dS
        stacked = pairs * G * n * hd if G > 1 else 0       # a block's rows, the G heads of a group stacked
        self.q_rows, self.dy_rows, self.out_rows = (np.empty(stacked, f32) for _ in range(3))
        self.kv_part = np.empty(pairs * T * hd if blas.matmul_add is None else 0, f32)  # dK or dV, to add

    def nbytes(self) -> int:
        return sum(v.nbytes for v in vars(self).values())


class AttentionScratch:
    """What attention needs besides its inputs and outputs, for one (B, T, H, KV, hd), shared by
    all layers: the passes (batch rows x key/value heads) and one set of buffers per worker."""

    def __init__(self, B: int, T: int, H: int, KV: int, hd: int, block: int | None = None,
                 workers: int | None = None):
        G = H // KV
        n = min(block or BLOCK, T)
        workers = workers or numba.get_num_threads()
        rows, heads = _pass_size(B, KV, G, n, T, workers)
        self.block = n
        self.passes = [(slice(b0, b0 + rows), slice(j0, j0 + heads), slice(j0 * G, (j0 + heads) * G))
                       for b0 in range(0, B, rows) for j0 in range(0, KV, heads)]   # (rows, kv heads, q heads)
        units = len(self.passes) * (2 if n < T else 1)    # a pass's query blocks in one or two groups (_groups)
        self.buffers = [_Buffers(rows * heads, G, n, T, hd) for _ in range(min(workers, units))]
        self.causal = np.zeros((B, T), np.int32)           # doc_starts of plain causal attention
        # dK and dV of the second group of query blocks (_groups), added to the first's at the end
        self.dk_part, self.dv_part = (np.empty((B, KV, T, hd) if n < T else 0, np.float32) for _ in range(2))

    @staticmethod
    def nbytes_for(B: int, T: int, H: int, KV: int, hd: int, block: int | None = None,
                   workers: int | None = None) -> int:
        G, n = H // KV, min(block or BLOCK, T)
        workers = workers or numba.get_num_threads()
        rows, heads = _pass_size(B, KV, G, n, T, workers)
        passes = -(-B // rows) * -(-KV // heads)
        pairs = rows * heads
        per_worker = 2 * pairs * G * n * T + (3 * pairs * G * n * hd if G > 1 else 0) + \
            (pairs * T * hd if blas.matmul_add is None else 0)
        parts = 2 * B * KV * T * hd if n < T else 0
        units = passes * (2 if n < T else 1)
        return 4 * (min(workers, units) * per_worker + B * T + parts)

    def nbytes(self) -> int:
        return self.causal.nbytes + self.dk_part.nbytes + self.dv_part.nbytes + sum(b.nbytes() for b in self.buffers)


def keeps_probabilities(T: int, block: int | None = None) -> bool:
    """Whether rows of T positions are one block, so that the probabilities may be kept (the
    models then pass a (B, H, T, T) `probs` buffer per layer to the forward and the backward)."""
    return (block or BLOCK) >= T


def _probs_view(probs: np.ndarray | None, b: slice, h: slice, G: int) -> np.ndarray | None:
    """A pass's kept probabilities (rows b, query heads h of probs (B, H, T, T)) laid out as its
    scores, (rows, kv heads, G*T, T): a view (never a copy, which would lose the writes)."""
    if probs is None:
        return None
    part = probs[b, h]
    B, heads, T, _ = part.shape
    return np.reshape(part, (B, heads // G, G * T, T), copy=False)


def _check_probs(probs: np.ndarray | None, B: int, H: int, T: int, scratch: AttentionScratch) -> None:
    if probs is not None and (probs.shape != (B, H, T, T) or scratch.block != T):
        raise ValueError(f"kept probabilities {probs.shape} need rows of one block: (B, H, T, T) = {(B, H, T, T)}, "
                         f"T <= {scratch.block}")


def check_doc_starts(doc_starts, B: int, T: int) -> np.ndarray:
    """doc_starts as a (B, T) int32 array, after checking it describes documents: position 0 starts
    one, and every later position starts a new one (value t) or continues the previous (same value)."""
    starts = np.ascontiguousarray(doc_starts, dtype=np.int32)
    if starts.shape != (B, T):
        raise ValueError(f"doc_starts has shape {starts.shape}, expected {(B, T)}")
    t = np.arange(T, dtype=np.int32)
    ok = (starts[:, :1] == 0).all() and ((starts[:, 1:] == starts[:, :-1]) | (starts[:, 1:] == t[1:])).all()
    if not ok:
        raise ValueError("doc_starts must hold, at each position, the position its document starts at")
    return starts


def doc_starts_from_mask(is_start: np.ndarray) -> np.ndarray:
    """(B, T) bool, True where a document starts (position 0 always does) -> doc_starts (B, T) int32."""
    T = is_start.shape[1]
    marks = np.where(is_start, np.arange(T, dtype=np.int32), 0).astype(np.int32)
    return np.maximum.accumulate(marks, axis=1)


def doc_positions(doc_starts: np.ndarray | None, B: int, T: int) -> np.ndarray:
    """(B, T) int32 positions: t, or t - doc_starts (each document's positions start at 0)."""
    t = np.arange(T, dtype=np.int32)
    return np.tile(t, (B, 1)) if doc_starts is None else t - doc_starts


def _views(qkv: np.ndarray, H: int, KV: int):
    """q (B, KV, G, T, hd), k and v (B, KV, T, hd): views of qkv (B, T, W), no copies (the
    backward writes through them into dqkv)."""
    B, T, W = qkv.shape
    hd = W // (H + 2 * KV)
    G = H // KV
    q = qkv[:, :, :H * hd].reshape(B, T, KV, G, hd).transpose(0, 2, 3, 1, 4)
    k = qkv[:, :, H * hd:(H + KV) * hd].reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    v = qkv[:, :, (H + KV) * hd:].reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    return q, k, v


def _heads(y: np.ndarray, KV: int, G: int) -> np.ndarray:
    """(B, T, H hd) rows with heads side by side, seen as (B, KV, G, T, hd)."""
    B, T, HD = y.shape
    return y.reshape(B, T, KV, G, HD // (KV * G)).transpose(0, 2, 3, 1, 4)


def _rows(x: np.ndarray, r0: int, r1: int, buf: np.ndarray, copy: bool = True) -> np.ndarray:
    """Rows r0..r1-1 of x (B, KV, G, T, hd) as (B, KV, G*n, hd): a view when G = 1, else the G
    heads stacked in buf (copied there unless copy=False: an output, written back by _put_rows)."""
    B, KV, G, _, hd = x.shape
    if G == 1:
        return x[:, :, 0, r0:r1]
    n = r1 - r0
    stacked = buf[:B * KV * G * n * hd].reshape(B, KV, G, n, hd)
    if copy:
        np.copyto(stacked, x[..., r0:r1, :])
    return stacked.reshape(B, KV, G * n, hd)


def _put_rows(x: np.ndarray, r0: int, r1: int, rows: np.ndarray) -> None:
    """Write back what _rows(..., copy=False) returned (nothing to do when it was a view)."""
    B, KV, G, _, hd = x.shape
    if G > 1:
        np.copyto(x[..., r0:r1, :], rows.reshape(B, KV, G, r1 - r0, hd))


def _blocks(starts: np.ndarray, n: int) -> list[tuple[int, int, int]]:
    """(r0, r1, k0) per block of query rows [r0, r1): its keys are k0..r1-1, k0 the earliest
    document start among its rows (doc_starts never decreases along a row: the first row's)."""
    T = starts.shape[1]
    return [(r0, min(r0 + n, T), int(starts[:, r0].min())) for r0 in range(0, T, n)]


def _work(block: tuple[int, int, int]) -> int:
    r0, r1, k0 = block
    return (r1 - r0) * (r1 - k0)              # scores computed: rows x keys


def _groups(blocks: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """A pass's query blocks in two groups of about equal work (one when there is one block),
    each from its last block down: two units that two workers run at once. The split depends on
    the blocks alone, never on the worker count, so the sums (dK and dV: the first group's plus
    the second's) are the same bits on any number of threads."""
    if len(blocks) < 2:
        return [blocks]
    groups: tuple[list, list] = ([], [])
    work = [0, 0]
    for block in sorted(blocks, key=_work, reverse=True):   # the largest first, to the lighter group
        i = 0 if work[0] <= work[1] else 1
        groups[i].append(block)
        work[i] += _work(block)
    return [sorted(group, reverse=True) for group in groups]


_blas_threads = None  # threadpoolctl's controller, made on first use


def _run_units(units: list, run_unit, scratch: AttentionScratch) -> None:
    """run_unit(unit, buffers) for every (work, unit) of units. With several threads
    (numba.get_num_threads()), the units are shared out to as many worker threads, the largest
    first to the least loaded (the same split every call), each running its units one after
    the other with BLAS on one thread: the heads run in parallel, not the small products inside
    one (each of which would be a wait for the other thread)."""
    global _blas_threads
    workers = min(numba.get_num_threads(), len(scratch.buffers), len(units))
    if workers <= 1:
        for _, unit in units:
            run_unit(unit, scratch.buffers[0])
        return
    if _blas_threads is None:
        _blas_threads = ThreadpoolController()
    shares: list[list] = [[] for _ in range(workers)]
    loads = [0] * workers
    for work, unit in sorted(units, key=lambda wu: wu[0], reverse=True):
        i = loads.index(min(loads))
        shares[i].append(unit)
        loads[i] += work

    def worker(i):
        for unit in shares[i]:
            run_unit(unit, scratch.buffers[i])

    with _blas_threads.limit(limits=1, user_api="blas"):
        list(_executor(workers).map(worker, range(workers)))


_pools: dict[int, ThreadPoolExecutor] = {}


def _executor(workers: int) -> ThreadPoolExecutor:
    """The worker threads (made once per count; they wait idle between calls)."""
    if workers not in _pools:
        _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="attention")
    return _pools[workers]


def _units(scratch: AttentionScratch, starts: np.ndarray) -> list[tuple[int, tuple]]:
    """(work, (pass, group index, the group's blocks)) for every pass and group of its blocks."""
    units = []
    for p in scratch.passes:
        b, j = p[0], p[1]
        pairs = len(range(*b.indices(starts.shape[0]))) * (j.stop - j.start)
        for g, group in enumerate(_groups(_blocks(starts[b], scratch.block))):
            units.append((pairs * sum(map(_work, group)), (p, g, group)))
    return units


def attention_forward(atty: np.ndarray, lse: np.ndarray, qkv: np.ndarray, H: int, KV: int,
                      scratch: AttentionScratch, doc_starts: np.ndarray | None = None,
                      probs: np.ndarray | None = None) -> None:
    """atty (B, T, H hd) = attention output; lse (B, H, T) = each row's log-sum-exp (kept for the
    backward); qkv (B, T, (H + 2KV) hd) with q and k ready (rotated); doc_starts (B, T) int32 or
    None (causal over the whole row); probs (B, H, T, T) or None: where keeps_probabilities(T),
    the probabilities are written there for the backward."""
    G, hd = H // KV, qkv.shape[2] // (H + 2 * KV)
    scale = np.float32(1.0 / math.sqrt(hd))
    starts = scratch.causal if doc_starts is None else doc_starts
    q, k, v = _views(qkv, H, KV)
    y = _heads(atty, KV, G)
    _check_probs(probs, qkv.shape[0], H, qkv.shape[1], scratch)

    def run_unit(unit, buf):
        (b, j, h), _, blocks = unit
        _forward(y[b, j], lse[b, h], q[b, j], k[b, j], v[b, j], starts[b], buf, blocks, scale,
                 _probs_view(probs, b, h, G))

    _run_units(_units(scratch, starts), run_unit, scratch)


def attention_backward(dqkv: np.ndarray, datty: np.ndarray, atty: np.ndarray, lse: np.ndarray, qkv: np.ndarray,
                       H: int, KV: int, scratch: AttentionScratch, doc_starts: np.ndarray | None = None,
                       probs: np.ndarray | None = None) -> None:
    """dqkv (B, T, W) is overwritten from datty (B, T, H hd), through the forward's output atty
    and row statistics lse (B, H, T), or its kept probabilities probs; the same qkv and
    doc_starts as the forward. A pass's second group of query blocks writes its dK and dV
    beside the first's (scratch.dk_part, dv_part), added to them once every unit is done."""
    G, hd = H // KV, qkv.shape[2] // (H + 2 * KV)
    scale = np.float32(1.0 / math.sqrt(hd))
    starts = scratch.causal if doc_starts is None else doc_starts
    q, k, v = _views(qkv, H, KV)
    dq, dk, dv = _views(dqkv, H, KV)
    y, dy = _heads(atty, KV, G), _heads(datty, KV, G)
    _check_probs(probs, qkv.shape[0], H, qkv.shape[1], scratch)

    def run_unit(unit, buf):
        (b, j, h), g, blocks = unit
        dk_to, dv_to = (dk[b, j], dv[b, j]) if g == 0 else (scratch.dk_part[b, j], scratch.dv_part[b, j])
        _backward(dq[b, j], dk_to, dv_to, dy[b, j], y[b, j], lse[b, h], q[b, j], k[b, j], v[b, j], starts[b], buf,
                  blocks, scale, _probs_view(probs, b, h, G))

    _run_units(_units(scratch, starts), run_unit, scratch)
    if scratch.dk_part.size:   # rows of more than one block: every pass had a second group
        np.add(dk, scratch.dk_part, out=dk)
        np.add(dv, scratch.dv_part, out=dv)


def _forward(y, lse, q, k, v, starts, buf, blocks, scale, probs) -> None:
    """Query blocks `blocks` of one pass of attention_forward: y, q (B, KV, G, T, hd), k, v
    (B, KV, T, hd), lse (B, H, T) for the pass's batch rows and heads; probs: their kept
    probabilities (one block), or None."""
    B, KV, G = q.shape[:3]
    H = KV * G
    for r0, r1, k0 in blocks:
        n, m = r1 - r0, r1 - k0
        s = buf.scores[:B * H * n * m].reshape(B, KV, G * n, m) if probs is None else probs
        np.matmul(_rows(q, r0, r1, buf.q_rows), k[:, :, k0:r1].swapaxes(-1, -2), out=s)    # S = Q Kᵀ
        attention_softmax(s.reshape(B, H, n, m), lse, starts, r0, k0, scale)                    # P, lse
        out = _rows(y, r0, r1, buf.out_rows, copy=False)
        np.matmul(s, v[:, :, k0:r1], out=out)                                                   # Y = P V
        _put_rows(y, r0, r1, out)


def _backward(dq, dk, dv, dy, y, lse, q, k, v, starts, buf, blocks, scale, probs) -> None:
    """Query blocks `blocks` (from the last down) of one pass of attention_backward, on views as
    _forward's (dq, dy like q; dk, dv like k: these blocks' sums); probs: the forward's kept
    probabilities (one block), read instead of rebuilt, or None."""
    B, KV, G, T, hd = q.shape
    H = KV * G
    # The first block writes its keys' dK and dV (zeros on the keys it does not reach), the others add.
    _, last_row, first_key = blocks[0]
    for grad in (dk, dv):
        grad[:, :, :first_key] = 0.0
        grad[:, :, last_row:] = 0.0
    for r0, r1, k0 in blocks:
        n, m = r1 - r0, r1 - k0
        s = buf.scores[:B * H * n * m].reshape(B, KV, G * n, m) if probs is None else probs
        ds = buf.dscores[:B * H * n * m].reshape(B, KV, G * n, m)
        q_rows, dy_rows = _rows(q, r0, r1, buf.q_rows), _rows(dy, r0, r1, buf.dy_rows)
        keys, values = k[:, :, k0:r1], v[:, :, k0:r1]
        if probs is None:
            np.matmul(q_rows, keys.swapaxes(-1, -2), out=s)                                    # S = Q Kᵀ
        np.matmul(dy_rows, values.swapaxes(-1, -2), out=ds)                                    # dP = dY Vᵀ
        attention_softmax_backward(s.reshape(B, H, n, m), ds.reshape(B, H, n, m), lse, y.reshape(B, H, T, hd),
                                   dy.reshape(B, H, T, hd), starts, r0, k0, scale, probs is None)           # P, dS
        out = _rows(dq, r0, r1, buf.out_rows, copy=False)
        np.matmul(ds, keys, out=out)                                                            # dQ = dS K
        _put_rows(dq, r0, r1, out)
        for grad, a, b in ((dk[:, :, k0:r1], ds, q_rows), (dv[:, :, k0:r1], s, dy_rows)):     # dK, dV
            if r1 == last_row:
                np.matmul(a.swapaxes(-1, -2), b, out=grad)
            elif blas.matmul_add is not None:  # added inside the gemm (beta = 1)
                for i in range(B):
                    for j in range(KV):
                        blas.matmul_add(grad[i, j], a[i, j].T, b[i, j])
            else:
                part = buf.kv_part[:B * KV * m * hd].reshape(B, KV, m, hd)
                np.matmul(a.swapaxes(-1, -2), b, out=part)
                np.add(grad, part, out=grad)
