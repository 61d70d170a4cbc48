"""Fuzzing every file reader: damaged input is either read correctly or refused with the module's
one-line error, never another exception, never an allocation bigger than the file warrants.

Each target starts from a valid tiny file and applies hypothesis-drawn damage: header fields set
to hostile values (negative, zero, huge, wrong JSON types), truncation, appended bytes, flipped
bytes. The runs are derandomized (same cases on every machine) and count their outcomes; run with
`pytest -s tests/test_fuzz_formats.py` to see the counts.
"""

from __future__ import annotations

import json
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tui_llm.engine.data.tokens import DataError, open_tokens, write_tokens
from tui_llm.engine.formats import (
    CheckpointError,
    load_model_weights,
    load_training_checkpoint,
    read_hf,
    read_llmc,
    save_training_checkpoint,
    write_hf,
    write_llmc,
)
from tui_llm.engine.models.gpt2_config import GPTConfig, num_parameters

CFG = GPTConfig(max_seq_len=8, vocab_size=50, num_layers=1, num_heads=2, channels=8)  # Vp = 128
EXAMPLES = 300
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck))
OUTCOMES: dict[str, Counter] = {}

# Values that break naive readers: zero, negative, int32/int64 edges, huge, and non-integers.
HOSTILE_INTS = st.sampled_from([0, 1, -1, 2, 3, 7, 8, 50, 128, 255, 1024, 2**15, 2**16, 2**31 - 1, -2**31,
                                2**31, 2**32, 2**53, 2**63 - 1, 2**64, 10**9, 10**30])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | HOSTILE_INTS | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def flat_params(seed=0) -> np.ndarray:
    flat = np.random.default_rng(seed).standard_normal(num_parameters(CFG)).astype(np.float32)
    flat[CFG.vocab_size * CFG.channels:CFG.padded_vocab_size * CFG.channels] = 0
    return flat


def outcome(target: str, path: Path, read, error_class) -> str:
    """Run read(path); count and return 'accepted' or 'rejected'. Anything else fails the test."""
    size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.iterdir())
    tracemalloc.start()
    try:
        read(path)
        result = "accepted"
    except error_class as e:
        message = str(e)
        assert "\n" not in message and message, f"{target}: error is not one line: {message!r}"
        result = "rejected"
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 8 * size + (4 << 20), f"{target}: reading a {size}-byte file allocated {peak} bytes"
    OUTCOMES.setdefault(target, Counter())[result] += 1
    return result


def report(target: str) -> None:
    counts = OUTCOMES[target]
    print(f"\nfuzz {target}: {counts['accepted']} accepted, {counts['rejected']} rejected")
    assert counts["accepted"] > 0 and counts["rejected"] > 0, counts


