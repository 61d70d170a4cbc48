"""Loaders that scale: gradient accumulation, ranks and shards give one global order; resume across splits.

A "split" is (B, grad_accum K, world_size N) with the same total batch R = B*K*N rows. Ranks are
simulated by one loader per rank in this process (the MPI plumbing itself is tests/test_mpi.py).
"""

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tui_llm.engine.data.loader import TrainLoader, ValLoader
from tui_llm.engine.data.tokens import DataError, open_dataset, open_tokens, write_tokens

T = 3
SPLITS = [(4, 1, 1), (1, 4, 1), (2, 1, 2), (1, 2, 2), (2, 2, 1), (1, 1, 4)]  # all R = 4 rows


def make_loaders(tokens, split, shuffle=True):
    B, K, N = split
    return [TrainLoader(tokens, B, T, shuffle=shuffle, grad_accum=K, rank=r, world_size=N) for r in range(N)]


def step(loaders):
    """One optimizer step of a split: every rank's K micro-batches, put back into the total batch's rows."""
    B, K, N = loaders[0].B, loaders[0].grad_accum, loaders[0].world_size
    xs, ys = np.zeros((B * K * N, T), np.int32), np.zeros((B * K * N, T), np.int32)
    for m in range(K):
        for r, loader in enumerate(loaders):
            x, y = loader.next_batch()
            assert x.shape == y.shape == (B, T) and x.dtype == np.int32
            rows = slice((m * N + r) * B, (m * N + r + 1) * B)  # the documented row rule
            xs[rows], ys[rows] = x, y
    return xs, ys


def run(loaders, steps):
    return [step(loaders) for _ in range(steps)]


