"""Fuzzing the GGUF reader: every damaged file is read correctly or refused with one CheckpointError
line, never another exception, never an allocation the file's size does not warrant.

Two damage models, derandomized like tests/test_fuzz_formats.py (run with -s to see the counts):
* structured: a valid tiny file is parsed once with every fixed-width field it reads recorded
  (header counts, string lengths, value types, array counts, tensor dims/types/offsets); each case
  overwrites one or two of those fields with hostile values, plus optional truncation;
* bytes: pokes into the header/metadata region and the tensor data (NaN/inf weights), cuts, appends.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.test_fuzz_formats import FUZZ, HOSTILE_INTS, byte_damage, damage, outcome, report
from tests.test_gguf import llama_config, llama_flat, train_tokenizer
from tui_llm.engine.formats import CheckpointError, gguf_file, load_model_weights
from tui_llm.engine.formats.gguf import read_gguf, write_gguf


def recorded_fields(path) -> list[tuple[int, str]]:
    """(file offset, struct format) of every fixed-width field the parser reads from a valid file."""
    seen = []
    original = gguf_file._Cursor.scalar

    def spy(self, fmt, what):
        seen.append((self.pos, fmt))
        return original(self, fmt, what)

    gguf_file._Cursor.scalar = spy
    try:
        gguf_file.read_contents(path)
    finally:
        gguf_file._Cursor.scalar = original
    return seen


@pytest.mark.slow
def test_fuzz_gguf(tmp_path):
    tok = train_tokenizer(tmp_path / "tok", "qwen2")
    cfg = llama_config("qwen2", num_layers=1)
    good = tmp_path / "good.gguf"
    write_gguf(good, cfg, llama_flat(cfg), tok, outtype="q8_0")
    data = good.read_bytes()
    slots = recorded_fields(good)
    data_start = min(info.start for info in gguf_file.read_contents(good).tensors.values())
    assert len(slots) > 50 and data_start < len(data)

    @FUZZ
    @given(fields=st.lists(st.tuples(st.integers(0, len(slots) - 1), HOSTILE_INTS), max_size=2),
           change=byte_damage(data_start, len(data)),
           kinds=st.lists(st.sampled_from(["fields", "bytes", "none"]), min_size=1, max_size=2))
    def run(fields, change, kinds):
        raw = bytearray(data)
        for slot, value in fields if "fields" in kinds else []:
            offset, fmt = slots[slot]
            size = struct.calcsize(fmt)
            raw[offset:offset + size] = (value % 2 ** (8 * size)).to_bytes(size, "little")
        path = tmp_path / "m.gguf"
        path.write_bytes(damage(bytes(raw), change if "bytes" in kinds else ([], 0, b"")))
        if outcome("gguf", path, read_gguf, CheckpointError) == "accepted":
            got_cfg, flat, vocab, _ = read_gguf(path)
            assert flat.dtype == np.float32 and np.isfinite(flat).all() and len(vocab.tokens) == got_cfg.vocab_size
        outcome("load_model_weights (gguf)", path, load_model_weights, CheckpointError)

    run()
    report("gguf")
    report("load_model_weights (gguf)")


def test_hostile_counts_are_refused_before_allocating(tmp_path):
    """Counts and lengths near 2**64 in a tiny file: refused by comparison with the bytes left."""
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    cases = {
        "huge key": header + struct.pack("<Q", 2**63) + b"x",
        "huge array": header + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 6, 2**62) + b"\0" * 16,
        "huge string array": header + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**40) + b"\0" * 16,
        "huge counts": b"GGUF" + struct.pack("<IQQ", 3, 2**60, 2**60) + b"\0" * 64,
        "nested array": header + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 9, 1) + b"\0" * 16,
        "unknown value type": header + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99) + b"\0" * 16,
        "big-endian": b"GGUF" + struct.pack(">IQQ", 3, 0, 0) + b"\0" * 8,
        "version 1": b"GGUF" + struct.pack("<IQQ", 1, 0, 0) + b"\0" * 8,
    }
    for name, raw in cases.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(raw)
        assert outcome(f"hostile: {name}", path, read_gguf, CheckpointError) == "rejected", name
