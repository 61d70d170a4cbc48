"""Seeded generators of hostile input: control-channel request lines and metrics.jsonl lines.
Shared by tests/test_fuzz_live.py and benchmarks/reliability.py (same seed, same cases)."""

from __future__ import annotations

import dataclasses
import json
import random

from tui_llm.engine import events as ev
from tui_llm.engine.run.channel import MAX_LINE

FIELDS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in ev.EVENT_TYPES.items()}
ODD_VALUES = [None, True, False, 0, -1, 2**70, -2**70, 1e308, -1e308, 0.5, "", "x" * 300, "\x1b[2J", [], [1, "a"],
              {}, {"a": {"b": []}}, "NaN", float("inf")]


def control_cases(rng: random.Random, n: int) -> list[bytes]:
    """Request lines (each ends with a newline, except where the case is about that)."""
    harmless_sets = ["lr_scale", "temperature", "top_k"]  # valid values of these do not slow the run down
    cases = [
        b"[" * 50_000 + b"\n",                                    # the line that killed a run before
        b"{" * 30_000 + b"\n",
        b'{"command": ' * 5_000 + b"\n",
        json.dumps({"command": "ping", "pad": "x" * (MAX_LINE - 100)}).encode() + b"\n",  # just under the limit
        b"\xff\xfe\x00garbage\n",
        b"\n", b"   \n", b"null\n", b"[]\n", b"42\n", b'"ping"\n', b"NaN\n", b'{"command": NaN}\n',
        b'{"command": 1e400}\n', b'{"command": "set", "name": "lr_scale", "value": Infinity}\n',
        b'{"command": "set", "name": "top_k", "value": 1e400}\n',
        b'{"command": "set", "name": "save_every", "value": 1e308}\n',
        b'{"command": "sample", "prompt": 5}\n', b'{"command": "stop", "save": "yes"}\n',
        b'{"command": "set"}\n', b'{"command": "set", "name": []}\n', b'{"command": "' + b"A" * 1000 + b'"}\n',
        b'{"command": "ping"}\r\n', b'{"command": "ping"}',  # no newline: answered when one comes, or never
    ]
    for _ in range(n):
        kind = rng.randrange(6)
        if kind == 0:  # random bytes
            cases.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b"") + b"\n")
        elif kind == 1:  # unknown or mistyped commands
            cases.append(json.dumps({"command": rng.choice(["Pause", "rm -rf", "", "set ", "ping\x00", "eval"]),
                                     **({"x": rng.choice(ODD_VALUES)} if rng.random() < 0.5 else {})},
                                    allow_nan=True).encode() + b"\n")
        elif kind == 2:  # set with odd names and values
            name = rng.choice([*harmless_sets, "lr", "steps", "out_dir", "", "__class__", 7])
            cases.append(json.dumps({"command": "set", "name": name, "value": rng.choice(ODD_VALUES)},
                                    allow_nan=True).encode() + b"\n")
        elif kind == 3:  # deep nesting of a random depth
            depth = rng.choice([100, 1_000, 10_000, 40_000])
            cases.append(b'{"command": ' + b"[" * depth + b"]" * depth + b"}\n")
        elif kind == 4:  # a value of the wrong type for a field of a request (stop: see the fixed cases)
            cases.append(json.dumps({"command": rng.choice(["sample", "set", "ping"]),  # a stop would be obeyed
                                     rng.choice(["prompt", "save", "name", "value"]): rng.choice(ODD_VALUES)},
                                    allow_nan=True).encode() + b"\n")
        else:  # valid and harmless
            cases.append(json.dumps({"command": "set", "name": rng.choice(harmless_sets),
                                     "value": rng.choice([0.5, 1, 2, 40])}).encode() + b"\n")
    return cases



def metrics_lines(rng: random.Random, n: int) -> list[bytes]:
    """Whole lines a damaged or hostile metrics.jsonl may hold."""
    lines = [b"[" * 50_000, b"{" * 30_000, b"x" * (5 << 20), b"\xff\xfe", b"null", b"[]", b"1e400", b"{}",
             b'{"type": "val", "loss": []}', b'{"type": "train"}', b'{"type": "start", "run_config": 5}',
             b'{"type": "sample", "step": 1, "prompt": "", "text": "\\u001b[2J", "token_ids": ["a"]}',
             b'{"type": "finished", "step": 1, "reason": "exploded", "checkpoint": null}',
             b'{"type": "checkpoint", "step": 3, "path": 7, "seconds": 0, "reason": "final"}']
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            lines.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))).replace(b"\n", b""))
        else:  # a record of a known type, some fields of the wrong type (or missing)
            kind_name = rng.choice(sorted(FIELDS))
            record = {"type": kind_name}
            for name in FIELDS[kind_name]:
                if rng.random() < 0.8:
                    record[name] = rng.choice(ODD_VALUES)
            lines.append(json.dumps(record, allow_nan=True).encode())
    return lines
