"""Packed chat rows and their .mask file: the packer, the format (known bytes, round trips, refusals,
fuzzing), the training view of a row, and `prepare --chat` end to end (engine and CLI)."""

import gzip
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tui_llm.engine.data.packed import (
    DOC_START,
    LOSS,
    PAD,
    LongDocument,
    PackedFile,
    RowPacker,
    mask_bytes,
    mask_path,
    open_mask,
    row_batch,
    write_mask,
)
from tui_llm.engine.data.prepare import PrepareError
from tui_llm.engine.data.prepare_chat import prepare_chat
from tui_llm.engine.data.tokens import DataError, write_tokens
from tui_llm.engine.tokenizers.lookup import load_tokenizer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "chat"
SMOL = FIXTURES / "smollm2"


def docs_of(rows):
    """Each row's documents as (start, length, is_padding) from its flags."""
    out = []
    for _, flags in rows:
        starts = list(np.flatnonzero(flags & DOC_START)) + [len(flags)]
        out.append([(int(s), int(e - s), bool(flags[s] & PAD)) for s, e in zip(starts, starts[1:])])
    return out


# ----------------------------------------------------------------------------------------------------
# the packer

def test_documents_are_never_split_and_rows_are_exactly_T():
    packer = RowPacker(8, pad_id=99, open_rows=1)
    rows = []
    for n in (3, 4, 2, 8, 1 + 1, 5):
        ids = np.arange(100, 100 + n)
        rows += packer.add(ids, [1] * n)
    rows += packer.finish()
    assert all(len(t) == 8 and len(f) == 8 for t, f in rows)
    assert docs_of(rows) == [[(0, 3, False), (3, 4, False), (7, 1, True)],
                             [(0, 2, False), (2, 6, True)],
                             [(0, 8, False)],
                             [(0, 2, False), (2, 5, False), (7, 1, True)]]
    for tokens, flags in rows:
        assert not (flags[(flags & DOC_START) != 0] & LOSS).any()     # a document's first token: no loss
        assert (tokens[(flags & PAD) != 0] == 99).all() and not (flags[(flags & PAD) != 0] & LOSS).any()
    assert (packer.documents, packer.rows, packer.padding) == (6, 4, 1 + 6 + 1)


def test_first_fit_fills_earlier_rows():
    packer = RowPacker(8, pad_id=0, open_rows=4)
    rows = []
    for n in (6, 6, 2, 2):
        rows += packer.add(np.full(n, n), [1] * n)
    rows += packer.finish()
    assert docs_of(rows) == [[(0, 6, False), (6, 2, False)], [(0, 6, False), (6, 2, False)]]
    assert packer.padding == 0


def test_long_documents_truncate_drop_or_stop():
    loss = [0] * 6 + [1] * 4
    packer = RowPacker(8, 0, "truncate")
    rows = packer.add(np.arange(10), loss) + packer.finish()
    assert rows[0][0].tolist() == list(range(8)) and packer.truncated == 1
    packer = RowPacker(6, 0, "truncate")  # the reply is cut away: nothing left to train on
    assert packer.add(np.arange(10), loss) + packer.finish() == [] and packer.emptied == 1
    packer = RowPacker(8, 0, "drop")
    assert packer.add(np.arange(10), loss) + packer.finish() == [] and packer.dropped == 1
    with pytest.raises(LongDocument, match="10 tokens, longer than a row of 8"):
        RowPacker(8, 0, "error").add(np.arange(10), loss)
    with pytest.raises(ValueError):
        RowPacker(1, 0)


# ----------------------------------------------------------------------------------------------------
# the mask file

def packed_rows(T=8, sizes=(3, 4, 2, 8, 5), seed=0):
    rng = np.random.default_rng(seed)
    packer = RowPacker(T, pad_id=1, open_rows=1)
    rows = []
    for n in sizes:
        rows += packer.add(rng.integers(2, 500, n), rng.integers(0, 2, n) | (np.arange(n) == n - 1))
    rows += packer.finish()
    return np.concatenate([t for t, _ in rows]), np.concatenate([f for _, f in rows])


def write_pair(tmp_path, tokens, flags, T=8, name="d"):
    bin_path = tmp_path / f"{name}.bin"
    write_tokens(bin_path, tokens)
    write_mask(mask_path(bin_path), flags, T, tokens)
    return bin_path


