"""Training on packed conversations: the masked loss averaged over the counted tokens of the whole
optimizer step, so gradient accumulation and `mpiexec -n 2` give the single-process losses; resume is
exact; a mask that does not match its tokens is refused at the start; --document-attention for plain
text; and, end to end, a tiny model that learns to answer in a fixed form through `tui-llm chat --no-ui`."""

from __future__ import annotations

import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.run_helpers import run as run_command
from tui_llm.engine.data.tokens import write_tokens

pytestmark = pytest.mark.slow

SMOL = Path(__file__).resolve().parent / "fixtures" / "chat" / "smollm2"  # a 700-token tokenizer with ChatML
MPIEXEC = shutil.which("mpiexec")
WORDS = ["apple", "river", "stone", "cloud", "tiger", "lamp", "green", "seven", "music", "bread"]
TINY = ["--no-ui", "--arch", "llama", "--model", "d2", "--tokenizer", str(SMOL), "-t", "64", "--max-seq-len", "64",
        "--threads", "1", "--lr", "3e-3", "--val-every", "4", "--val-batches", "2", "--sample-every", "0",
        "--save-every", "0"]


def cli(*args, ranks=1, stdin=None):
    cmd = [sys.executable, "-m", "tui_llm", *map(str, args)]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    kw = {} if stdin is None else {"stdin": stdin}
    return run_command(cmd, **kw)


