"""Talking to a model: the engine's Chat (end of turn, streaming, hold-back), typed commands, saving,
the chat screen with Pilot, and `tui-llm chat --no-ui` / `sample --chat` as subprocesses."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tests.run_helpers import run_cli
from tui_llm.chat_app import ChatApp
from tui_llm.engine.formats.llmc import write_llmc
from tui_llm.engine.models.gpt2 import GPT
from tui_llm.engine.models.gpt2_config import GPTConfig
from tui_llm.engine.tokenizers.gpt2 import get_tokenizer
from tui_llm.engine.training.chat import (
    Chat,
    ChatError,
    Conversation,
    _held_back,
    end_of_turn_text,
    parse_command,
    save_conversation,
)
from tui_llm.widgets.chat import ChatLog

ENC = get_tokenizer()


class ScriptedModel:
    """A 'model' whose next token is always the next one of a script (then the end-of-text token)."""

    def __init__(self, script: list[int], max_seq_len: int = 256):
        self.script = script
        self.config = SimpleNamespace(vocab_size=50257, padded_vocab_size=50304, max_seq_len=max_seq_len)
        self.prompt_len = None

    def new_kv_cache(self, max_tokens=None):
        return SimpleNamespace(max_tokens=max_tokens or self.config.max_seq_len)

    def extend(self, cache, tokens, t0):
        if t0 == 0:
            self.prompt_len = len(tokens)
        k = t0 + len(tokens) - self.prompt_len  # tokens generated so far
        logits = np.zeros(self.config.padded_vocab_size, np.float32)
        logits[self.script[k] if k < len(self.script) else ENC.eot_token] = 10.0
        return logits


def scripted_chat(reply_text: str, **kw) -> Chat:
    return Chat(ScriptedModel(ENC.encode(reply_text, allowed_special="all"), **kw), ENC, "chatml")


def test_end_of_turn_of_chatml_and_stop_on_its_text():
    chat = scripted_chat("Hi there!<|im_end|>\n<|im_start|>user\nmore")
    assert end_of_turn_text(chat.encoder) == "<|im_end|>"
    pieces: list[str] = []
    reply = chat.reply([{"role": "user", "content": "hello"}], sample_len=50, temperature=0, on_text=pieces.append)
    assert reply.text == "Hi there!" and reply.stopped == "end_of_turn"
    assert "".join(pieces) == "Hi there!"
    assert not any("<|" in p for p in pieces)  # the end-of-turn text never shows, even in part
    assert len(pieces) >= 2  # streamed, not all at once


def test_reply_limits_eos_and_context():
    chat = scripted_chat("one two three four five six")
    reply = chat.reply([{"role": "user", "content": "count"}], sample_len=3, temperature=0)
    assert reply.stopped == "sample_len" and len(reply.token_ids) == 3 and reply.text == "one two three"
    chat = scripted_chat("short")  # then the end-of-text token: a stop token
    reply = chat.reply([{"role": "user", "content": "x"}], sample_len=50, temperature=0)
    assert reply.text == "short" and reply.stopped == "end_of_turn"
    tiny = scripted_chat("x", max_seq_len=8)
    with pytest.raises(ChatError, match="context is 8"):
        tiny.reply([{"role": "user", "content": "a long question that fills the context"}], sample_len=5)
    ending = scripted_chat("Hi<|im_end|>")  # cut while writing the end of turn: that beginning is left out
    cut = len(ENC.encode("Hi<|im_"))
    reply = ending.reply([{"role": "user", "content": "x"}], sample_len=cut, temperature=0)
    assert reply.stopped == "sample_len" and reply.text == "Hi"
    stopped = scripted_chat("a b c d e f g h")
    reply = stopped.reply([{"role": "user", "content": "x"}], sample_len=50, temperature=0, cancelled=lambda: True)
    assert reply.stopped == "cancelled" and len(reply.token_ids) == 1


def test_held_back_is_the_longest_prefix_of_the_stop_text():
    assert _held_back("abc<|im", "<|im_end|>") == 4
    assert _held_back("abc<", "<|im_end|>") == 1
    assert _held_back("abc", "<|im_end|>") == 0
    assert _held_back("abc<", None) == 0


def test_typed_commands():
    assert parse_command("hello") is None
    assert parse_command("//not a command") is None
    assert parse_command("/reset") == ("reset", "")
    assert parse_command("/save  out.jsonl ") == ("save", "out.jsonl")
    for bad, match in (("/save", "needs a file"), ("/reset now", "no argument"), ("/frobnicate", "unknown command")):
        with pytest.raises(ChatError, match=match):
            parse_command(bad)
    conversation = Conversation(system="be brief")
    assert conversation.ask("//x")[-1] == {"role": "user", "content": "/x"}


def test_conversation_save_round_trip_and_refusals(tmp_path):
    conversation = Conversation(system="be brief")
    asked = conversation.ask("hi")
    conversation.answered(asked, "hello ✓")
    path = conversation.save(tmp_path / "c.jsonl")
    assert json.loads(path.read_text(encoding="utf-8")) == {"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello ✓"}]}
    assert [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]  # no temporary left
    with pytest.raises(ChatError, match="is a directory"):
        save_conversation(tmp_path, [])
    with pytest.raises(ChatError, match="no such directory"):
        save_conversation(tmp_path / "nope" / "c.jsonl", [])
    conversation.reset()
    assert conversation.messages == [{"role": "system", "content": "be brief"}]


# ------------------------------------------------------------------------------------------------
# the chat screen (Pilot)

class GatedChat:
    """A Chat stand-in that streams its reply in two parts: the second only once the test opens the gate."""

    def __init__(self):
        self.gate = threading.Event()
        self.asked: list = []

    def reply(self, asked, rng=None, on_text=None, cancelled=None, **settings):
        self.asked.append(asked)
        on_text("Hello")
        self.gate.wait(10)
        on_text(" world")
        return SimpleNamespace(text="Hello world", stopped="end_of_turn", tok_per_s=12.5)


async def until(pilot, condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.02)


@pytest.mark.slow
async def test_chat_screen_streams_a_reply_resets_and_saves(tmp_path):
    chat = GatedChat()
    app = ChatApp(chat, Conversation(system="be nice"), {"sample_len": 32}, rng=None)
    async with app.run_test(size=(100, 30)) as pilot:
        log = app.screen.query_one(ChatLog)
        await until(pilot, lambda: "system: be nice" in log.transcript(), "the system prompt")
        await pilot.press(*"hi there", "enter")
        await until(pilot, lambda: "assistant: Hello" in log.transcript(), "the first part of the reply")
        assert "Hello world" not in log.transcript()  # streamed: shown before the reply is finished
        assert app.chat_screen.busy
        chat.gate.set()
        await until(pilot, lambda: "assistant: Hello world" in log.transcript() and not app.chat_screen.busy,
                    "the whole reply")
        assert chat.asked[0] == [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi there"}]
        assert app.chat_screen.conversation.turns == 1

        await pilot.press(*f"/save {tmp_path / 'c.jsonl'}", "enter")
        await until(pilot, lambda: "saved 1 turn" in log.transcript(), "the save note")
        saved = json.loads((tmp_path / "c.jsonl").read_text())
        assert saved["messages"][-1] == {"role": "assistant", "content": "Hello world"}

        await pilot.press(*"/reset", "enter")
        await until(pilot, lambda: "Hello world" not in log.transcript(), "the reset")
        assert app.chat_screen.conversation.messages == [{"role": "system", "content": "be nice"}]
        assert "conversation reset" in log.transcript()

        await pilot.press(*"/nope", "enter")
        await until(pilot, lambda: "unknown command /nope" in log.transcript(), "the unknown-command note")
        await pilot.press("ctrl+a", "ctrl+k", *"/quit", "enter")
        await until(pilot, lambda: app.return_code == 0, "the app to exit")


class BrokenChat:
    def reply(self, asked, **kw):
        raise RuntimeError("a bug")


async def test_a_reply_worker_that_crashes_is_said_and_the_chat_goes_on():
    app = ChatApp(BrokenChat(), Conversation(), {}, rng=None)
    async with app.run_test(size=(100, 30)) as pilot:
        log = app.screen.query_one(ChatLog)
        await pilot.press(*"hi", "enter")
        await until(pilot, lambda: "no reply: RuntimeError: a bug" in log.transcript(), "the failure note")
        assert not app.chat_screen.busy and app.chat_screen.conversation.messages == []


# ------------------------------------------------------------------------------------------------
# the command line (subprocesses)

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    cfg = GPTConfig(num_layers=1, num_heads=2, channels=32, max_seq_len=128, vocab_size=50257)
    path = tmp_path_factory.mktemp("chatmodel") / "tiny.bin"
    write_llmc(path, cfg, GPT.random_init(cfg, seed=1).params.flat)
    return path


@pytest.mark.slow
def test_repl_replies_commands_and_end_of_input(tiny_model, tmp_path):
    script = f"Hello there\n/bogus\n\nsecond question\n/save {tmp_path / 'c.jsonl'}\n/reset\n/save {tmp_path / 'd.jsonl'}\n"
    (tmp_path / "typed.txt").write_text(script)
    with open(tmp_path / "typed.txt") as typed:
        done = run_cli("chat", tiny_model, "--chat-template", "chatml", "--no-ui", "--temperature", "0",
                       "--sample-len", "6", "--system", "be brief", stdin=typed)
    assert done.returncode == 0, done.stderr
    replies = done.stdout.splitlines()
    assert len(replies) == 2 and all(replies)
    assert "unknown command /bogus" in done.stderr and "Traceback" not in done.stderr
    assert "conversation reset" in done.stderr
    saved = json.loads((tmp_path / "c.jsonl").read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert saved[2]["content"] == replies[0] and saved[4]["content"] == replies[1]
    assert json.loads((tmp_path / "d.jsonl").read_text())["messages"] == [{"role": "system", "content": "be brief"}]
    again = run_cli("sample", "--init-from", tiny_model, "--chat", "Hello there", "--chat-template", "chatml",
                    "--temperature", "0", "--sample-len", "6", "--system", "be brief")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [replies[0]]  # the one-shot form: the same greedy reply


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["chat", "{model}", "--no-ui"], "no chat template"),
    (["chat", "{tmp}/nope.bin", "--no-ui"], "nope.bin"),
    (["chat", "{model}", "--chat-template", "{tmp}/missing.jinja", "--no-ui"], "missing.jinja"),
    (["chat", "{model}", "--chat-template", "chatml", "--temperature", "-1"], "temperature"),
    (["chat"], "the following arguments are required"),
    (["chat", "{model}", "--system", " ", "--chat-template", "chatml"], "--system is empty"),
    (["sample", "--init-from", "{model}", "--system", "x"], "only with --chat"),
    (["sample", "--init-from", "{model}", "--chat", "q", "--prompt", "p", "--chat-template", "chatml"], "give one"),
])
def test_bad_chat_input_is_one_line_and_status_2(tiny_model, tmp_path, args, message):
    argv = [a.format(model=tiny_model, tmp=tmp_path) for a in args]
    done = run_cli(*argv)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