def test_mask_file_known_bytes_and_round_trip(tmp_path):
    tokens, flags = packed_rows()
    bin_path = write_pair(tmp_path, tokens, flags)
    raw = mask_path(bin_path).read_bytes()
    assert mask_path(bin_path).name == "d.mask" and len(raw) == 64 + len(tokens)
    crc = zlib.crc32(np.concatenate([tokens[:8], tokens[-8:]]).astype("<u4").tobytes())
    assert raw[:64] == b"TUIMASK\0" + struct.pack("<IIQQQI", 1, 8, len(tokens), int((flags & 2).astype(bool).sum()),
                                                   int((flags & 1).astype(bool).sum()), crc) + bytes(20)
    assert raw[64:] == flags.tobytes()
    packed = PackedFile.open(bin_path, vocab_size=500)
    assert packed.num_rows == len(tokens) // 8 and packed.row_tokens == 8
    assert np.array_equal(packed.mask.flags, flags) and np.array_equal(packed.tokens.tokens, tokens)


def corrupt(raw: bytes, offset: int, value: bytes) -> bytes:
    return raw[:offset] + value + raw[offset + len(value):]


@pytest.mark.parametrize("edit, says", [
    (lambda r: r[:40], "not a tui-llm loss mask file"),
    (lambda r: corrupt(r, 0, b"NOTMASK\0"), "not a tui-llm loss mask file"),
    (lambda r: corrupt(r, 8, struct.pack("<I", 2)), "unsupported mask file version 2"),
    (lambda r: corrupt(r, 12, struct.pack("<I", 1)), "row length 1"),
    (lambda r: r[:-1], "truncated or corrupt"),
    (lambda r: corrupt(r, 16, struct.pack("<Q", 2**62)), "truncated or corrupt"),
    (lambda r: corrupt(r, 12, struct.pack("<I", 7)), "not a whole number of rows of 7"),
    (lambda r: corrupt(r, 44, b"\1"), "reserved header bytes"),
    (lambda r: corrupt(r, 64 + 1, b"\x08"), "unknown flag bits in row 0"),
    (lambda r: corrupt(r, 64 + 8, b"\x01"), "row 1 does not start a document"),
    (lambda r: corrupt(r, 64 + 8, b"\x03"), "row 1 counts the loss on a document start"),
    (lambda r: corrupt(r, 64 + 1, b"\x04"), "padding that does not begin a padding run"),
    (lambda r: corrupt(r, 24, struct.pack("<Q", 999)), "the header counts 999 documents"),
])
def test_a_damaged_mask_is_refused_in_one_line(tmp_path, edit, says):
    tokens, flags = packed_rows()
    bin_path = write_pair(tmp_path, tokens, flags)
    m = mask_path(bin_path)
    m.write_bytes(edit(m.read_bytes()))
    with pytest.raises(DataError, match=says) as e:
        PackedFile.open(bin_path, vocab_size=500)
    assert "\n" not in str(e.value) and str(m) in str(e.value)


def test_a_mask_of_another_token_file_is_refused(tmp_path):
    tokens, flags = packed_rows()
    bin_path = write_pair(tmp_path, tokens, flags)
    other_tokens, other_flags = packed_rows(sizes=(8, 8), seed=1)
    write_mask(mask_path(bin_path), other_flags, 8, other_tokens)
    with pytest.raises(DataError, match="a mask for 16 tokens, but .* has 32"):
        PackedFile.open(bin_path, vocab_size=500)
    same_size = tokens.copy()
    same_size[0] += 1  # same count, other tokens
    write_mask(mask_path(bin_path), flags, 8, same_size)
    with pytest.raises(DataError, match="written for other tokens"):
        PackedFile.open(bin_path, vocab_size=500)
    mask_path(bin_path).unlink()
    with pytest.raises(DataError, match="d.mask: no such file"):
        PackedFile.open(bin_path, vocab_size=500)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_fuzz_damaged_masks_are_refused_or_valid(tmp_path, data):
    tokens, flags = packed_rows()
    raw = bytearray(mask_bytes(flags, 8, tokens))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    raw = bytes(raw[:data.draw(st.integers(0, len(raw)))])
    path = tmp_path / "f.mask"
    path.write_bytes(raw)
    try:
        mask = open_mask(path)
    except DataError as e:
        assert "\n" not in str(e)
        return
    f = np.asarray(mask.flags).reshape(-1, mask.row_tokens)  # whatever opened keeps every promise
    assert (f[:, 0] & DOC_START).all() and not ((f & LOSS) & ((f & (DOC_START | PAD)) != 0)).any()
    assert int(np.count_nonzero(f & LOSS)) == mask.num_loss_tokens


