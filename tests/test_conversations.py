"""JSONL conversation readers: the four shapes, per-line errors with line numbers, gzip and folders, fuzzing."""

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tui_llm.engine.data.conversations import (
    BadLine,
    ConversationError,
    Example,
    collect_jsonl_files,
    detect_shape,
    read_all,
    read_examples,
)


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return path


def read(path, **kwargs):
    shapes = []
    items = list(read_examples(path, on_shape=lambda p, s: shapes.append(s), **kwargs))
    return items, shapes


U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}


def test_each_shape_becomes_messages(tmp_path):
    conv = write_jsonl(tmp_path / "c.jsonl", [{"messages": [U, A], "id": 7}, {"messages": [U, A], "text": "ignored"}])
    items, shapes = read(conv)
    assert shapes == ["conversational"]
    assert [(e.line, e.messages, e.prompt_len) for e in items] == [(1, [U, A], None), (2, [U, A], None)]

    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "2+2?", "completion": "4"},
                                             {"prompt": [U], "completion": [A, U, A]}])
    items, shapes = read(pc)
    assert shapes == ["prompt-completion"]
    assert items[0].messages == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert items[0].prompt_len == 1 and items[1].messages == [U, A, U, A] and items[1].prompt_len == 1

    alpaca = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Say hi", "output": "hi", "system": "Be nice."}])
    items, shapes = read(alpaca)
    assert shapes == ["alpaca"]
    assert items[0].messages == [{"role": "user", "content": "Translate\n\nchat"}, {"role": "assistant", "content": "cat"}]
    assert items[1].messages[0]["content"] == "Say hi"
    assert items[2].messages[0] == {"role": "system", "content": "Be nice."}

    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "a document"}])
    items, shapes = read(text)
    assert shapes == ["text"] and items[0].text == "a document" and items[0].messages == []


@pytest.mark.parametrize("line, reason", [
    ("{not json", "not JSON"),
    ('["a list"]', "the line is a list, not a JSON object"),
    ('{"question": "no shape"}', "no messages, prompt/completion, instruction/output or text field (keys: question)"),
    ({"messages": "hi"}, "messages is text, not a list of messages"),
    ({"messages": []}, "messages is empty"),
    ({"messages": [{"content": "x"}, A]}, "message 1 has no role"),
    ({"messages": [{"role": 3, "content": "x"}, A]}, "message 1's role is a number"),
    ({"messages": [U, {"role": "assistant"}]}, "message 2 (assistant) has no content"),
    ({"messages": [U, {"role": "assistant", "content": 5}]}, "message 2 (assistant)'s content is a number"),
    ({"messages": [U]}, "no assistant message, so nothing to train on"),
    ({"prompt": [U], "completion": "text"}, "prompt is a list and completion is text"),
    ({"prompt": "q", "completion": ""}, "empty completion"),
    ({"instruction": 1, "output": "x"}, '"instruction" is a number, not text'),
    ({"text": "   "}, "empty text"),
])
def test_a_bad_line_is_reported_with_its_number_and_reading_goes_on(tmp_path, line, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [U, A]}, "", line, {"messages": [U, A]}]) \
        if not (isinstance(line, dict) and ("prompt" in line or "instruction" in line or "text" in line)) else \
        write_jsonl(tmp_path / "d.jsonl", [line])
    items, _ = read(path)
    bad = [i for i in items if isinstance(i, BadLine)]
    assert len(bad) == 1 and reason in bad[0].reason, bad
    assert bad[0].line == (3 if len(items) == 3 else 1)
    assert str(bad[0]) == f"{path}:{bad[0].line}: {bad[0].reason}" and "\n" not in str(bad[0])
    assert all(isinstance(i, Example) for i in items if i is not bad[0])


def test_mixed_shapes_invalid_utf8_and_replies_optional(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'\n{"text": "first fixes the shape"}\n{"messages": [{"role": "user", "content": "x"}]}\n'
                     b'{"text": "caf\xe9"}\n{"text": "ok"}\n')
    items, shapes = read(path)
    assert shapes == ["text"]
    assert [type(i).__name__ for i in items] == ["Example", "BadLine", "BadLine", "Example"]
    assert items[1].line == 3 and "a conversational record in a file of text records" in items[1].reason
    assert items[2].line == 4 and "not valid UTF-8" in items[2].reason
    only_user = write_jsonl(tmp_path / "u.jsonl", [{"messages": [U]}])
    assert isinstance(read(only_user, need_reply=False)[0][0], Example)  # --train-on all: nothing is missing