def assert_same_steps(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def token_data(kind):
    rng = np.random.default_rng(1)
    if kind == "array":
        return rng.integers(0, 50257, size=5 * 4 * T + 2).astype(np.uint16)  # 5 total batches
    return [rng.integers(0, 50257, size=n * 4 * T + 1 + extra).astype(np.uint16)  # 3 + 1 + 2 total batches
            for n, extra in ((3, 5), (1, 0), (2, 11))]


@pytest.mark.parametrize("kind", ["array", "shards"])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("split", SPLITS[1:])
def test_every_split_consumes_the_single_process_rows(kind, shuffle, split):
    tokens = token_data(kind)
    single = run(make_loaders(tokens, (4, 1, 1), shuffle), 20)  # four epochs and then some
    assert_same_steps(run(make_loaders(tokens, split, shuffle), 20), single)


def test_each_epoch_visits_every_total_batch_once_and_rows_are_consecutive():
    tokens = np.arange(6 * 4 * T + 1, dtype=np.uint16)  # token value = its offset: rows are easy to read
    steps = run(make_loaders(tokens, (1, 2, 2)), 12)
    starts = [int(x[0, 0]) for x, _ in steps]
    assert sorted(starts[:6]) == sorted(starts[6:]) == [k * 4 * T for k in range(6)]
    assert starts[:6] != starts[6:]  # a new permutation every epoch
    for x, y in steps:  # a total batch is 4*T+1 consecutive tokens, rows in order, targets shifted by one
        assert np.array_equal(x.ravel(), np.arange(x[0, 0], x[0, 0] + 4 * T))
        assert np.array_equal(y.ravel(), x.ravel() + 1)


def test_one_rank_one_micro_batch_is_unchanged_llmc_order():
    tokens = np.arange(25, dtype=np.uint16)  # B*T = 6: 4 samples; order [1, 0, 3, 2] (tests/test_data.py)
    loader = TrainLoader(tokens, B=2, T=3)
    assert loader.order.tolist() == [1, 0, 3, 2] and loader.num_samples == 4
    assert loader.next_batch()[0].tolist() == [[6, 7, 8], [9, 10, 11]]


@pytest.mark.parametrize("kind", ["array", "shards"])
@pytest.mark.parametrize("saved_at", [0, 1, 3, 5, 6, 9, 12, 17])
def test_state_saved_by_one_split_continues_in_any_other(kind, saved_at):
    tokens = token_data(kind)
    reference = run(make_loaders(tokens, (4, 1, 1)), saved_at + 12)
    for save_split, load_split in [((1, 4, 1), (2, 1, 2)), ((2, 1, 2), (1, 1, 4)), ((1, 2, 2), (4, 1, 1))]:
        saver = make_loaders(tokens, save_split)
        run(saver, saved_at)
        states = [json.loads(json.dumps(loader.state_dict())) for loader in saver]  # must survive JSON
        assert all(s == states[0] for s in states)  # one global position, the same on every rank
        assert states[0] == make_state_at(tokens, (4, 1, 1), saved_at)  # ... and for every split
        loaders = make_loaders(tokens, load_split)
        for loader in loaders:
            loader.load_state_dict(states[0])
        assert_same_steps(run(loaders, 12), reference[saved_at:])


def make_state_at(tokens, split, steps):
    loaders = make_loaders(tokens, split)
    run(loaders, steps)
    return json.loads(json.dumps(loaders[0].state_dict()))


def test_mid_step_state_continues_only_where_the_rows_line_up():
    tokens = token_data("array")
    loader = TrainLoader(tokens, B=1, T=T, grad_accum=4)
    for _ in range(6):  # one step and two micro-batches into the next
        loader.next_batch()
    state = loader.state_dict()
    assert state["row"] == 2 and state["sample"] == 1
    same = TrainLoader(tokens, B=1, T=T, grad_accum=4, seed=7)
    same.load_state_dict(state)
    wider = TrainLoader(tokens, B=2, T=T, grad_accum=2)  # its micro-batch 1 starts at row 2: lines up
    wider.load_state_dict(state)
    a = np.concatenate([loader.next_batch()[0], loader.next_batch()[0]])
    assert np.array_equal(same.next_batch()[0], a[:1]) and np.array_equal(wider.next_batch()[0], a)
    with pytest.raises(DataError, match="2 rows into a total batch of 4.*optimizer-step boundary"):
        TrainLoader(tokens, B=4, T=T).load_state_dict(state)


def test_crafted_legacy_states_are_data_errors():
    loader = TrainLoader(token_data("array"), B=4, T=T)
    s = loader.state_dict()
    legacy = {"B": 4, "T": T, "num_samples": 5, "shuffle": True, "seed": 42, "epoch": 0, "position": 0,
              "epoch_rng": s["shard_rng"]}
    for key, value, message in [("position", 6, "sample 6 is outside 0..5"), ("position", -1, "outside"),
                                ("epoch_rng", {"key": s["shard_rng"]["key"], "pos": 10**6}, "pos 1000000 is outside"),
                                ("epoch", None, "epoch must be an integer")]:
        with pytest.raises(DataError, match=re.escape(message)):
            loader.load_state_dict({**legacy, key: value})


def test_legacy_state_still_loads():
    tokens = token_data("array")
    original = TrainLoader(tokens, B=4, T=T)
    run([original], 7)
    s = original.state_dict()
    legacy = {"B": 4, "T": T, "num_samples": 5, "shuffle": True, "seed": 42, "epoch": s["epoch"],
              "position": s["sample"], "epoch_rng": s["shard_rng"]}  # what checkpoints held before shards
    restored = TrainLoader(tokens, B=2, T=T, grad_accum=2)
    restored.load_state_dict(legacy)
    assert_same_steps(run([restored], 9), run([original], 9))


# ----------------------------------------------------------------------------------------------------
# crafted states

def good_state():
    loader = TrainLoader(token_data("shards"), B=4, T=T)
    run([loader], 2)
    return loader.state_dict()


def _set(path, value):
    def change(s):
        target = s
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


CRAFTED = [
    (_set(["sample"], 10**12), "sample 1000000000000 is outside 0.."),
    (_set(["sample"], -1), "sample -1 is outside"),
    (_set(["sample"], 1.0), "sample must be an integer"),
    (_set(["sample"], True), "sample must be an integer"),
    (_set(["epoch"], "0"), "epoch must be an integer"),
    (_set(["shard"], 3), "shard 3 is outside 0..2"),
    (_set(["shard_order"], [0, 0, 1]), "permutation of 0..2"),
    (_set(["shard_order"], [0, 1]), "permutation of 0..2"),
    (_set(["shard_order"], "012"), "permutation of 0..2"),
    (_set(["shard_file"], "other.bin"), "was at shard 'other.bin'"),
    (_set(["shard_samples"], 7), "total batches, here it has"),
    (_set(["row"], 4), "row 4 is outside 0..3"),
    (_set(["row"], 2), "2 rows into a total batch of 4"),
    (_set(["shard_rng", "pos"], 10**6), "pos 1000000 is outside 0..624"),
    (_set(["shard_rng", "pos"], -5), "pos -5 is outside"),
    (_set(["shard_rng", "key"], [1] * 623), "624 integers"),
    (_set(["shard_rng", "key"], [2**32] * 624), "624 integers"),
    (_set(["shard_rng"], None), "624 integers"),
    (_set(["total_rows"], 8), "steps are 8 rows"),
    (_set(["num_samples"], 99), "different data or batch shape"),
    (_set(["version"], 3), "version 3 is not supported"),
]


@pytest.mark.parametrize("change,message", CRAFTED)
def test_crafted_states_are_data_errors(change, message):
    state = good_state()
    change(state)
    loader = TrainLoader(token_data("shards"), B=4, T=T)
    before = loader.state_dict()
    with pytest.raises(DataError, match=re.escape(message)):
        loader.load_state_dict(state)
    assert loader.state_dict() == before  # a refused state changes nothing
    with pytest.raises(DataError, match="JSON object"):
        loader.load_state_dict([1, 2])


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=4),
                           max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(key=st.sampled_from(sorted(good_state())), value=JSON_VALUES)
