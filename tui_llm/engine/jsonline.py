"""One bounded way to read a JSON object from a line of a file or a socket.

Everything tui-llm reads line by line (metrics.jsonl records, control-channel requests and
replies) comes through `parse_object`: the line's size is bounded, nesting that would exhaust
Python's stack is refused (json raises RecursionError on 50,000 `[`, which is not a ValueError),
bytes that are not UTF-8 are refused, and what is not a JSON object is refused. Each refusal is a
BadLine with a one-line reason: the caller skips the record or answers with an error, and no
exception from the content of a line ever escapes.
"""

from __future__ import annotations

import json


class BadLine(ValueError):
    """A line that is not one JSON object (the reason is one line)."""


def parse_object(line: bytes | str, max_bytes: int) -> dict:
    """The JSON object in `line` (surrounding whitespace allowed), or BadLine."""
    value = parse_json(line, max_bytes)
    if not isinstance(value, dict):
        raise BadLine(f"not a JSON object (a {type(value).__name__})")
    return value


def parse_json(line: bytes | str, max_bytes: int) -> object:
    """Any JSON value in `line`, or BadLine (size, nesting, encoding and syntax checked)."""
    if len(line) > max_bytes:
        raise BadLine(f"line longer than {max_bytes:,} bytes")
    try:
        value = json.loads(line)
    except RecursionError:
        raise BadLine("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise BadLine("not UTF-8 text") from None
    except ValueError as e:  # json.JSONDecodeError
        raise BadLine(f"not JSON ({str(e).splitlines()[0]})") from None
    return value
