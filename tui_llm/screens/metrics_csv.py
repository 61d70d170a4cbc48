"""Export a run's metrics.jsonl as a CSV table, one row per training step."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tui_llm.engine.formats import atomic_write

TRAIN_COLUMNS = ("loss", "lr", "grad_norm", "fwd_ms", "bwd_ms", "opt_ms", "step_ms", "tok_per_s", "epoch")
COLUMNS = ("step", "loss", "val_loss", *TRAIN_COLUMNS[1:])


def read_rows(jsonl_path: Path) -> list[dict]:
    """One dict per step: train fields, plus val_loss where a validation ran at that step.

    A validation at a step without a train record (e.g. before the first step) gets a row of
    its own. When a resumed run repeated steps, the later record wins.
    """
    rows: dict[int, dict] = {}
    with open(jsonl_path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # e.g. a line the trainer is still writing
                continue
            kind, step = record.get("type"), record.get("step")
            if kind == "train":
                rows.setdefault(step, {}).update({k: record.get(k) for k in TRAIN_COLUMNS})
            elif kind == "val":
                rows.setdefault(step, {})["val_loss"] = record.get("loss")
    return [{"step": step, **rows[step]} for step in sorted(rows)]


def export_csv(jsonl_path: Path) -> Path:
    """Write metrics.csv next to `jsonl_path`, atomically; returns its path."""
    jsonl_path = Path(jsonl_path)
    rows = read_rows(jsonl_path)
    out = jsonl_path.with_name("metrics.csv")
    with atomic_write(out, "w") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return out
