"""Conversation data in: JSONL files (plain or gzip), read a line at a time.

Each file has one shape, detected from its first well-formed record and named once:

  conversational     {"messages": [{"role": "system"|"user"|"assistant"|..., "content": "..."}, ...]}
                     (OpenAI / TRL "conversational"; extra keys are kept: tool_calls, reasoning_content)
  prompt-completion  {"prompt": ..., "completion": ...}: both text, or both lists of messages (TRL).
                     Text becomes one user message and one assistant message, so the chat template
                     frames it (TRL instead concatenates plain-text prompt and completion untemplated).
  alpaca             {"instruction": ..., "input": ..., "output": ...}: user = instruction, plus
                     "\\n\\n" + input when there is one; assistant = output; an optional "system" too.
  text               {"text": ...}: a plain document, every token trained on.

A key earlier in this list wins when a record has several ({"messages", "text"} is conversational).
A bad line never stops the reader: it yields a BadLine (path, line number, one-line reason) and goes on;
the caller counts them and decides (`--errors skip|stop`). Blank lines are skipped. Reasons: not UTF-8,
not JSON, not an object, no known shape, a shape other than the file's, a message without a role or
content, a conversation with no assistant message when only replies are trained on.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tui_llm.engine.data.inputs import collect_files
from tui_llm.engine.errors import TuiLlmError

SHAPES = ("conversational", "prompt-completion", "alpaca", "text")
SHAPE_KEYS = {"conversational": "messages", "prompt-completion": "prompt/completion",
              "alpaca": "instruction/input/output", "text": "text"}
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
GZIP_MAGIC = b"\x1f\x8b"


class ConversationError(TuiLlmError):
    """Input that cannot be read at all (no such file, a folder with no JSONL files); one line."""


@dataclass
class Example:
    """One record, as messages. `prompt_len`: prompt-completion's prompt messages (the rest is the
    completion), else None. `text`: the text shape's document (messages is then empty)."""
    path: Path
    line: int
    shape: str
    messages: list = field(default_factory=list)
    prompt_len: int | None = None
    text: str | None = None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class BadLine:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class BadRecord(ValueError):
    """Why one record cannot be used (becomes a BadLine)."""


# ----------------------------------------------------------------------------------------------------
# files

def _is_jsonl(path: Path) -> bool:
    return path.name.lower().endswith(JSONL_SUFFIXES)


def collect_jsonl_files(inputs) -> list[Path]:
    """Files named explicitly, plus the *.jsonl / *.jsonl.gz files under each folder (sorted, no hidden ones)."""
    return collect_files(inputs, _is_jsonl, "conversation files (*.jsonl, *.jsonl.gz)", ConversationError)


