"""Training attention (attention.py: BLAS products over blocks of query rows, the softmax in numba,
probabilities rebuilt in the backward) against float64 numpy with explicit masks: the forward
(output and row log-sum-exp), the backward by its formulas and by finite differences, for GPT-2's
layout (KV = H) and grouped-query layouts, causal and per document. Then both models: a row
packing several documents gives each document the logits it gets alone."""

import math

import numpy as np
import pytest

from tui_llm.engine.kernels.attention import (
    AttentionScratch,
    attention_backward,
    attention_forward,
    check_doc_starts,
    doc_starts_from_mask,
    keeps_probabilities,
)
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.models.llama import Llama
from tui_llm.engine.models.llama_config import LlamaConfig

RTOL = 1e-5


def rel_err(ours, expected):
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(ours - expected)) / max(np.max(np.abs(expected)), 1e-30))


def starts_of(lengths_per_row, T):
    """doc_starts (B, T) from each row's document lengths (the last one cut at T)."""
    rows = []
    for lengths in lengths_per_row:
        is_start = np.zeros(T, bool)
        first = np.cumsum([0] + list(lengths))[:-1]
        is_start[first[first < T]] = True
        rows.append(is_start[:T])
    return doc_starts_from_mask(np.array(rows))


def packed_starts(B, T, rng):
    """Row 0: random documents, the last one cut mid-row; row 1: one document; row 2: single-token
    documents, then longer ones; further rows random."""
    rows = []
    for b in range(B):
        if b == 1:
            rows.append([T])
        elif b == 2:
            rows.append([1] * min(5, T) + list(rng.integers(1, max(T // 3, 2), T)))
        else:
            rows.append(list(rng.integers(1, max(T // 4, 2), T)))
    return starts_of(rows, T)


# ---------------------------------------------------------------------------------------
# float64 reference, written out with explicit masks and key/value heads repeated per group

def split_heads(qkv, H, KV):
    B, T, W = qkv.shape
    hd = W // (H + 2 * KV)
    q = qkv[..., :H * hd].reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    k = np.repeat(qkv[..., H * hd:(H + KV) * hd].reshape(B, T, KV, hd).transpose(0, 2, 1, 3), H // KV, 1)
    v = np.repeat(qkv[..., (H + KV) * hd:].reshape(B, T, KV, hd).transpose(0, 2, 1, 3), H // KV, 1)
    return q, k, v, hd


def mask_of(starts):
    """(B, 1, T, T): query t sees key j when starts[b, t] <= j <= t."""
    T = starts.shape[1]
    j = np.arange(T)
    return ((j[None, None, :] <= j[None, :, None]) & (j[None, None, :] >= starts[:, :, None]))[:, None]


def attention_reference(qkv, H, KV, starts=None):
    """float64 (probabilities (B, H, T, T), output (B, T, H hd), log-sum-exp (B, H, T)); starts:
    doc_starts, None for causal attention over the whole row."""
    B, T, _ = qkv.shape
    starts = np.zeros((B, T), np.int32) if starts is None else starts
    q, k, v, hd = split_heads(qkv, H, KV)
    s = np.where(mask_of(starts), q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd), -np.inf)
    top = s.max(-1, keepdims=True)
    e = np.exp(s - top)
    total = e.sum(-1, keepdims=True)
    att = e / total
    return att, (att @ v).transpose(0, 2, 1, 3).reshape(B, T, -1), (top + np.log(total))[..., 0]


def backward_reference(qkv, datty, H, KV, starts):
    """float64 dqkv by the formulas, per query head, then summed over each key/value head's group."""
    B, T, _ = qkv.shape
    q, k, v, hd = split_heads(qkv, H, KV)
    att = attention_reference(qkv, H, KV, starts)[0]
    dy = datty.reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    datt = dy @ v.transpose(0, 1, 3, 2)
    ds = att * (datt - (att * datt).sum(-1, keepdims=True)) / math.sqrt(hd)
    dq, dk, dv = ds @ k, ds.transpose(0, 1, 3, 2) @ q, att.transpose(0, 1, 3, 2) @ dy
    dk, dv = (d.reshape(B, KV, H // KV, T, hd).sum(2) for d in (dk, dv))
    return np.concatenate([d.transpose(0, 2, 1, 3).reshape(B, T, -1) for d in (dq, dk, dv)], -1)


def run(qkv, datty, H, KV, starts=None, block=None, workers=None, keep=False):
    """Our forward and backward, every output buffer filled with garbage first (all overwritten).
    keep: the rows are one block and the forward keeps the probabilities for the backward."""
    B, T, W = qkv.shape
    scratch = AttentionScratch(B, T, H, KV, W // (H + 2 * KV), block, workers)
    probs = np.full((B, H, T, T), np.nan, np.float32) if keep else None
    for buffers in scratch.buffers:
        for buf in (buffers.scores, buffers.dscores, buffers.kv_part):
            buf.fill(np.nan)
    scratch.dk_part.fill(np.nan)
    scratch.dv_part.fill(np.nan)
    atty = np.full((B, T, datty.shape[2]), 7.0, np.float32)
    lse = np.full((B, H, T), 7.0, np.float32)
    attention_forward(atty, lse, qkv, H, KV, scratch, starts, probs)
    if keep:
        lse.fill(np.nan)  # the backward must read the kept probabilities, not the statistics
    dqkv = np.full_like(qkv, 5.0)
    attention_backward(dqkv, datty, atty, lse, qkv, H, KV, scratch, starts, probs)
    return atty, lse, dqkv


CASES = [  # B, T, H, KV, hd, block (None: attention.BLOCK)
    (2, 1, 2, 2, 4, None), (1, 1, 4, 2, 4, None),
    (2, 11, 3, 3, 8, 4), (3, 7, 4, 2, 8, 3), (1, 9, 6, 1, 4, None),
    (3, 64, 4, 4, 8, None), (3, 64, 4, 2, 8, 16), (3, 64, 6, 1, 8, 24),
    (3, 600, 2, 1, 4, None), (3, 600, 4, 4, 4, 100),
    (3, 2048, 2, 1, 4, None), (1, 2048, 2, 2, 4, 512),
]


KEPT = [case + (keep,) for case in CASES for keep in (False, True) if not keep or keeps_probabilities(case[1], case[5])]


@pytest.mark.parametrize("documents", [False, True])
@pytest.mark.parametrize("B,T,H,KV,hd,block,keep", KEPT)
def test_forward_and_backward_by_formulas(B, T, H, KV, hd, block, keep, documents):
    rng = np.random.default_rng(T * 10 + H + documents)
    qkv = rng.standard_normal((B, T, (H + 2 * KV) * hd)).astype(np.float32)
    datty = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    starts = packed_starts(B, T, rng) if documents else None
    ref_starts = np.zeros((B, T), np.int32) if starts is None else starts
    _, eatty, expected_lse = attention_reference(qkv.astype(np.float64), H, KV, ref_starts)
    if not keep:
        atty, lse, dqkv = run(qkv, datty, H, KV, starts, block)
        assert np.max(np.abs(lse - expected_lse)) < 1e-5 * max(1.0, np.max(np.abs(expected_lse)))
    else:
        atty, _, dqkv = run(qkv, datty, H, KV, starts, block, keep=True)
    assert rel_err(atty, eatty) < RTOL
    expected = backward_reference(qkv.astype(np.float64), datty.astype(np.float64), H, KV, ref_starts)
    assert rel_err(dqkv, expected) < 2e-5


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("H,KV,documents", [(4, 4, False), (4, 2, False), (6, 1, False), (4, 4, True), (4, 2, True)])
def test_backward_matches_finite_differences(H, KV, documents, keep):
    B, T, hd = 3, 7, 4
    rng = np.random.default_rng(H * 10 + KV)
    qkv = rng.standard_normal((B, T, (H + 2 * KV) * hd)).astype(np.float32)
    datty = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    starts = starts_of([[3, 3, 1], [7], [1, 1, 2, 3]], T) if documents else np.zeros((B, T), np.int32)
    _, _, dqkv = run(qkv, datty, H, KV, starts if documents else None, block=T if keep else 3, keep=keep)
    x, w = qkv.astype(np.float64), datty.astype(np.float64)
    fd = np.zeros_like(x)
    flat, h = x.reshape(-1), 1e-6
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        plus = (attention_reference(x, H, KV, starts)[1] * w).sum()
        flat[i] = old - h
        minus = (attention_reference(x, H, KV, starts)[1] * w).sum()
        flat[i] = old
        fd.reshape(-1)[i] = (plus - minus) / (2 * h)
    assert rel_err(dqkv, fd) < 1e-5


@pytest.mark.parametrize("scores_bytes", [1, 4 * 6 * 16 * 64])  # one head per pass; one batch row, all heads
@pytest.mark.parametrize("in_blas", [True, False])
@pytest.mark.parametrize("workers", [1, 3])
def test_passes_over_batch_rows_and_heads(scores_bytes, in_blas, workers, monkeypatch):
    """Batches and heads too large for SCORES_BYTES go in passes, run in turn or by worker
    threads; dK and dV add in the gemm (blas.matmul_add) or, with a BLAS that cannot, through a
    scratch buffer."""
    monkeypatch.setattr("numba.get_num_threads", lambda: workers)
    monkeypatch.setattr("tui_llm.engine.kernels.attention.SCORES_BYTES", scores_bytes)
    if not in_blas:
        monkeypatch.setattr("tui_llm.engine.kernels.blas.matmul_add", None)
    B, T, H, KV, hd = 3, 64, 6, 2, 8
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((B, T, (H + 2 * KV) * hd)).astype(np.float32)
    datty = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    starts = packed_starts(B, T, rng)
    scratch = AttentionScratch(B, T, H, KV, hd, 16, workers)
    assert len(scratch.passes) == (B * KV if scores_bytes == 1 else B)  # one head per pass, or one batch row
    assert len(scratch.buffers) == workers
    atty, lse, dqkv = run(qkv, datty, H, KV, starts, block=16, workers=workers)
    _, eatty, expected_lse = attention_reference(qkv.astype(np.float64), H, KV, starts)
    assert rel_err(atty, eatty) < RTOL and np.max(np.abs(lse - expected_lse)) < 1e-5 * np.max(np.abs(expected_lse))
    expected = backward_reference(qkv.astype(np.float64), datty.astype(np.float64), H, KV, starts)
    assert rel_err(dqkv, expected) < 2e-5
    # the same passes over rows of one block, the probabilities kept (each pass writes its own part)
    atty, _, dqkv = run(qkv, datty, H, KV, starts, block=T, workers=workers, keep=True)
    assert rel_err(atty, eatty) < RTOL and rel_err(dqkv, expected) < 2e-5


@pytest.mark.parametrize("B, T, H, KV, documents", [(2, 100, 6, 2, False), (1, 100, 4, 4, True), (3, 37, 2, 1, False)])
def test_the_same_bits_on_any_number_of_workers(B, T, H, KV, documents, monkeypatch):
    """The query blocks of a pass go in two groups that two workers run at once (dK and dV: the
    first group's sum plus the second's); the groups depend on the blocks alone, so 1, 2, 3 or 5
    workers give identical bits, and the split sums are still the float64 reference's."""
    rng = np.random.default_rng(11)
    qkv = rng.standard_normal((B, T, (H + 2 * KV) * 8)).astype(np.float32)
    datty = rng.standard_normal((B, T, H * 8)).astype(np.float32)
    starts = starts_of([[30, 45, 25]], T) if documents else None
    results = {}
    for workers in (1, 2, 3, 5):
        monkeypatch.setattr("numba.get_num_threads", lambda workers=workers: workers)
        results[workers] = run(qkv, datty, H, KV, starts, block=16, workers=workers)
    for workers in (2, 3, 5):
        for ours, one in zip(results[workers], results[1]):
            assert np.array_equal(ours, one), f"{workers} workers differ from 1"
    expected = backward_reference(qkv.astype(np.float64), datty.astype(np.float64), H, KV,
                                  np.zeros((B, T), np.int32) if starts is None else starts)
    assert rel_err(results[2][2], expected) < 2e-5


def test_documents_do_not_see_each_other():
    """Changing one document's q/k/v changes neither the output nor the gradients of the others."""
    B, T, H, KV, hd = 1, 20, 2, 1, 4
    rng = np.random.default_rng(1)
    starts = starts_of([[6, 1, 9, 4]], T)
    qkv = rng.standard_normal((B, T, (H + 2 * KV) * hd)).astype(np.float32)
    datty = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    atty, _, dqkv = run(qkv, datty, H, KV, starts, block=8)
    qkv[:, 7:16] += 1.0  # the third document
    atty2, _, dqkv2 = run(qkv, datty, H, KV, starts, block=8)
    others = np.r_[0:7, 16:20]
    assert np.array_equal(atty[:, others], atty2[:, others]) and np.array_equal(dqkv[:, others], dqkv2[:, others])
    assert not np.array_equal(atty[:, 7:16], atty2[:, 7:16])


def test_large_scores_do_not_overflow():
    """The softmax subtracts each row's maximum: scores in the thousands stay finite and exact."""
    B, T, H, hd = 1, 5, 1, 4
    rng = np.random.default_rng(0)
    qkv = (rng.standard_normal((B, T, 3 * H * hd)) * 40).astype(np.float32)
    datty = rng.standard_normal((B, T, H * hd)).astype(np.float32)
    atty, lse, dqkv = run(qkv, datty, H, H)
    assert np.isfinite(atty).all() and np.isfinite(lse).all() and np.isfinite(dqkv).all()
    _, eatty, _ = attention_reference(qkv.astype(np.float64), H, H, np.zeros((B, T), np.int32))
    assert rel_err(atty, eatty) < RTOL


def test_memory_is_linear_in_sequence_length():
    scratch = AttentionScratch(2, 1000, 4, 2, 16)
    assert scratch.nbytes() == AttentionScratch.nbytes_for(2, 1000, 4, 2, 16)
    # Llama-3.2-1B's attention shape (32 heads, 8 key/value heads, head dim 64), one row of 4096 and 8192
    one, two = AttentionScratch.nbytes_for(1, 4096, 32, 8, 64), AttentionScratch.nbytes_for(1, 8192, 32, 8, 64)
    assert two <= 2 * one
    assert one < 32 * 4096 * 4096 * 4 / 10  # the T x T probabilities it replaces: 2.1 GB per layer


def test_doc_starts_are_checked():
    assert check_doc_starts([[0, 0, 2, 3, 3]], 1, 5).dtype == np.int32
    for bad in ([[1, 1, 2, 3, 3]], [[0, 0, 1, 3, 3]], [[0, 0, 0, 3, 2]], [[0, 1, 2, 3, 5]]):
        with pytest.raises(ValueError, match="doc_starts"):
            check_doc_starts(bad, 1, 5)
    with pytest.raises(ValueError, match="shape"):
        check_doc_starts(np.zeros((2, 5)), 1, 5)
    mask = np.array([[False, False, True, True, False], [True, False, False, False, True]])
    assert doc_starts_from_mask(mask).tolist() == [[0, 0, 2, 3, 3], [0, 0, 0, 0, 4]]


# ---------------------------------------------------------------------------------------
# Both models: a packed row is its documents run alone

GPT_CFG = GPTConfig(max_seq_len=40, vocab_size=97, num_layers=2, num_heads=4, channels=32)
LLAMA_CFG = LlamaConfig(vocab_size=97, max_seq_len=40, num_layers=2, num_heads=4, num_kv_heads=2, channels=32,
                        ffn_channels=48, rope_theta=100.0)


@pytest.mark.parametrize("make", [lambda: GPT.random_init(GPT_CFG, seed=3), lambda: Llama.random_init(LLAMA_CFG, 3)],
                         ids=["gpt2", "llama"])
def test_packed_row_gives_each_document_its_own_logits(make, monkeypatch):
    monkeypatch.setattr("tui_llm.engine.kernels.attention.BLOCK", 8)  # several query blocks, some skipping keys
    model = make()
    rng = np.random.default_rng(0)
    T = 37
    lengths = [[5, 1, 12, 30], [37], [1, 1, 20, 15]]
    starts = starts_of(lengths, T)
    tokens = rng.integers(0, 97, (3, T)).astype(np.int32)
    model.forward(tokens, doc_starts=starts)
    packed = model.acts.logits.reshape(3, T, -1).copy()
    for b, row in enumerate(lengths):
        for s0, n in zip(np.cumsum([0] + row)[:-1], row):
            s1 = min(s0 + n, T)  # the last document is cut at the end of the row
            model.forward(tokens[b:b + 1, s0:s1])
            alone = model.acts.logits.reshape(s1 - s0, -1)
            assert rel_err(packed[b, s0:s1], alone) < 1e-5, (b, s0, s1)
    # the same row without doc_starts is plain causal attention: the later documents see the earlier
    model.forward(tokens)
    causal = model.acts.logits.reshape(3, T, -1)
    assert rel_err(causal[1], packed[1]) < 1e-5 and rel_err(causal[0, 5:], packed[0, 5:]) > 1e-3


@pytest.mark.parametrize("make", [lambda: GPT.random_init(GPT_CFG, seed=3), lambda: Llama.random_init(LLAMA_CFG, 3)],
                         ids=["gpt2", "llama"])
def test_packed_row_gradients_are_the_sum_of_its_documents(make, monkeypatch):
    """Training on a packed row: the loss is the documents' mean loss and the gradient the sum of
    theirs (each weighted by its share of the tokens), position embeddings included."""
    monkeypatch.setattr("tui_llm.engine.kernels.attention.BLOCK", 8)
    model = make()
    rng = np.random.default_rng(1)
    T, lengths = 30, [4, 1, 17, 8]
    x, y = (rng.integers(0, 97, (1, T)).astype(np.int32) for _ in range(2))
    loss = model.forward(x, y, training=True, doc_starts=starts_of([lengths], T))
    model.backward()
    packed = model.grads.flat.copy()
    total_loss, total_grad = 0.0, np.zeros_like(packed, np.float64)
    for s0, n in zip(np.cumsum([0] + lengths)[:-1], lengths):
        total_loss += model.forward(x[:, s0:s0 + n], y[:, s0:s0 + n], training=True) * n / T
        model.backward()
        total_grad += model.grads.flat * (n / T)
    assert abs(loss - total_loss) < 1e-5 * total_loss
    assert rel_err(packed, total_grad) < 1e-5
