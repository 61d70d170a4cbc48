"""Token files (formats, detection, validation, atomic writes) and the train/val loaders."""

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from tui_llm.engine.data import tokens as data
from tui_llm.engine.data.loader import TrainLoader, ValLoader
from tui_llm.engine.data.tokens import DataError, open_tokens, write_tokens
from tui_llm.engine.mt19937 import mt19937

SHARED_TEXT = Path(os.environ.get("TUI_LLM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data")) \
    / "tinyshakespeare.txt"

def test_llmc_round_trip_and_exact_bytes(tmp_path):
    path = tmp_path / "t.bin"
    ids = [0, 1, 198, 50256, 12345]
    assert write_tokens(path, ids, "llmc") == 1024 + 2 * len(ids)
    raw = path.read_bytes()
    assert raw[:12] == struct.pack("<3i", 20240520, 1, len(ids))
    assert raw[12:1024] == bytes(1012)
    assert raw[1024:] == struct.pack("<5H", *ids)
    tf = open_tokens(path)
    assert tf.format == "llmc" and tf.num_tokens == 5 and tf.path == path
    assert isinstance(tf.tokens, np.memmap)  # mapped, not read into memory
    assert tf.tokens.tolist() == ids


def test_int32_round_trip_and_detection(tmp_path):
    path = tmp_path / "t.bin"
    ids = [50256, 5962, 22307, 25]
    assert write_tokens(path, np.array(ids), "int32") == 16
    assert path.read_bytes() == struct.pack("<4i", *ids)
    tf = open_tokens(path)  # headerless int32 is recognised without being told
    assert tf.format == "int32" and tf.tokens.tolist() == ids


def test_uint16_round_trip_only_when_asked(tmp_path):
    path = tmp_path / "t.bin"
    ids = [5962, 22307, 25]
    assert write_tokens(path, ids, "uint16") == 6
    assert path.read_bytes() == struct.pack("<3H", *ids)
    tf = open_tokens(path, format="uint16")
    assert tf.format == "uint16" and tf.tokens.tolist() == ids
    with pytest.raises(DataError, match="--format uint16"):
        open_tokens(path)  # 6 bytes: neither llm.c nor int32, and uint16 is never guessed


def test_uint16_pairs_are_not_mistaken_for_int32(tmp_path):
    path = tmp_path / "t.bin"
    write_tokens(path, [5962, 22307, 25, 198], "uint16")  # first int32 = 5962 + 22307 * 65536
    with pytest.raises(DataError, match="not a token file"):
        open_tokens(path)


def _llmc_file(path, magic=20240520, version=1, count=3, tokens=(1, 2, 3)):
    header = np.zeros(256, dtype="<i4")
    header[:3] = (magic, version, count)
    path.write_bytes(header.tobytes() + np.array(tokens, dtype="<u2").tobytes())
    return path


def test_bad_headers(tmp_path):
    with pytest.raises(DataError, match=r"bad\.bin: not a token file"):
        open_tokens(_llmc_file(tmp_path / "bad.bin", magic=20240326))  # a model checkpoint's magic
    with pytest.raises(DataError, match="bad magic 20240326"):
        open_tokens(tmp_path / "bad.bin", format="llmc")
    with pytest.raises(DataError, match="version 7 .*Llama-3"):
        open_tokens(_llmc_file(tmp_path / "v7.bin", version=7))
    with pytest.raises(DataError, match="header says 4 tokens.* 1,032 bytes, but it is 1,030"):
        open_tokens(_llmc_file(tmp_path / "short.bin", count=4))
    with pytest.raises(DataError, match="header says 3 tokens"):
        open_tokens(_llmc_file(tmp_path / "long.bin", count=3, tokens=(1, 2, 3, 4)))
    (tmp_path / "cut.bin").write_bytes(struct.pack("<3i", 20240520, 1, 0))
    with pytest.raises(DataError, match="too short for the 1024-byte llm.c header"):
        open_tokens(tmp_path / "cut.bin")


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match=r"missing\.bin: no such file"):
        open_tokens(tmp_path / "missing.bin")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.bin: empty file"):
        open_tokens(tmp_path / "empty.bin")
    with pytest.raises(DataError, match="is a directory"):
        open_tokens(tmp_path)
    (tmp_path / "odd.bin").write_bytes(b"\x01\x00\x00")
    with pytest.raises(DataError, match="whole number of uint16"):
        open_tokens(tmp_path / "odd.bin", format="uint16")
    (tmp_path / "neg.bin").write_bytes(struct.pack("<2i", 5, -1))
    with pytest.raises(DataError, match="negative token id -1"):
        open_tokens(tmp_path / "neg.bin", format="int32")


def test_token_ids_must_fit_the_vocabulary(tmp_path):
    path = tmp_path / "big.bin"
    write_tokens(path, [1, 2, 50257, 3], "llmc")
    with pytest.raises(DataError, match=r"big\.bin: token id 50257 >= vocabulary size 50257 .*at token 2"):
        open_tokens(path)
    assert open_tokens(path, vocab_size=60000).num_tokens == 4
    assert open_tokens(path, check_ids=False).num_tokens == 4


def test_write_refuses_ids_the_format_cannot_hold(tmp_path):
    with pytest.raises(DataError, match=r"\[0, 65536\)"):
        write_tokens(tmp_path / "a.bin", [1, 70000], "llmc")
    with pytest.raises(DataError, match=r"\[0, 65536\)"):
        write_tokens(tmp_path / "a.bin", [-1], "int32")
    write_tokens(tmp_path / "b.bin", [70000], "int32")  # int32 holds bigger vocabularies
    assert list(tmp_path.iterdir()) == [tmp_path / "b.bin"]


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "t.bin"
    write_tokens(path, [1, 2, 3])
    before = path.read_bytes()

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        write_tokens(path, [4, 5, 6, 7])
    assert path.read_bytes() == before  # the old file is untouched ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin"]  # ... and no temp file is left