# ----------------------------------------------------------------------------------------------------
# the training view of rows

def test_row_batch_against_a_plain_loop():
    tokens, flags = packed_rows(T=8, sizes=(3, 4, 2, 8, 5, 1 + 2, 6))
    T, rows = 8, [3, 0, 2]
    x, y, weight, doc, pos = row_batch(tokens, flags, rows, T, pad_id=-1)
    for b, r in enumerate(rows):
        row, f = tokens[r * T:(r + 1) * T], flags[r * T:(r + 1) * T]
        d = p = -1
        for t in range(T):
            if f[t] & DOC_START:
                d, p = d + 1, 0
            else:
                p += 1
            assert (x[b, t], doc[b, t], pos[b, t]) == (row[t], d, p)
            if t + 1 < T:
                assert y[b, t] == row[t + 1] and weight[b, t] == float(bool(f[t + 1] & LOSS))
                if weight[b, t]:
                    assert not f[t + 1] & DOC_START  # a counted prediction never crosses documents
            else:
                assert y[b, t] == -1 and weight[b, t] == 0
    assert x.dtype == y.dtype == doc.dtype == pos.dtype == np.int32 and weight.dtype == np.float32


# ----------------------------------------------------------------------------------------------------
# prepare --chat

CHATS = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
         for i in range(40)]


def write_chats(path, records=CHATS):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_prepare_chat_rows_hold_the_conversations_and_their_replies(tmp_path):
    src = write_chats(tmp_path / "chats.jsonl")
    tok = load_tokenizer(SMOL)
    log = []
    r = prepare_chat([src], tmp_path / "out", seq_len=128, tokenizer=tok, val_fraction=0.25, log=log.append)
    assert r.examples == 40 and r.skipped == 0 and r.val_rows >= 1 and r.train_rows >= 1
    assert any("chats.jsonl: conversational records (messages)" in line for line in log)
    assert (tmp_path / "out" / "chats.tokenizer.json").is_file()
    texts, answers = [], []
    for path in (r.val_path, r.train_path):  # validation is the first rows
        packed = PackedFile.open(path, vocab_size=tok.vocab_size)
        x, y, weight, doc, pos = packed.batch(range(packed.num_rows))
        for b in range(len(x)):
            for d in range(doc[b].max() + 1):
                in_doc = doc[b] == d
                text = tok.decode(x[b][in_doc])
                if not text.startswith("<|im_end|>"):  # not the padding
                    texts.append(text)
            answers.append(tok.decode(y[b][weight[b] > 0]))
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    assert texts == [f"{system}<|im_start|>user\nQuestion {i}?<|im_end|>\n<|im_start|>assistant\nAnswer {i}.<|im_end|>\n"
                     for i in range(40)]
    assert "".join(answers) == "".join(f"Answer {i}.<|im_end|>\n" for i in range(40))


def test_prepare_chat_shards_gzip_and_stale_shards(tmp_path):
    src = tmp_path / "chats.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in CHATS)
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("chats_train_000009.bin", "chats_train_000009.mask"):
        (out / stale).write_bytes(b"old")
    tok = load_tokenizer(SMOL)
    r = prepare_chat([src], out, seq_len=64, tokenizer=tok, shard_size=64 * 4, val_tokens=64 * 2, log=lambda s: None,
                     template_kwargs={}, chat_template=FIXTURES / "chatml_generation.jinja")
    names = sorted(p.name for p in out.iterdir())
    assert "chats_train_000009.bin" not in names and "chats_train_000009.mask" not in names
    bins = [n for n in names if n.endswith(".bin")]
    assert names == sorted(bins + [n[:-4] + ".mask" for n in bins] + ["chats.tokenizer.json"])
    assert r.examples == 40 and r.val_rows == 2 and r.train_rows == 20 - 2  # two conversations fit a 64-token row
    rows = [PackedFile.open(out / n, vocab_size=tok.vocab_size).num_rows for n in bins if "_train_" in n]
    assert sum(rows) == r.train_rows and all(2 <= n <= 6 for n in rows)