def _lines(path: Path) -> Iterator[bytes]:
    """The file's lines as bytes, gunzipped when it starts with gzip's magic (whatever its name)."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == GZIP_MAGIC
    except OSError as e:
        raise ConversationError(f"{path}: cannot read ({e.strerror})") from None
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            yield from f
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz
        raise ConversationError(f"{path}: cannot read ({'damaged gzip data: ' if gz else ''}{e})") from None


# ----------------------------------------------------------------------------------------------------
# records

def detect_shape(record) -> str | None:
    """The shape of one parsed record, or None."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "conversational"
    if "prompt" in record and "completion" in record:
        return "prompt-completion"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "text" in record:
        return "text"
    return None


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def check_messages(messages, what: str = "messages") -> list[dict]:
    """Each message an object with a text role and its content (text, or a list of content parts;
    absent only beside tool_calls). BadRecord otherwise."""
    if not isinstance(messages, list):
        raise BadRecord(f"{what} is {_kind(messages)}, not a list of messages")
    if not messages:
        raise BadRecord(f"{what} is empty")
    for n, m in enumerate(messages, 1):
        if not isinstance(m, dict):
            raise BadRecord(f"message {n} is {_kind(m)}, not an object with role and content")
        role = m.get("role")
        if role is None:
            raise BadRecord(f"message {n} has no role")
        if not isinstance(role, str) or not role:
            raise BadRecord(f"message {n}'s role is {_kind(role)}, not a role name")
        content = m.get("content")
        if content is None and not m.get("tool_calls"):
            raise BadRecord(f"message {n} ({role}) has no content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRecord(f"message {n} ({role})'s content is {_kind(content)}, not text")
    return messages


def _text(record: dict, key: str, optional: bool = False) -> str:
    value = record.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise BadRecord(f'"{key}" is {_kind(value)}, not text' if key in record else f'no "{key}"')
    return value


def to_example(record: dict, shape: str, path: Path, line: int, need_reply: bool) -> Example:
    """The Example of a record of a known shape; BadRecord when its fields are not usable."""
    if shape == "text":
        text = _text(record, "text")
        if not text.strip():
            raise BadRecord("empty text")
        return Example(path, line, shape, text=text)
    prompt_len = None
    if shape == "conversational":
        messages = check_messages(record["messages"])
    elif shape == "prompt-completion":
        prompt, completion = record["prompt"], record["completion"]
        if isinstance(prompt, str) and isinstance(completion, str):
            if not completion:
                raise BadRecord("empty completion")
            prompt, completion = [{"role": "user", "content": prompt}], [{"role": "assistant", "content": completion}]
        elif isinstance(prompt, list) and isinstance(completion, list):
            check_messages(prompt, "prompt")
            check_messages(completion, "completion")
        else:
            raise BadRecord(f"prompt is {_kind(prompt)} and completion is {_kind(completion)}: give both as text "
                            f"or both as lists of messages")
        messages, prompt_len = prompt + completion, len(prompt)
    else:  # alpaca
        instruction, extra, output = _text(record, "instruction"), _text(record, "input", True), _text(record, "output")
        system = _text(record, "system", True)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": instruction + ("\n\n" + extra if extra else "")},
            {"role": "assistant", "content": output}]
    if need_reply and prompt_len is None and not any(m.get("role") == "assistant" for m in messages):
        raise BadRecord("no assistant message, so nothing to train on (--train-on all trains on every token)")
    return Example(path, line, shape, messages, prompt_len)


def read_examples(path, need_reply: bool = True, on_shape=None) -> Iterator[Example | BadLine]:
    """Every record of one JSONL file, in order, as an Example or a BadLine.

    on_shape(path, shape) is called once, when the file's first well-formed record fixes its shape.
    ConversationError only when the file cannot be read at all.
    """
    path = Path(path)
    shape = None
    for number, raw in enumerate(_lines(path), 1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield BadLine(path, number, f"not valid UTF-8 at byte {e.start:,} of the line")
            continue
        try:
            record = json.loads(text)
        except ValueError as e:
            yield BadLine(path, number, f"not JSON ({getattr(e, 'msg', e)} at column {getattr(e, 'colno', '?')})")
            continue
        except RecursionError:
            yield BadLine(path, number, "not JSON (nested too deeply)")
            continue
        if not isinstance(record, dict):
            yield BadLine(path, number, f"the line is {_kind(record)}, not a JSON object")
            continue
        found = detect_shape(record)
        if found is None:
            keys = ", ".join(sorted(map(str, record))[:6]) or "none"
            yield BadLine(path, number, f"no messages, prompt/completion, instruction/output or text field "
                                        f"(keys: {keys})")
            continue
        if shape is None:
            shape = found
            if on_shape is not None:
                on_shape(path, shape)
        elif found != shape:
            yield BadLine(path, number, f"a {found} record in a file of {shape} records (a file holds one shape)")
            continue
        try:
            yield to_example(record, shape, path, number, need_reply)
        except BadRecord as e:
            yield BadLine(path, number, str(e))
        except RecursionError:
            yield BadLine(path, number, "nested too deeply")


def read_all(inputs, need_reply: bool = True, on_shape=None) -> Iterator[Example | BadLine]:
    """read_examples of every file of collect_jsonl_files(inputs), in order."""
    for path in collect_jsonl_files(inputs):
        yield from read_examples(path, need_reply, on_shape)