# Byte-level damage, shared by the binary formats: (offset, new bytes) pokes, then cut or append.
def byte_damage(header_bytes: int, file_bytes: int):
    poke = st.tuples(st.integers(0, header_bytes) | st.integers(0, file_bytes),
                     st.one_of(HOSTILE_INTS.map(lambda v: (v % 2**32).to_bytes(4, "little")),
                               st.binary(min_size=1, max_size=8)))
    non_finite = st.tuples(st.integers(0, file_bytes // 4 - 1).map(lambda i: 4 * i),  # an aligned NaN/inf weight
                           st.sampled_from([np.float32(x).tobytes() for x in (np.nan, np.inf, -np.inf)]))
    poke = poke | non_finite
    return st.tuples(st.lists(poke, max_size=2), st.just(0) | st.integers(-64, -1),
                     st.just(b"") | st.binary(min_size=1, max_size=8))


def damage(data: bytes, change) -> bytes:
    pokes, cut, extra = change
    out = bytearray(data)
    for offset, raw in pokes:
        out[offset:offset + len(raw)] = raw[:max(0, len(out) - offset)]
    out = out[:len(out) + cut] if cut else out
    return bytes(out) + extra


# ---------------------------------------------------------------------------------------
# llm.c model files


@pytest.mark.slow
@pytest.mark.parametrize("version", [1, 3, 5])
def test_fuzz_llmc_model_files(tmp_path, version):
    good = tmp_path / "good.bin"
    write_llmc(good, CFG, flat_params(), version=version)
    data = good.read_bytes()
    slots = st.lists(st.tuples(st.integers(0, 7), HOSTILE_INTS), max_size=2)
    target = f"llmc v{version}"

    @FUZZ
    @given(slots=slots, change=byte_damage(1024, len(data)),
           kinds=st.lists(st.sampled_from(["slots", "bytes", "none"]), min_size=1, max_size=2))
    def run(slots, change, kinds):
        slots = slots if "slots" in kinds else []
        change = change if "bytes" in kinds else ([], 0, b"")
        raw = bytearray(data)
        header = np.frombuffer(raw[:1024], dtype="<i4").copy()
        for slot, value in slots:
            header[slot] = np.int64(value % 2**32).astype(np.uint32).view(np.int32)
        raw[:1024] = header.tobytes()
        path = tmp_path / "m.bin"
        path.write_bytes(damage(bytes(raw), change))
        if outcome(target, path, read_llmc, CheckpointError) == "accepted":
            cfg, flat = read_llmc(path)
            assert flat.dtype == np.float32 and flat.size == num_parameters(cfg) and np.isfinite(flat).all()
        outcome(f"load_model_weights (llmc v{version})", path, load_model_weights, CheckpointError)

    run()
    report(target)
    report(f"load_model_weights (llmc v{version})")


# ---------------------------------------------------------------------------------------
# Training checkpoints (safetensors): every header field


@pytest.mark.slow
def test_fuzz_training_checkpoint_headers(tmp_path):
    good = tmp_path / "good.safetensors"
    flat = flat_params()
    save_training_checkpoint(good, {"params": flat, "adam_m": flat * 0, "adam_v": flat * 0,
                                    "perm": np.arange(5, dtype=np.int64)},
                             {"step": 3, "model_config": CFG.to_dict(), "loader": {"position": 1}})
    data = good.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    names = [k for k in header if k != "__metadata__"]
    fields = ["dtype", "shape", "data_offsets"]
    dtypes = st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "f32", "", "F8_E4M3"])
    field_values = st.one_of(JSON_VALUES, dtypes, st.lists(HOSTILE_INTS, max_size=3))
    meta_changes = st.one_of(
        st.tuples(st.just("format"), st.sampled_from(["tui-llm-training", "pt", ""]) | JSON_VALUES),
        st.tuples(st.just("format_version"), st.sampled_from(["1", "2"]) | JSON_VALUES),
        st.tuples(st.just("meta"), st.sampled_from(['{"step": 1}', "{", "[]", '{"model_config": 5}',
                                                    '{"model_config": {"channels": 2147483648}}',
                                                    '{"model_config": {"num_layers": 1000000000}}']) | JSON_VALUES))
    target = "training checkpoint"

    @FUZZ
    @given(entry_changes=st.lists(st.tuples(st.sampled_from(names), st.sampled_from(["set", "del", "drop", "add"]),
                                            st.sampled_from(fields), field_values), max_size=2),
           meta_change=st.none() | meta_changes,
           config_change=st.none() | st.tuples(st.sampled_from(sorted(CFG.to_dict())), JSON_VALUES),
           length=st.none() | HOSTILE_INTS,
           change=byte_damage(0, len(data)),
           nan=st.tuples(st.sampled_from(["params", "adam_m", "adam_v"]), st.integers(0, num_parameters(CFG) - 1),
                         st.sampled_from([np.nan, np.inf, -np.inf])),
           kinds=st.lists(st.sampled_from(["entry", "meta", "config", "length", "bytes", "nan", "none"]),
                          min_size=1, max_size=2))
    def run(entry_changes, meta_change, config_change, length, change, nan, kinds):
        # One or two kinds of damage per case ("none" alone: the file must load), each drawn above.
        OUTCOMES.setdefault("training damage kinds", Counter()).update(set(kinds))
        entry_changes = entry_changes if "entry" in kinds else []
        meta_change = meta_change if "meta" in kinds else None
        config_change = config_change if "config" in kinds else None
        length = length if "length" in kinds else None
        change = change if "bytes" in kinds else ([], 0, b"")
        h = json.loads(json.dumps(header))
        for name, action, field, value in entry_changes:
            if not isinstance(h.get(name), dict):  # dropped or replaced by an earlier change
                continue
            if action == "set":
                h[name][field] = value
            elif action == "del":     # one field of the entry
                h[name].pop(field, None)
            elif action == "drop":    # the whole entry
                del h[name]
            else:                     # an unknown field, or the entry replaced by a non-object
                h[name] = {**h[name], "extra": value} if isinstance(value, str) else value
        meta = json.loads(h["__metadata__"]["meta"])
        if config_change:
            meta["model_config"][config_change[0]] = config_change[1]
        h["__metadata__"]["meta"] = json.dumps(meta)
        if meta_change:
            h["__metadata__"][meta_change[0]] = meta_change[1]
        raw = json.dumps(h).encode()
        prefix = (len(raw) if length is None else length % 2**64).to_bytes(8, "little")
        path = tmp_path / "t.safetensors"
        tensors = bytearray(data[8 + n:])
        if "nan" in kinds:  # one weight or AdamW moment made non-finite
            name, index, value = nan
            at = header[name]["data_offsets"][0] + 4 * index
            tensors[at:at + 4] = np.float32(value).tobytes()
        path.write_bytes(damage(prefix + raw + bytes(tensors), change))  # pokes may also hit the tensors
        if outcome(target, path, load_training_checkpoint, CheckpointError) == "accepted":
            arrays, _ = load_training_checkpoint(path)
            assert all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f")
        outcome("load_model_weights (training)", path, load_model_weights, CheckpointError)

    run()
    print("\ntraining damage kinds:", dict(OUTCOMES["training damage kinds"]))
    report(target)
    report("load_model_weights (training)")


