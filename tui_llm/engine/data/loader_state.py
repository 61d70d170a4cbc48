"""Checking a TrainLoader state (from a checkpoint's JSON) before the loader trusts any of it.

A state is data from a file: every field is type- and range-checked here, so a crafted or corrupt
state is one DataError line, never an out-of-bounds read (an MT19937 `pos` beyond 624 would make
numpy read past its key array).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tui_llm.engine.data.tokens import DataError

if TYPE_CHECKING:
    from tui_llm.engine.data.loader import TrainLoader

LOADER_STATE_VERSION = 2  # TrainLoader.state_dict(); version 1 (one file, no accumulation) still loads

_MT_KEY_WORDS = 624


class BatchMismatch(DataError):
    """The state continues optimizer steps of another number of rows than this loader makes (a
    resume on another number of processes, or with another total batch): `rows` is the state's."""

    def __init__(self, rows: int, loader: TrainLoader) -> None:
        self.rows = rows
        super().__init__(f"the checkpoint's optimizer steps are {rows} rows of {loader.T} tokens; this launch makes "
                         f"{loader.rows} (batch_size {loader.B} x {loader.rows // (loader.B * loader.world_size)} "
                         f"micro-batches x {loader.world_size} processes)")


def _int(state: dict, key: str, lo: int, hi: int) -> int:
    v = state.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise DataError(f"loader state: {key} must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise DataError(f"loader state: {key} {v} is outside {lo}..{hi}")
    return v


def _from_legacy(state: dict, loader: TrainLoader) -> dict:
    """A version-1 state (one file, no accumulation): epoch, position, epoch_rng; see git history."""
    return {"version": LOADER_STATE_VERSION, "T": state.get("T"), "total_rows": state.get("B"),
            "shuffle": state.get("shuffle"), "seed": state.get("seed"), "num_shards": 1,
            "num_samples": state.get("num_samples"), "epoch": state.get("epoch"), "shard_order": [0], "shard": 0,
            "shard_file": loader.names[0], "shard_samples": state.get("num_samples"), "sample": state.get("position"),
            "row": 0, "shard_rng": state.get("epoch_rng")}


def check_loader_state(state, loader: TrainLoader) -> dict:
    """The state, validated against `loader` (types, ranges, same data and total batch); else DataError."""
    if not isinstance(state, dict):
        raise DataError(f"loader state must be a JSON object, got {type(state).__name__}")
    if "version" not in state and "position" in state:
        state = _from_legacy(state, loader)
    if state.get("version") != LOADER_STATE_VERSION:
        raise DataError(f"loader state version {state.get('version')!r} is not supported (expected {LOADER_STATE_VERSION})")
    mine = {"T": loader.T, "total_rows": loader.rows, "shuffle": loader.shuffle,
            "num_shards": len(loader.shards), "num_samples": loader.num_samples}
    theirs = {k: state.get(k) for k in mine}
    differ = [k for k in mine if mine[k] != theirs[k]]
    if [k for k in differ if k != "num_samples"] == ["total_rows"] and type(theirs["total_rows"]) is int \
            and theirs["total_rows"] > 0:  # (samples per epoch follow from the rows of a step)
        raise BatchMismatch(theirs["total_rows"], loader)
    if differ:
        said = ", ".join(f"{k} {theirs[k]!r} in the checkpoint, {mine[k]!r} here" for k in differ)
        raise DataError(f"loader state differs: {said} (different data or batch shape)")
    _int(state, "seed", -2**63, 2**64 - 1)
    _int(state, "epoch", 0, 2**62)
    order = state.get("shard_order")
    if not isinstance(order, list) or sorted(x if type(x) is int else -1 for x in order) != list(range(len(loader.shards))):
        raise DataError(f"loader state: shard_order must be a permutation of 0..{len(loader.shards) - 1}")
    if not loader.shuffle and order != sorted(order):
        raise DataError("loader state: shard_order of an unshuffled loader must be the sorted order")
    shard = _int(state, "shard", 0, len(loader.shards) - 1)
    name = loader.names[order[shard]]
    if state.get("shard_file") != name:
        raise DataError(f"loader state was at shard {state.get('shard_file')!r}, but that shard is {name!r} "
                        "here (different data?)")
    count = loader.shard_samples[order[shard]]
    if state.get("shard_samples") != count:
        raise DataError(f"loader state: shard {name!r} had {state.get('shard_samples')!r} total batches, here it has "
                        f"{count} (different data?)")
    sample = _int(state, "sample", 0, count)
    row = _int(state, "row", 0, loader.rows - 1)
    step_rows = loader.world_size * loader.B
    if row % step_rows or (row and sample == loader.shard_samples[order[shard]]):
        raise DataError(f"loader state is {row} rows into a total batch of {loader.rows}, which B={loader.B} x "
                        f"world_size={loader.world_size} cannot continue (save at an optimizer-step boundary)")
    rng = state.get("shard_rng")
    key = rng.get("key") if isinstance(rng, dict) else None
    if not (isinstance(key, list) and len(key) == _MT_KEY_WORDS
            and all(type(k) is int and 0 <= k < 2**32 for k in key)):
        raise DataError(f"loader state: shard_rng.key must be {_MT_KEY_WORDS} integers in [0, 2**32)")
    _int(rng, "pos", 0, _MT_KEY_WORDS)
    return state