def test_any_field_replaced_by_any_json_value_is_refused_or_works(key, value):
    state = good_state()
    state[key] = value
    loader = TrainLoader(token_data("shards"), B=4, T=T)
    try:
        loader.load_state_dict(state)
    except DataError:
        return
    run([loader], 8)  # accepted: it must then work (serve batches, never read out of bounds)


# ----------------------------------------------------------------------------------------------------
# shards on disk

def write_shards(tmp_path, sizes, name="ds_train_{:06d}.bin", fmt="llmc"):
    rng = np.random.default_rng(2)
    paths = []
    for i, n in enumerate(sizes):
        paths.append(tmp_path / name.format(i))
        write_tokens(paths[-1], rng.integers(0, 50257, size=n), fmt)
    return paths


def test_shards_in_sorted_order_with_llmc_draws(tmp_path):
    write_shards(tmp_path, [4 * T * 3 + 1, 4 * T * 2 + 1, 4 * T * 4 + 1])  # 3, 2 and 4 total batches
    ds = open_dataset(str(tmp_path / "ds_train_*.bin"))
    assert [f.path.name for f in ds.files] == ["ds_train_000000.bin", "ds_train_000001.bin", "ds_train_000002.bin"]
    loader = TrainLoader(ds, B=4, T=T)
    assert loader.num_samples == 9

    # llm.c by hand: reset permutes the shard order (2 draws), then each shard as it is loaded (n-1 draws)
    rng = np.random.MT19937()
    rng._legacy_seeding(42)

    def fisher_yates(items):
        for i in range(len(items) - 1, 0, -1):
            j = int(rng.random_raw()) % (i + 1)
            items[i], items[j] = items[j], items[i]
        return items

    counts, expected, shard_order = [3, 2, 4], [], [0, 1, 2]
    for _ in range(2):  # two epochs: the shard order keeps being permuted in place
        fisher_yates(shard_order)
        for s in shard_order:
            expected += [(s, k) for k in fisher_yates(list(range(counts[s])))]
    served = []
    for _ in range(18):
        x, _ = loader.next_batch()
        shard = loader.shard_order[loader.shard]
        k = int(loader.order[loader.sample - 1])
        assert np.array_equal(x.ravel(), ds.files[shard].tokens[k * 4 * T:(k + 1) * 4 * T])
        served.append((shard, k))
    assert served == expected


def test_resume_across_a_shard_boundary_and_a_renamed_shard(tmp_path):
    paths = write_shards(tmp_path, [4 * T * 2 + 1, 4 * T * 3 + 1])
    ds = open_dataset(str(tmp_path / "ds_train_*.bin"))
    for saved_at in (2, 3, 5):  # at the end of the first shard (lazy switch), just after it, at the epoch end
        original = make_loaders(ds, (2, 1, 2))
        run(original, saved_at)
        state = json.loads(json.dumps(original[0].state_dict()))
        resumed = make_loaders(ds, (1, 4, 1))
        resumed[0].load_state_dict(state)
        assert_same_steps(run(resumed, 8), run(original, 8))
    state = make_state_at(ds, (4, 1, 1), 3)  # now in the second shard of the epoch's order
    for path in paths:  # the same data under other names: the state names its shard, so this is refused
        path.rename(tmp_path / path.name.replace("ds_", "other_"))
    with pytest.raises(DataError, match=f"was at shard '{state['shard_file']}', but that shard is 'other_"):
        TrainLoader(open_dataset(str(tmp_path / "other_train_*.bin")), B=4, T=T).load_state_dict(state)
    for i, path in enumerate(paths):  # the right names, but the shards swapped contents (and sizes)
        (tmp_path / path.name.replace("ds_", "other_")).rename(paths[1 - i])
    with pytest.raises(DataError, match="total batches, here it has .* \\(different data\\?\\)"):
        TrainLoader(open_dataset(str(tmp_path / "ds_train_*.bin")), B=4, T=T).load_state_dict(state)