def test_gzip_folders_and_unreadable_input(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    write_jsonl(folder / "b.jsonl", [{"messages": [U, A]}])
    with gzip.open(folder / "sub" / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped"}) + "\n")
    write_jsonl(folder / ".hidden" / "c.jsonl", [{"text": "hidden"}])
    write_jsonl(folder / "notes.txt", ["not data"])
    files = collect_jsonl_files([folder])
    assert [p.relative_to(folder).as_posix() for p in files] == ["b.jsonl", "sub/a.jsonl.gz"]
    items = list(read_all([folder]))
    assert [i.shape for i in items] == ["conversational", "text"] and items[1].text == "zipped"
    # a gzip file is recognised by its bytes, whatever its name
    (tmp_path / "named.jsonl").write_bytes(gzip.compress(b'{"text": "z"}\n'))
    assert next(read_examples(tmp_path / "named.jsonl")).text == "z"
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(b'{"text": "a"}\n' * 1000)[:60])
    with pytest.raises(ConversationError, match="broken.jsonl.gz: cannot read"):
        list(read_examples(broken))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConversationError, match="folder has no conversation files"):
        collect_jsonl_files([empty])
    with pytest.raises(ConversationError, match="no such file or directory"):
        collect_jsonl_files([tmp_path / "missing.jsonl"])


def test_detect_shape_prefers_messages():
    assert detect_shape({"messages": [], "prompt": "", "completion": "", "text": ""}) == "conversational"
    assert detect_shape({"prompt": "", "completion": "", "text": ""}) == "prompt-completion"
    assert detect_shape({"instruction": "", "output": "", "text": ""}) == "alpaca"
    assert detect_shape({"prompt": ""}) is None and detect_shape([]) is None


# ----------------------------------------------------------------------------------------------------
# fuzzing: any bytes in, one item per non-blank line out, never an exception

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                               st.sampled_from(["messages", "role", "content", "prompt", "completion", "instruction",
                                                "input", "output", "text", "tool_calls", "x"]), inner, max_size=4),
                           max_leaves=12)
lines = st.one_of(json_values.map(json.dumps), st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b),
                  st.text(max_size=20).filter(lambda t: "\n" not in t and "\r" not in t))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines, max_size=8), st.booleans())
def test_fuzz_any_lines(tmp_path, raw_lines, gz):
    data = b"".join((x if isinstance(x, bytes) else x.encode("utf-8")) + b"\n" for x in raw_lines)
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(gzip.compress(data) if gz else data)
    if not gz and data.startswith(b"\x1f\x8b"):  # gzip's magic: read as gzip, and not valid gzip data
        with pytest.raises(ConversationError, match="damaged gzip data"):
            list(read_examples(path, need_reply=False))
        return
    items = list(read_examples(path, need_reply=False))
    numbered = [n for n, line in enumerate(data.split(b"\n")[:len(raw_lines)], 1) if line.strip()]
    # bytes.strip() and Python's line iteration agree here: no "\r" or other line breaks inside a line
    assert [i.line for i in items] == numbered
    for item in items:
        assert isinstance(item, (Example, BadLine))
        if isinstance(item, BadLine):
            assert "\n" not in str(item)
        elif item.shape != "text":
            assert item.messages and all(isinstance(m["role"], str) for m in item.messages)


messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                           "content": st.text(max_size=30)}), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(messages, min_size=1, max_size=5))
def test_fuzz_conversations_round_trip(tmp_path, conversations):
    path = write_jsonl(tmp_path / "c.jsonl", [{"messages": m} for m in conversations])
    items = list(read_examples(path))
    for conversation, item in zip(conversations, items):
        if any(m["role"] == "assistant" for m in conversation):
            assert isinstance(item, Example) and item.messages == conversation
        else:
            assert isinstance(item, BadLine) and "no assistant message" in item.reason