def records(run, kind):
    return [r for r in map(json.loads, (Path(run) / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def losses(run):
    return [r["loss"] for r in records(run, "train")], [r["loss"] for r in records(run, "val")]


def write_conversations(path: Path, n: int, seed: int = 0, varied: bool = True) -> None:
    """Questions whose answer is always "ANSWER: <the word asked for>"; varied lengths (several to a row)."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            word = rng.choice(WORDS)
            padding = " please" * rng.randint(0, 3) if varied else ""
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Say {word}{padding}."},
                                             {"role": "assistant", "content": f"ANSWER: {word}"}]}) + "\n")


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    d = tmp_path_factory.mktemp("chatdata")
    write_conversations(d / "conv.jsonl", 300)
    done = cli("prepare", d / "conv.jsonl", "--chat", "--tokenizer", SMOL, "--chat-template", "chatml",
               "--seq-len", "64", "--out-dir", d, "--val-fraction", "0.2")
    assert done.returncode == 0, done.stderr
    return d / "conv_train.bin"


def test_accumulation_and_resume_on_masked_packed_rows_equal_the_whole_batch(packed, tmp_path):
    whole = cli(packed, *TINY, "-b", "4", "--steps", "8", "--out-dir", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    accum = cli(packed, *TINY, "-b", "1", "-d", str(4 * 64), "--steps", "8", "--out-dir", tmp_path / "accum")
    assert accum.returncode == 0, accum.stderr
    (t1, v1), (t2, v2) = losses(tmp_path / "whole"), losses(tmp_path / "accum")
    assert len(t1) == 8 and len(v1) == 3
    np.testing.assert_allclose(t2, t1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(v2, v1, rtol=0, atol=1e-5)
    counted = [r["loss_tokens"] for r in records(tmp_path / "whole", "train")]
    assert counted == [r["loss_tokens"] for r in records(tmp_path / "accum", "train")]
    assert all(0 < c < 4 * 64 for c in counted)  # the replies only
    assert f"loss_tokens {counted[-1]:,}" in whole.stdout  # the headless line says it

    part = cli(packed, *TINY, "-b", "1", "-d", str(4 * 64), "--steps", "4", "--out-dir", tmp_path / "part")
    assert part.returncode == 0, part.stderr
    rest = cli("--resume", tmp_path / "part", "--no-ui", "--steps", "8")
    assert rest.returncode == 0, rest.stderr
    np.testing.assert_allclose(losses(tmp_path / "part")[0], t1, rtol=0, atol=1e-5)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="mpiexec is not installed (pip install mpich)")
def test_two_ranks_on_masked_packed_rows_equal_one_process(packed, tmp_path):
    one = cli(packed, *TINY, "-b", "4", "--steps", "6", "--out-dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = cli(packed, *TINY, "-b", "1", "-d", str(4 * 64), "--steps", "6", "--out-dir", tmp_path / "two", ranks=2)
    assert two.returncode == 0, two.stderr
    (t1, v1), (t2, v2) = losses(tmp_path / "one"), losses(tmp_path / "two")
    np.testing.assert_allclose(t2, t1, rtol=0, atol=1e-5)
    np.testing.assert_allclose(v2, v1, rtol=0, atol=1e-5)
    assert [r["loss_tokens"] for r in records(tmp_path / "two", "train")] == \
        [r["loss_tokens"] for r in records(tmp_path / "one", "train")]  # counted over both ranks


def test_a_mask_that_does_not_match_its_tokens_is_refused_at_the_start(packed, tmp_path):
    tokens = np.fromfile(packed, dtype=np.uint16, offset=1024)
    write_tokens(tmp_path / "other_train.bin", np.roll(tokens, 1))
    shutil.copy(packed.with_suffix(".mask"), tmp_path / "other_train.mask")
    shutil.copy(packed.parent / "conv.tokenizer.json", tmp_path / "other.tokenizer.json")  # the same tokenizer
    done = cli(tmp_path / "other_train.bin", *TINY, "-b", "4", "--steps", "2", "--out-dir", tmp_path / "run")
    assert done.returncode == 2, done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "other_train.mask" in lines[0] and "prepare the data again" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()
    # packed with another row length
    done = cli(packed, *[a if a != "64" else "32" for a in TINY], "-b", "4", "--steps", "2", "--out-dir", tmp_path / "r2")
    assert done.returncode == 2 and "train with -t 64" in done.stderr


def test_document_attention_for_plain_text_trains_and_resumes(tmp_path):
    rng = np.random.default_rng(3)
    docs = [np.concatenate([[50256], rng.integers(0, 50256, int(rng.integers(3, 20)))]) for _ in range(200)]
    tokens = np.concatenate(docs)
    write_tokens(tmp_path / "t_train.bin", tokens[:-300])
    write_tokens(tmp_path / "t_val.bin", tokens[-300:])
    args = ["--no-ui", "--model", "d2", "-t", "16", "--max-seq-len", "32", "--threads", "1", "--init-style", "numpy",
            "--val-every", "4", "--sample-every", "0", "--save-every", "0", "-b", "2"]
    plain = cli(tmp_path / "t_train.bin", *args, "--steps", "4", "--out-dir", tmp_path / "plain")
    docs_run = cli(tmp_path / "t_train.bin", *args, "--document-attention", "--steps", "4", "--out-dir", tmp_path / "docs")
    assert plain.returncode == 0 and docs_run.returncode == 0, docs_run.stderr
    (tp, _), (td, _) = losses(tmp_path / "plain"), losses(tmp_path / "docs")
    assert tp[0] != td[0]  # the documents no longer see each other
    assert records(tmp_path / "docs", "start")[0]["run_config"]["document_attention"] is True
    again = cli("--resume", tmp_path / "docs", "--no-ui", "--steps", "6")
    assert again.returncode == 0, again.stderr
    changed = cli("--resume", tmp_path / "docs", "--no-ui", "--steps", "8", "--document-attention")
    assert changed.returncode == 0, changed.stderr  # the same value given again is fine


def test_a_tiny_model_learns_to_answer_in_the_trained_form(tmp_path):
    """End to end: JSONL -> prepare --chat -> train (masked) -> tui-llm chat --no-ui, greedy."""
    write_conversations(tmp_path / "conv.jsonl", 400, seed=1, varied=False)
    done = cli("prepare", tmp_path / "conv.jsonl", "--chat", "--tokenizer", SMOL, "--chat-template", "chatml",
               "--seq-len", "64", "--out-dir", tmp_path / "data")
    assert done.returncode == 0, done.stderr
    train = cli(tmp_path / "data" / "conv_train.bin", *TINY, "-b", "4", "--steps", "150", "--val-every", "50",
                "--chat-template", "chatml", "--out-dir", tmp_path / "run")
    assert train.returncode == 0, train.stderr
    questions = ["Say river.", "Say seven.", "Say lamp.", "Say tiger."]
    (tmp_path / "q.txt").write_text("\n/reset\n".join(questions) + "\n")  # trained on one question a conversation
    with open(tmp_path / "q.txt") as stdin:
        chat = cli("chat", tmp_path / "run", "--no-ui", "--temperature", "0", "--sample-len", "24", stdin=stdin)
    assert chat.returncode == 0, chat.stderr
    replies = chat.stdout.splitlines()
    assert replies == [f"ANSWER: {q.split()[1][:-1]}" for q in questions], chat.stdout
    assert "im_start" not in chat.stdout and "user" not in chat.stdout  # it ends its turn, never writes the user's


def test_the_trainer_answers_chat_now_between_steps(packed, tmp_path):
    import tui_llm
    from tui_llm.engine import events as ev
    from tui_llm.engine.training.run_config import ConfigError

    settings = dict(train_file=str(packed), arch="llama", model="d2", tokenizer=str(SMOL), seq_len=64,
                    max_seq_len=64, batch_size=4, steps=3, val_every=0, sample_every=0, save_every=0, threads=1,
                    sample_len=8, temperature=0.0)
    with pytest.raises(ConfigError, match="missing.jinja"):
        tui_llm.Trainer(tui_llm.RunConfig(**settings, chat_template=str(tmp_path / "missing.jinja"),
                                          out_dir=str(tmp_path / "bad")))
    trainer = tui_llm.Trainer(tui_llm.RunConfig(**settings, chat_template="chatml", out_dir=str(tmp_path / "run")))
    got: list = []
    trainer.send(ev.ChatNow(messages=({"role": "user", "content": "Say lamp."},)))
    trainer.run(got.append)
    reply, = [e for e in got if isinstance(e, ev.ChatReply)]
    assert reply.step == 0 and not reply.message and len(reply.token_ids) <= 8
    recorded = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
                if r["type"] == "chat"]
    assert [ev.event_from_json(r) for r in recorded] == [reply]  # in the history, as every event
    after = trainer.chat([{"role": "user", "content": "Say lamp. " * 40}])  # the final weights, after the run
    assert after.text == "" and "context is 64" in after.message
