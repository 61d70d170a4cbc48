"""Loaders over packed rows (token file + .mask): the same total batches in the same order for every
split into micro-batches and ranks, weights and document starts as row_batch says, resume, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from tui_llm.engine.data.loader import PackedTrainLoader, PackedValLoader, TrainLoader, documents_at
from tui_llm.engine.data.packed import DOC_START, LOSS, PAD, RowPacker, mask_path, open_packed, row_batch, write_mask
from tui_llm.engine.data.tokens import DataError, write_tokens

T = 16


def make_packed(path, conversations: int = 60, seed: int = 0):
    """A packed token file + mask of random 'conversations' (prompt not counted, reply counted)."""
    rng = np.random.default_rng(seed)
    packer = RowPacker(T, pad_id=0, open_rows=4)
    rows = []
    for _ in range(conversations):
        n = int(rng.integers(3, T + 1))
        ids = rng.integers(1, 1000, n)
        loss = np.zeros(n, int)
        loss[int(rng.integers(1, n)):] = 1
        rows += packer.add(ids, loss)
    rows += packer.finish()
    tokens = np.concatenate([r[0] for r in rows])
    flags = np.concatenate([r[1] for r in rows])
    write_tokens(path, tokens)
    write_mask(mask_path(path), flags, T, tokens)
    return tokens, flags


def step_rows(loader, steps):
    """The (inputs, weights, doc_starts) of every micro-batch of every rank, concatenated per step."""
    out = []
    for _ in range(steps):
        micros = [loader.next_micro() for _ in range(loader.grad_accum)]
        out.append(micros)
    return out


def test_packed_rows_weights_and_documents(tmp_path):
    tokens, flags = make_packed(tmp_path / "c_train.bin")
    packed = open_packed(tmp_path / "c_train.bin")
    assert packed is not None and packed[0].num_rows == len(tokens) // T
    loader = PackedTrainLoader(packed, B=2, T=T, shuffle=False)
    batch = loader.next_micro()
    x, y, weight, doc, pos = row_batch(tokens, flags, [0, 1], T)
    assert (batch.inputs == x).all() and (batch.targets == y).all() and (batch.weights == weight).all()
    assert (batch.doc_starts == np.arange(T) - pos).all()
    assert (batch.doc_starts[:, 0] == 0).all()
    assert batch.loss_tokens == int(weight.sum()) > 0
    # a counted prediction never crosses into another document, and padding never counts
    f = flags.reshape(-1, T)[:2]
    assert not (weight[:, :-1].astype(bool) & ((f[:, 1:] & (DOC_START | PAD)) != 0)).any()
    assert ((f[:, 1:] & LOSS) != 0).sum() == weight.sum()


@pytest.mark.parametrize("B, K, N", [(4, 1, 1), (2, 2, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2)])
def test_every_split_of_a_step_reads_the_same_rows_in_the_same_order(tmp_path, B, K, N):
    make_packed(tmp_path / "c_train.bin", conversations=200)
    packed = open_packed(tmp_path / "c_train.bin")
    reference = PackedTrainLoader(packed, B=4, T=T, seed=42)
    want = [np.concatenate([m.inputs for m in micros]) for micros in step_rows(reference, 7)]
    ranks = [PackedTrainLoader(packed, B=B, T=T, seed=42, grad_accum=K, rank=r, world_size=N) for r in range(N)]
    got = []
    per_rank = [step_rows(loader, 7) for loader in ranks]
    for s in range(7):
        rows = [per_rank[r][s][m].inputs for m in range(K) for r in range(N)]  # micro m, then rank r
        got.append(np.concatenate(rows))
    assert all((a == b).all() for a, b in zip(want, got))


def test_packed_loader_resumes_exactly(tmp_path):
    make_packed(tmp_path / "c_train.bin", conversations=200)
    packed = open_packed(tmp_path / "c_train.bin")
    a = PackedTrainLoader(packed, B=2, T=T, grad_accum=2)
    step_rows(a, 5)
    state = a.state_dict()
    b = PackedTrainLoader(packed, B=2, T=T, grad_accum=2)
    b.load_state_dict(state)
    for ma, mb in zip(sum(step_rows(a, 9), []), sum(step_rows(b, 9), [])):
        assert all((u == v).all() for u, v in zip(ma, mb))


def test_packed_validation_batches_deal_round_robin(tmp_path):
    make_packed(tmp_path / "c_val.bin", conversations=80)
    packed = open_packed(tmp_path / "c_val.bin")
    whole = [m.inputs for m in PackedValLoader(packed, B=2, T=T).micros(5)]
    shares = [list(PackedValLoader(packed, B=2, T=T, rank=r, world_size=2).micros(5)) for r in range(2)]
    dealt = [shares[g % 2][g // 2].inputs for g in range(5)]
    assert len(whole) == 5 and all((a == b).all() for a, b in zip(whole, dealt))


def test_refusals(tmp_path):
    tokens, flags = make_packed(tmp_path / "c_train.bin")
    packed = open_packed(tmp_path / "c_train.bin")
    with pytest.raises(DataError, match="rows of 16 tokens, but training uses -t 8"):
        PackedTrainLoader(packed, B=1, T=8)
    with pytest.raises(DataError, match="too few for one total batch"):
        PackedTrainLoader(packed, B=10_000, T=T)
    write_tokens(tmp_path / "plain.bin", tokens)
    assert open_packed(tmp_path / "plain.bin") is None
    other = tokens.copy()
    other[0] += 1  # the mask belongs to other tokens
    write_tokens(tmp_path / "d_train.bin", other)
    mask_path(tmp_path / "d_train.bin").write_bytes(mask_path(tmp_path / "c_train.bin").read_bytes())
    with pytest.raises(DataError, match="checksum differs"):
        open_packed(tmp_path / "d_train.bin")
    (tmp_path / "shards").mkdir()
    write_tokens(tmp_path / "shards" / "s_train_000000.bin", tokens)
    write_mask(mask_path(tmp_path / "shards" / "s_train_000000.bin"), flags, T, tokens)
    write_tokens(tmp_path / "shards" / "s_train_000001.bin", tokens)
    with pytest.raises(DataError, match="no s_train_000001.mask beside it"):
        open_packed(str(tmp_path / "shards" / "s_train_*.bin"))


def test_document_attention_for_plain_text():
    x = np.array([[5, 50256, 7, 8, 50256, 9]], np.int32)
    assert documents_at(x, 50256).tolist() == [[0, 1, 1, 1, 4, 4]]
    assert documents_at(x, None) is None
    tokens = np.tile(np.array([50256, 1, 2, 3, 4, 5, 6, 7], np.uint16), 20)
    loader = TrainLoader(tokens, B=2, T=8, shuffle=False, doc_start_token=50256)
    batch = loader.next_micro()
    assert batch.weights is None and batch.doc_starts is not None
    assert batch.doc_starts.tolist() == [[0] * 8, [0] * 8]  # each row begins with the EOT token
