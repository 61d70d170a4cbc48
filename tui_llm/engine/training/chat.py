"""Talking to a model: a conversation rendered with its chat template, the reply generated token by token.

    chat = Chat(model, tokenizer, chat_template=None)      # the tokenizer's own template, or a file / "chatml"
    reply = chat.reply(messages, sample_len=256, temperature=0.7, top_k=40, rng=rng,
                       on_text=lambda piece: print(piece, end=""))
    messages.append({"role": "assistant", "content": reply.text})

The prompt is the conversation rendered with the generation prompt (`add_generation_prompt`), tokenized
exactly as training data is (tokenizers/chat_template.py: special tokens in the text recognised, none
added). Generation stops at the end of the assistant's turn: the model's end-of-sequence token, or the
template's end-of-turn text ("<|im_end|>", "<|eot_id|>", found by rendering a reply and reading what the
template puts after it), which for GPT-2 with --chat-template chatml is several ordinary tokens, so the
reply's text is watched for it; the end-of-turn text is never part of a reply. While streaming, text that
might be the start of the end-of-turn text is held back until it is clear that it is not (a reply cut
short by sample_len while it was writing the end of turn leaves that beginning out).

Conversations are lists of {"role", "content"} dicts, as in the JSONL that `tui-llm prepare --chat` reads,
and saved that way (`save_conversation`: one `{"messages": [...]}` line, written atomically).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.formats.atomic import atomic_write
from tui_llm.engine.tokenizers.chat_template import ChatEncoder, ChatTemplateError
from tui_llm.engine.tokenizers.gpt2 import StreamDecoder
from tui_llm.engine.training.sampler import Sampler, check_prompt_ids

_REPLY_MARKER = "\ue000tui-llm-reply\ue001"


class ChatError(TuiLlmError):
    """A conversation this model cannot continue (too long, refused by the template): one line."""


@dataclass
class ChatReply:
    """One assistant reply: its text (without the end-of-turn text), tokens and why it stopped."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    stopped: str = "end_of_turn"    # "end_of_turn" | "sample_len" (the limit was reached) | "cancelled"
    seconds: float = 0.0

    @property
    def tok_per_s(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


def end_of_turn_text(encoder: ChatEncoder) -> str | None:
    """What the template writes after an assistant reply's content ("<|im_end|>"), whitespace stripped;
    None when it writes nothing recognisable there."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _REPLY_MARKER}]
    try:
        text = encoder.render(messages)
    except ChatTemplateError:
        return None
    at = text.find(_REPLY_MARKER)
    after = text[at + len(_REPLY_MARKER):].strip() if at >= 0 else ""
    return after or None


def _held_back(text: str, stop: str | None) -> int:
    """How many characters at the end of text could be the start of `stop` (not shown yet)."""
    if not stop:
        return 0
    for k in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:k]):
            return k
    return 0


def save_conversation(path, messages: list[dict]) -> Path:
    """Write one JSONL line {"messages": [...]} (what `tui-llm prepare --chat` reads), atomically."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ChatError(f"{path}: is a directory; give a file name such as chat.jsonl")
    if not path.parent.is_dir():
        raise ChatError(f"{path.parent}: no such directory")
    line = json.dumps({"messages": messages}, ensure_ascii=False)
    try:
        with atomic_write(path, "w") as f:
            f.write(line + "\n")
    except OSError as e:
        raise ChatError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


class Chat:
    """A model, its tokenizer and a chat template: replies to conversations. Owns its KV cache (a Sampler)."""

    def __init__(self, model, encoding, chat_template=None):
        self.sampler = Sampler(model, encoding)
        self.encoder = ChatEncoder(encoding, chat_template)
        self.encoding = encoding
        self.end_of_turn = end_of_turn_text(self.encoder)
        vocab_size = model.config.vocab_size
        stop_ids = {getattr(encoding, "eos_token_id", None), getattr(encoding, "eot_token", None)}
        if self.end_of_turn:
            eot_ids = self.encoder.encode_text(self.end_of_turn)
            if len(eot_ids) == 1:  # a special token of its own (<|im_end|> in a ChatML model's vocabulary)
                stop_ids.add(eot_ids[0])
        self.stop_ids = {t for t in stop_ids if isinstance(t, int) and 0 <= t < vocab_size}

    @property
    def max_seq_len(self) -> int:
        return self.sampler.model.config.max_seq_len

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation's tokens, ending with the template's generation prompt (the assistant's turn)."""
        try:
            text = self.encoder.render(messages, add_generation_prompt=True)
        except ChatTemplateError as e:
            raise ChatError(e.problem) from None
        ids = self.encoder.encode_text(text)
        if not ids:
            raise ChatError("the chat template rendered this conversation as no tokens")
        return ids

    def _stream(self):
        if hasattr(self.encoding, "stream"):
            return self.encoding.stream()
        return StreamDecoder(self.encoding)

    def reply(self, messages: list[dict], sample_len: int = 256, temperature: float = 1.0, top_k: int = 0,
              rng: np.random.Generator | None = None, on_text: Callable[[str], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> ChatReply:
        """Generate the assistant's next turn. on_text(piece) gets the reply's text as it comes (the
        pieces join to reply.text); cancelled() returning True stops after the current token."""
        ids = self.prompt_ids(messages)
        check_prompt_ids(ids, self.sampler.model.config.vocab_size)
        room = self.max_seq_len - len(ids)
        if room < 1:
            raise ChatError(f"the conversation is {len(ids):,} tokens, the model's context is {self.max_seq_len:,}: "
                            f"start over (/reset)")
        rng = rng if rng is not None else np.random.default_rng()
        stream, stop = self._stream(), self.end_of_turn
        text, shown, generated = "", 0, []
        stopped = "sample_len"
        start = time.perf_counter()

        def show(upto: int) -> None:
            nonlocal shown
            if upto > shown and on_text is not None:
                on_text(text[shown:upto])
            shown = max(shown, upto)

        for token, _ in self.sampler.tokens(ids, min(sample_len, room), temperature, top_k, rng):
            if token in self.stop_ids:
                stopped = "end_of_turn"
                break
            generated.append(token)
            text += stream.push(token)
            at = text.find(stop) if stop else -1
            if at >= 0:
                text = text[:at]
                stopped = "end_of_turn"
                break
            show(len(text) - _held_back(text, stop))
            if cancelled is not None and cancelled():
                stopped = "cancelled"
                break
        if stopped != "end_of_turn":  # cut short: what is held back is shown, unless it was the end of turn starting
            text += stream.flush()
            text = text[:len(text) - _held_back(text, stop)]
        show(len(text))
        return ChatReply(text, generated, len(ids), stopped, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------
# a conversation and the commands typed into a chat (the chat screen and the --no-ui REPL share them)

COMMANDS = {"/reset": "start over (the system prompt stays)", "/save FILE": "write the conversation as JSONL",
            "/quit": "leave (so does Ctrl-D)", "/help": "these commands"}


def parse_command(line: str) -> tuple[str, str] | None:
    """("reset" | "save" | "quit" | "help", its argument) for a typed command; None for a message.
    ChatError for a line starting with "/" that is no command (a message may start with "//")."""
    if not line.startswith("/") or line.startswith("//"):
        return None
    name, _, argument = line[1:].strip().partition(" ")
    argument = argument.strip()
    if name in ("reset", "quit", "help"):
        if argument:
            raise ChatError(f"/{name} takes no argument")
        return name, ""
    if name == "save":
        if not argument:
            raise ChatError("/save needs a file name: /save chat.jsonl")
        return name, argument
    raise ChatError(f"unknown command /{name}: {', '.join(c.split()[0] for c in COMMANDS)} (start a message with // "
                    f"to send a /)")


@dataclass
class Conversation:
    """The messages so far, the system prompt first when there is one."""

    system: str | None = None
    messages: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.messages:
            self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def ask(self, text: str) -> list[dict]:
        """The conversation with the user's message added (kept only once a reply is added)."""
        return [*self.messages, {"role": "user", "content": text[1:] if text.startswith("//") else text}]

    def answered(self, asked: list[dict], reply: str) -> None:
        self.messages = [*asked, {"role": "assistant", "content": reply}]

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "assistant")

    def save(self, path) -> Path:
        return save_conversation(path, self.messages)