# ---------------------------------------------------------------------------------------
# Hugging Face config.json


@pytest.mark.slow
def test_fuzz_hf_config(tmp_path):
    model_dir = tmp_path / "hf"
    write_hf(model_dir, CFG, flat_params())
    config = json.loads((model_dir / "config.json").read_text())
    keys = sorted(config) + ["n_ctx", "n_inner", "scale_attn_by_inverse_layer_idx", "extra"]
    target = "hf config.json"

    @FUZZ
    @given(changes=st.lists(st.tuples(st.sampled_from(keys), st.one_of(JSON_VALUES, st.just("<drop>"))), max_size=3),
           text_damage=st.none() | st.tuples(st.integers(0, 400), st.text(max_size=3)))
    def run(changes, text_damage):
        c = dict(config)
        for key, value in changes:
            if value == "<drop>":
                c.pop(key, None)
            else:
                c[key] = value
        text = json.dumps(c)
        if text_damage:
            at, junk = text_damage
            text = text[:at] + junk + text[at + len(junk):]
        (model_dir / "config.json").write_text(text)
        if outcome(target, model_dir, read_hf, CheckpointError) == "accepted":
            cfg, _ = read_hf(model_dir)
            assert cfg == CFG  # any accepted config must describe the weights that are there

    run()
    report(target)


# ---------------------------------------------------------------------------------------
# Token files


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["llmc", "int32", "uint16"])
def test_fuzz_token_files(tmp_path, fmt):
    good = tmp_path / "good.bin"
    write_tokens(good, np.arange(300) % 50, format=fmt)
    data = good.read_bytes()
    target = f"token file {fmt}"

    @FUZZ
    @given(change=byte_damage(1024 if fmt == "llmc" else 16, len(data)), read_as=st.sampled_from(["auto", fmt]))
    def run(change, read_as):
        path = tmp_path / "t.bin"
        path.write_bytes(damage(data, change))

        def read(p):
            tokens = open_tokens(p, format=read_as, vocab_size=60000).tokens
            assert tokens.ndim == 1 and (tokens.size == 0 or int(tokens.max()) < 60000)
        outcome(target, path, read, DataError)

    run()
    report(target)


# ---------------------------------------------------------------------------------------
# GPTConfig itself


@pytest.mark.slow
def test_fuzz_gpt_config():
    fields = sorted(CFG.to_dict())
    target = "GPTConfig"

    good = CFG.to_dict()  # each field is sometimes its good value, so both outcomes occur whatever the seed

    @FUZZ
    @given(values=st.fixed_dictionaries({k: st.just(good[k]) | HOSTILE_INTS | JSON_VALUES for k in fields}))
    def run(values):
        try:
            cfg = GPTConfig(**values)
            assert cfg.channels % cfg.num_heads == 0 and cfg.padded_vocab_size >= cfg.vocab_size > 0
            result = "accepted"
        except ValueError as e:
            assert "\n" not in str(e)
            result = "rejected"
        OUTCOMES.setdefault(target, Counter())[result] += 1

    run()
    report(target)


def test_config_sizes_that_cannot_fit_are_refused_before_allocating():
    for fields in ({"num_layers": 10**9}, {"channels": 2147483648, "num_heads": 1}, {"vocab_size": 2**31 - 1},
                   {"max_seq_len": 2**31 - 1}):
        with pytest.raises(ValueError, match="GiB|at most") as info:
            GPTConfig(**{**CFG.to_dict(), "padded_vocab_size": 0, **fields})
        assert "\n" not in str(info.value)