def test_prepare_chat_plain_text_and_prompt_completion_and_train_on_all(tmp_path):
    texts = write_chats(tmp_path / "docs.jsonl", [{"text": "To be, or not to be."}] * 3)
    pc = write_chats(tmp_path / "pc.jsonl", [{"prompt": "Q?", "completion": "A."}] * 3)
    tok = load_tokenizer(SMOL)
    r = prepare_chat([texts, pc], tmp_path / "out", seq_len=64, tokenizer=tok, val_fraction=0.5, log=lambda s: None,
                     open_rows=1)
    assert r.shapes == {str(texts): "text", str(pc): "prompt-completion"}
    counted = ""
    for path in (r.val_path, r.train_path):
        packed = PackedFile.open(path, vocab_size=tok.vocab_size)
        x, y, w, doc, pos = packed.batch(range(packed.num_rows))
        counted += "".join(tok.decode(y[b][w[b] > 0]) for b in range(len(x)))
    doc_ids = tok.encode_document("To be, or not to be.")  # a text document: every token but its first
    assert counted == tok.decode(doc_ids[1:]) * 3 + "A.<|im_end|>\n" * 3
    r = prepare_chat([pc], tmp_path / "all", seq_len=64, tokenizer=tok, val_fraction=0.5, train_on="all", open_rows=1,
                     log=lambda s: None)
    assert r.loss_tokens == 3 * (len(tok.tokenizer.encode(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nA.<|im_end|>\n", add_special_tokens=False).ids) - 1)


def test_prepare_chat_refuses_and_leaves_nothing_behind(tmp_path):
    records = CHATS[:5] + [{"messages": [{"role": "user", "content": "no reply"}]}] + CHATS[5:]
    src = write_chats(tmp_path / "chats.jsonl", records)
    out = tmp_path / "out"
    with pytest.raises(PrepareError, match=r"chats.jsonl:6: no assistant message.*--errors skip"):
        prepare_chat([src], out, seq_len=128, tokenizer=load_tokenizer(SMOL), log=lambda s: None)
    assert list(out.iterdir()) == []
    r = prepare_chat([src], out, seq_len=128, tokenizer=load_tokenizer(SMOL), errors="skip", log=lambda s: None)
    assert r.skipped == 1 and r.examples == 40
    with pytest.raises(PrepareError, match=r"chats.jsonl:1: .*longer than a row of 16"):
        prepare_chat([src], tmp_path / "o2", seq_len=16, tokenizer=load_tokenizer(SMOL), on_long="error", log=lambda s: None)
    with pytest.raises(PrepareError, match="nothing to train on"):
        prepare_chat([src], tmp_path / "o3", seq_len=16, tokenizer=load_tokenizer(SMOL), errors="skip", log=lambda s: None)
    with pytest.raises(PrepareError, match="training set empty"):
        prepare_chat([write_chats(tmp_path / "one.jsonl", CHATS[:1])], tmp_path / "o4", seq_len=128,
                     tokenizer=load_tokenizer(SMOL), log=lambda s: None)


def run_prepare(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tui_llm", "prepare", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


@pytest.mark.slow
def test_cli_chat_bad_input_is_one_line_and_exit_2(tmp_path):
    good = write_chats(tmp_path / "chats.jsonl")
    bad = write_chats(tmp_path / "bad.jsonl", CHATS[:2])
    with open(bad, "a") as f:
        f.write('{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}\n')
    template = tmp_path / "raises.jinja"
    template.write_text("{{ raise_exception('no system messages here') }}")
    smol = ["--tokenizer", SMOL, "--out-dir", tmp_path / "out"]
    cases = [
        ((bad, "--chat", *smol), "bad.jsonl:3: message 1 (user) has no content"),
        ((good, "--chat", "--out-dir", tmp_path / "out"), "GPT-2's tokenizer has no chat template"),
        ((good, "--chat", *smol, "--chat-template", template), "chats.jsonl:1: the chat template refused this "
                                                               "conversation: no system messages here"),
        ((good, "--seq-len", "64", *smol), "--seq-len: only with --chat"),
        ((good, "--chat", *smol, "--errors", "replace"), "--errors replace is for text"),
        ((good, "--chat", *smol, "--seq-len", "16", "--on-long", "error"), "longer than a row of 16"),
        ((good, "--chat", *smol, "--train-on", "everything"), "invalid choice: 'everything'"),
        ((tmp_path / "missing.jsonl", "--chat", *smol), "missing.jsonl: no such file or directory"),
    ]
    for args, says in cases:
        r = run_prepare(*args, cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    r = run_prepare(bad, "--chat", *smol, "--errors", "skip", "--seq-len", "128", cwd=tmp_path)
    assert r.returncode == 0 and "skipped " in r.stdout and "bad.jsonl:3" in r.stdout, r.stderr
    assert (tmp_path / "out" / "bad_train.mask").is_file()