def test_glob_errors(tmp_path):
    with pytest.raises(DataError, match=r"nothing_\*\.bin: no files match this pattern"):
        open_dataset(str(tmp_path / "nothing_*.bin"))
    write_shards(tmp_path, [40, 40], name="mix_{:06d}.bin")
    write_tokens(tmp_path / "mix_000002.bin", np.arange(40), "int32")
    with pytest.raises(DataError, match=r"mix_\*\.bin: the shards mix token formats \(mix_000000.bin is llmc, "
                                        r"mix_000002.bin is int32\)"):
        open_dataset(str(tmp_path / "mix_*.bin"))
    write_shards(tmp_path, [4 * T * 2 + 1, 5], name="small_{:06d}.bin")
    with pytest.raises(DataError, match=r"small_000001.bin \(shard 1 of 2\): 5 tokens are too few for one batch"):
        TrainLoader(open_dataset(str(tmp_path / "small_*.bin")), B=4, T=T)
    with pytest.raises(DataError, match="too few for one total batch of B\\*grad_accum\\*world_size\\*T\\+1 = 25"):
        TrainLoader(np.zeros(24, np.uint16), B=2, T=T, grad_accum=2, world_size=2)
    with pytest.raises(DataError, match="mix dtypes|mix token dtypes"):
        TrainLoader([np.zeros(40, np.uint16), np.zeros(40, np.int32)], B=1, T=T)
    with pytest.raises(DataError, match=r"rank=2 must be an integer in 0\.\.1"):
        TrainLoader(np.zeros(40, np.uint16), B=1, T=T, rank=2, world_size=2)
    with pytest.raises(DataError, match="grad_accum=0 must be a positive integer"):
        TrainLoader(np.zeros(40, np.uint16), B=1, T=T, grad_accum=0)


def test_a_single_file_is_a_one_shard_dataset(tmp_path):
    path = write_shards(tmp_path, [100], name="one.bin")[0]
    ds = open_dataset(path)
    assert len(ds) == 1 and ds.num_tokens == 100 and ds.format == "llmc"
    assert np.array_equal(ds.files[0].tokens, open_tokens(path).tokens)


# ----------------------------------------------------------------------------------------------------
# validation over ranks