# ----------------------------------------------------------------------------------------------------
# loaders

def test_sequential_batches_by_hand():
    tokens = np.arange(25, dtype=np.uint16)  # B*T = 6: samples start at 0, 6, 12, 18; (25-1)//6 = 4
    loader = TrainLoader(tokens, B=2, T=3, shuffle=False)
    assert loader.num_samples == 4
    x, y = loader.next_batch()
    assert x.dtype == np.int32 and y.dtype == np.int32
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6]]
    for _ in range(3):
        x, y = loader.next_batch()
    assert x.tolist() == [[18, 19, 20], [21, 22, 23]]
    assert y.tolist() == [[19, 20, 21], [22, 23, 24]]  # the last sample uses the final token as a target
    assert (loader.epoch, loader.position) == (0, 4)
    x, _ = loader.next_batch()  # wraps around: a new epoch starts at sample 0 again
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]] and (loader.epoch, loader.position) == (1, 1)


def test_shuffled_order_by_hand():
    draws = mt19937(42).random_raw(3).tolist()
    assert draws == [1608637542, 3421126067, 4083286876]  # torch.manual_seed(42) / llm.c mt19937 stream
    # Fisher-Yates over [0, 1, 2, 3] from the top: i=3: j = 1608637542 % 4 = 2 -> [0, 1, 3, 2];
    # i=2: j = 3421126067 % 3 = 2 (no swap); i=1: j = 4083286876 % 2 = 0 -> [1, 0, 3, 2]
    loader = TrainLoader(np.arange(25, dtype=np.uint16), B=2, T=3)
    assert loader.order.tolist() == [1, 0, 3, 2]
    x, y = loader.next_batch()
    assert x.tolist() == [[6, 7, 8], [9, 10, 11]]
    assert y.tolist() == [[7, 8, 9], [10, 11, 12]]


def test_every_epoch_is_a_new_permutation():
    loader = TrainLoader(np.arange(1001, dtype=np.uint16), B=2, T=5)  # 100 samples
    orders = []
    for _ in range(3):
        orders.append(loader.order.tolist())
        for _ in range(loader.num_samples):
            loader.next_batch()
        loader.next_batch()
    assert all(sorted(o) == list(range(100)) for o in orders)
    assert orders[0] != orders[1] != orders[2]  # the stream continues, it is not reseeded


def test_too_few_tokens():
    with pytest.raises(DataError, match="too few for one batch of B\\*T\\+1 = 257"):
        TrainLoader(np.zeros(256, dtype=np.uint16), B=4, T=64)
    assert TrainLoader(np.zeros(257, dtype=np.uint16), B=4, T=64).num_samples == 1
    with pytest.raises(DataError, match="too few"):
        ValLoader(np.zeros(10, dtype=np.uint16), B=4, T=64)


@pytest.mark.parametrize("steps", [0, 1, 61, 123, 124, 125, 248, 300])
def test_resume_gives_the_exact_next_batches(steps):
    tokens = np.random.default_rng(0).integers(0, 50257, size=1000).astype(np.uint16)
    original = TrainLoader(tokens, B=2, T=4)  # 124 samples: steps cross one and two epoch boundaries
    for _ in range(steps):
        original.next_batch()
    state = json.loads(json.dumps(original.state_dict()))  # must survive JSON
    restored = TrainLoader(tokens, B=2, T=4, seed=7)  # a different seed: the state must win
    restored.load_state_dict(state)
    for _ in range(260):
        (xa, ya), (xb, yb) = original.next_batch(), restored.next_batch()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert (restored.epoch, restored.position) == (original.epoch, original.position)


def test_resume_refuses_a_different_shape():
    tokens = np.zeros(1000, dtype=np.uint16)
    state = TrainLoader(tokens, B=2, T=4).state_dict()
    with pytest.raises(DataError, match="steps are 2 rows of 4 tokens; this launch makes 4"):
        TrainLoader(tokens, B=4, T=4).load_state_dict(state)
    with pytest.raises(DataError, match="T 4 in the checkpoint, 8 here.*different data or batch shape"):
        TrainLoader(tokens, B=2, T=8).load_state_dict(state)


def test_val_loader_restarts_every_time():
    tokens = np.arange(25, dtype=np.uint16)
    val = ValLoader(tokens, B=2, T=3)
    first = [x.tolist() for x, _ in val.batches(2)]
    assert first == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    assert [x.tolist() for x, _ in val.batches(2)] == first
    assert len(list(val.batches(100))) == 4 and len(list(val.batches())) == 4


@pytest.mark.skipif(not SHARED_TEXT.is_file(), reason="shared Tiny Shakespeare text not present")
def test_llmc_tiny_shakespeare_order(tmp_path):
    from tui_llm.engine.data.prepare import prepare_tinyshakespeare

    result = prepare_tinyshakespeare(tmp_path, source=SHARED_TEXT, log=lambda *_: None)
    train = open_tokens(result.train_path)
    loader = TrainLoader(train, B=4, T=64)
    assert loader.num_samples == 1192
    # llm.c's train_gpt2.c trains on these samples first (verified against the C loader)
    assert loader.order[:10].tolist() == [408, 791, 914, 1057, 81, 450, 299, 907, 582, 321]
    x, y = loader.next_batch()
    assert x.ravel().tolist() == train.tokens[408 * 256:409 * 256].tolist()
    assert y.ravel().tolist() == train.tokens[408 * 256 + 1:409 * 256 + 1].tolist()
    assert ValLoader(open_tokens(result.val_path), B=4, T=64).num_samples == 127


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "tokens.bin"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        open_tokens(fifo)