@pytest.mark.parametrize("num", [None, 1, 5, 6, 100])
def test_val_shares_add_up_to_the_single_process_batches(num):
    shards = [np.arange(3 * 2 * T + 1, dtype=np.uint16), np.arange(1000, 1000 + 4 * 2 * T + 1, dtype=np.uint16)]
    single = [x for x, _ in ValLoader(shards, B=2, T=T).batches(num)]
    assert len(single) == (7 if num is None else min(num, 7))
    assert len(single) < 4 or single[3][0, 0] == 1000  # the second shard follows the first
    for N in (2, 3, 4):
        ranks = [ValLoader(shards, B=2, T=T, rank=r, world_size=N) for r in range(N)]
        shares = [[x for x, _ in v.batches(num)] for v in ranks]
        assert [len(s) for s in shares] == [v.share(num) for v in ranks]
        assert sum(len(s) for s in shares) == len(single)
        for g, x in enumerate(single):  # round robin: global batch g is rank g % N's (g // N)-th
            assert np.array_equal(shares[g % N][g // N], x)
        # the sum/count combination gives the single-process mean
        value = lambda x: float(x.sum())  # noqa: E731 (stands in for a batch loss)
        total = np.sum([[sum(map(value, s)), len(s)] for s in shares], axis=0)
        assert total[0] / total[1] == pytest.approx(np.mean([value(x) for x in single]))


# ----------------------------------------------------------------------------------------------------
# prepare --shard-size: streaming shards, all appearing together

from tui_llm import cli
from tui_llm.cli import prepare as prepare_cli
from tui_llm.engine.data import prepare, prepare_shards
from tui_llm.engine.data import writer as dataset_writer
from tui_llm.engine.tokenizers.gpt2 import decode

EOT = 50256
TEXTS = {
    "a.txt": "\ufeffFirst Citizen:\r\nBefore we proceed, hear me speak.\r\n\r\nAll:\r\nSpeak, speak.\r\n" * 30,
    "b.txt": "Ünïcödé 日本語 🤖 text\n\nwith blank\n\n\n\nlines and a long line " + "word " * 400 + "\n",
    "c.txt": "  \n\t\n",  # whitespace only: no document
    "d.txt": "x\ny\n" * 300 + "tail without newline",
}


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in TEXTS.items():
        (folder / name).write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(prepare_shards, "READ_BYTES", 7)  # blocks split characters, "\r\n" pairs and sections
    return folder


def read_split(out, pattern):
    files = open_dataset(str(out / pattern)).files
    return [f.tokens.tolist() for f in files]


@pytest.mark.parametrize("split_on_blank_lines", [False, True])
def test_shards_hold_the_same_tokens_as_the_in_memory_prepare(corpus, tmp_path, split_on_blank_lines):
    quiet = lambda *_: None  # noqa: E731
    prepare.prepare_corpus([corpus], out_dir=tmp_path / "whole", name="c", val_fraction=0.1,
                           split_on_blank_lines=split_on_blank_lines, log=quiet)
    whole = (open_tokens(tmp_path / "whole/c_val.bin").tokens.tolist()
             + open_tokens(tmp_path / "whole/c_train.bin").tokens.tolist())
    result = prepare_shards.prepare_corpus_shards([corpus], out_dir=tmp_path / "sh", name="c", shard_size=300,
                                                  val_tokens=250, split_on_blank_lines=split_on_blank_lines, log=quiet)
    val, train = read_split(tmp_path / "sh", "c_val_*.bin"), read_split(tmp_path / "sh", "c_train_*.bin")
    assert [len(v) for v in val] == [250]
    assert all(len(t) == 300 for t in train[:-1]) and 150 < len(train[-1]) <= 450
    streamed = sum(val, []) + sum(train, [])
    assert streamed == whole
    assert (result.val_tokens, result.train_tokens) == (250, len(whole) - 250)
    assert result.train_path == tmp_path / "sh" / "c_train_*.bin"
    text = decode(streamed).replace("<|endoftext|>", "")
    assert text == "".join(t.removeprefix("\ufeff").replace("\r\n", "\n") for t in TEXTS.values() if t.strip())


def test_long_documents_are_streamed_in_pieces(tmp_path, monkeypatch):
    text = "".join(f"line {i} of a long document\n" for i in range(3000))
    (tmp_path / "long.txt").write_text(text)
    monkeypatch.setattr(prepare_shards, "READ_BYTES", 1000)
    pieces = list(prepare_shards.stream_pieces([tmp_path / "long.txt"], False, "strict", print, piece_chars=500))
    assert len(pieces) > 50 and max(len(p) for _, p in pieces) < 2000  # never the whole text at once
    assert [s for s, _ in pieces] == [True] + [False] * (len(pieces) - 1) and "".join(p for _, p in pieces) == text
    out = tmp_path / "out"
    assert prepare_cli.main([str(tmp_path / "long.txt"), "--out-dir", str(out), "--shard-size", "2k",
                             "--val-tokens", "1000"]) == 0
    tokens = sum(read_split(out, "long_val_*.bin") + read_split(out, "long_train_*.bin"), [])
    assert tokens == [EOT] + prepare.get_tokenizer().encode_ordinary(text)


def test_prepared_shards_train_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "data"
    assert prepare_cli.main([str(corpus), "--out-dir", str(out), "--name", "web", "--shard-size", "400",
                             "--val-tokens", "100"]) == 0
    printed = capsys.readouterr().out
    assert f"writing 100 tokens to {out / 'web_val_000000.bin'}" in printed
    assert "in 6 shards, val 100 tokens in 1 shard" in printed
    train = open_dataset(str(out / "web_train_*.bin"))
    loader = TrainLoader(train, B=2, T=8, grad_accum=2)
    seen = set()
    for _ in range(loader.num_samples):  # one epoch: every total batch of every shard once
        x0, x1 = loader.next_batch()[0], loader.next_batch()[0]
        shard, k = loader.shard_order[loader.shard], int(loader.order[loader.sample - 1])
        assert np.array_equal(np.concatenate([x0, x1]).ravel(), train.files[shard].tokens[k * 32:(k + 1) * 32])
        seen.add((shard, k))
    assert seen == {(s, k) for s, n in enumerate(loader.shard_samples) for k in range(n)}
    val = ValLoader(open_dataset(str(out / "web_val_*.bin")), B=2, T=8)
    assert val.num_samples == (100 - 1) // 16


def test_a_failed_prepare_leaves_the_previous_dataset_intact(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    args = [str(corpus), "--out-dir", str(out), "--name", "web", "--shard-size", "300", "--val-tokens", "100"]
    assert prepare_cli.main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) >= 4
    real_write, calls = dataset_writer.write_tokens, []

    def disk_full_on_third_shard(path, tokens, fmt):
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(path) + ".1a2b3c4d.tmp")
        return real_write(path, tokens, fmt)

    monkeypatch.setattr(dataset_writer, "write_tokens", disk_full_on_third_shard)
    (corpus / "e.txt").write_text("more text " * 500)  # the new dataset would differ
    assert prepare_cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and err.count("\n") == 1
    assert "web_train_000001.bin: No space left on device" in err  # named by its final name
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced, nothing left over


def test_two_file_prepare_failure_keeps_the_old_val_file(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("Hello world\n" * 20)
    out = tmp_path / "out"
    assert prepare_cli.main([str(tmp_path / "a.txt"), "--out-dir", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_write = dataset_writer.write_tokens

    def disk_full_for_train(path, tokens, fmt):
        if path.name.endswith("_train.bin"):
            raise OSError(28, "No space left on device", str(path))
        return real_write(path, tokens, fmt)

    monkeypatch.setattr(dataset_writer, "write_tokens", disk_full_for_train)
    (tmp_path / "a.txt").write_text("Other text\n" * 30)
    assert prepare_cli.main([str(tmp_path / "a.txt"), "--out-dir", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the val file was not replaced or deleted


def test_a_smaller_dataset_replaces_all_old_shards(corpus, tmp_path):
    out = tmp_path / "data"
    assert prepare_cli.main([str(corpus), "--out-dir", str(out), "--name", "web", "--shard-size", "200",
                             "--val-tokens", "100"]) == 0
    many = len(list(out.glob("web_train_*.bin")))
    assert prepare_cli.main([str(corpus / "a.txt"), "--out-dir", str(out), "--name", "web", "--shard-size", "200",
                             "--val-tokens", "100"]) == 0
    few = sorted(p.name for p in out.glob("web_train_*.bin"))
    assert len(few) < many and few == [f"web_train_{i:06d}.bin" for i in range(len(few))]
    assert sum(read_split(out, "web_val_*.bin") + read_split(out, "web_train_*.bin"), []) == \
        [EOT] + prepare.get_tokenizer().encode_ordinary(TEXTS["a.txt"][1:].replace("\r\n", "\n"))


def test_bad_utf8_is_found_across_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(prepare_shards, "READ_BYTES", 5)
    (tmp_path / "bad.txt").write_bytes("ab日本cdefgh".encode() + b"\xff" + b"tail")
    with pytest.raises(prepare.PrepareError, match=r"bad\.txt: not valid UTF-8 at byte 14 \(b'\\xfftai'\)"):
        list(prepare_shards.stream_pieces([tmp_path / "bad.txt"], False, "strict", print))


@pytest.mark.parametrize("args, message", [
    ([], "the following arguments are required: INPUT"),
    (["{f}", "--format", "x"], "argument --format: invalid choice: 'x'"),
    (["{f}", "--bogus"], "unrecognized arguments: --bogus"),
    (["{f}", "--shard-size", "abc"], "argument --shard-size: 'abc' is not a whole number of tokens"),
    (["{f}", "--shard-size", "0"], "--shard-size must be a number of tokens in 1..2,147,483,647, got 0"),
    (["{f}", "--shard-size", "1M", "--val-fraction", "0.2"], "--val-fraction needs the whole corpus in memory"),
    (["{f}", "--val-tokens", "5"], "--val-tokens only applies with --shard-size"),
    (["{f}", "--shard-size", "100", "--val-tokens", "1e9"], "the split leaves the training set empty"),
    (["tinyshakespeare", "--shard-size", "5"], "--shard-size: only for your own text files"),
    (["{d}/nothing"], "nothing: no such file or directory"),
])
@pytest.mark.parametrize("entry", ["prepare_cli", "tui-llm"])
def test_prepare_argument_errors_are_one_line(tmp_path, capsys, args, message, entry):
    (tmp_path / "t.txt").write_text("Hello world\n" * 10)
    args = [a.format(f=tmp_path / "t.txt", d=tmp_path) for a in args]
    args += ["--out-dir", str(tmp_path / "out")] if args else []
    status = prepare_cli.main(args) if entry == "prepare_cli" else cli.main(["prepare", *args])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "usage" not in err
    assert message in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
