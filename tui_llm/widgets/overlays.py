"""Overlays on the metrics chart: other runs' curves (compare runs), and a fixed reference curve.

An overlay is read once from a run directory's metrics.jsonl (its last record for each step, as
the dashboard's history) or, for `--reference`, from a metrics.jsonl or a CSV with `step` and
`loss` columns (RunDir.export_csv's metrics.csv qualifies; its other columns are used when present).
A run directory that another process still trains is followed cheaply: `poll()` (the dashboard's
1 s tick) stats metrics.jsonl and reads only the whole lines appended since the last read (a
file cut back by a resume is read again whole). No Textual here.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.run.metrics_log import MetricsLog, MetricsLogError
from tui_llm.engine.run.run_dir import METRICS
from tui_llm.widgets.text_charts import Columns, Points

FIELDS = ("step", "tokens", "elapsed_s", "loss", "lr", "grad_norm", "tok_per_s", "fwd_ms", "bwd_ms", "opt_ms")
"""What an overlay keeps of each step (the chart's FIELDS)."""


class OverlayError(TuiLlmError):
    """A file that holds no curve to draw: one line saying why."""


def overlay_names(paths: list[Path]) -> list[str]:
    """Short, distinct names: the last path part, with its parents added while two are equal."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(map(len, parts)):
            return names
        depth += 1


class Overlay:
    """One other run's (or a reference file's) curves: steps, their numbers and validations."""

    def __init__(self, path, name: str, reference: bool = False) -> None:
        self.path = Path(path)
        self.name = name
        self.reference = reference
        """A fixed curve (--reference): read once, never followed."""
        self.steps = Columns(FIELDS)
        self.val = Points()
        self._file = self.path / METRICS if self.path.is_dir() else self.path
        self._log = MetricsLog(self._file)  # the one reader of metrics.jsonl (also for --reference FILE)
        self._offset = 0
        self._size = -1
        self._ema_cache = None
        if not self._file.is_file():
            raise OverlayError(f"{path}: no metrics.jsonl (not a run directory, nor a metrics file)")
        if self._file.suffix.lower() == ".csv":
            self._read_csv()
            self.reference = True
        else:
            self._read_jsonl(reset=True)
        if not len(self.steps) and self.reference:  # a run may not have trained a step yet
            raise OverlayError(f"{path}: no training steps with a loss in it")

    # -- reading ---------------------------------------------------------------------------

    def poll(self) -> bool:
        """Read what a live run appended since the last read; True if the curves changed."""
        if self.reference:
            return False
        size = self._log.file_size()
        if size == self._size:
            return False
        return self._read_jsonl(reset=size < self._offset)

    def _read_jsonl(self, reset: bool) -> bool:
        if reset:
            self._offset = 0
            self.steps = Columns(FIELDS)
            self.val = Points()
            self._ema_cache = None
        self._size = self._log.file_size()
        changed = False
        try:
            for end, record in self._log.records(self._offset):  # whole lines; bad ones are skipped
                self._offset = end
                if record is not None:
                    changed = self._add(record) or changed
        except MetricsLogError as e:
            if not self._offset:
                raise OverlayError(str(e)) from None
        return changed

    def _read_csv(self) -> None:
        try:
            with open(self._file, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise OverlayError(f"{self.path}: cannot read it as CSV ({e})") from None
        if rows and not {"step", "loss"} <= set(rows[0]):
            raise OverlayError(f"{self.path}: a reference CSV needs step and loss columns")
        for row in rows:
            record = {"type": "train"}
            for name in (*FIELDS, "val_loss"):
                try:
                    record[name] = float(row[name])
                except (KeyError, TypeError, ValueError):
                    pass
            if "val_loss" in record and "step" in record:
                self._add({"type": "val", "step": record["step"], "loss": record.pop("val_loss")})
            self._add(record)

    def _add(self, record: dict) -> bool:
        kind, step, loss = record.get("type"), record.get("step"), record.get("loss")
        if not isinstance(step, (int, float)) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
            return False
        if kind == "train":
            if len(self.steps) and step <= self.steps["step"][-1]:  # a resumed run repeated it: the later wins
                self.steps.drop_from(step)
                self._ema_cache = None
            values = record.get
            self.steps.append(tuple(float(v) if isinstance(v := values(name), (int, float)) else math.nan
                                    for name in FIELDS))
            return True
        if kind == "val":
            if len(self.val) and step <= self.val.x[-1]:
                self.val.drop_from(step)
            self.val.append(step, loss)
            return True
        return False

    # -- what the chart draws ----------------------------------------------------------------

    def has(self, field: str) -> bool:
        """Does this overlay have any value of this field?"""
        return bool(len(self.steps)) and bool(np.isfinite(self.steps[field]).any())

    def smoothed(self, weight: float) -> np.ndarray:
        """The debiased EMA of the loss (as the chart's own); extended, not recomputed, as steps arrive."""
        losses = self.steps["loss"]
        cache = getattr(self, "_ema_cache", None)
        if cache is None or cache[0] != weight or cache[1] > len(losses):
            cache = (weight, 0, 0.0, 1.0, np.empty(0))
        _, done, ema, power, out = cache
        if done < len(losses):
            new = np.empty(len(losses) - done)
            for i, loss in enumerate(losses[done:].tolist()):
                ema = weight * ema + (1 - weight) * loss
                power *= weight
                new[i] = ema / (1 - power) if power != 1.0 else loss
            out = np.concatenate([out[:done], new])
        self._ema_cache = (weight, len(losses), ema, power, out)
        return out


def load_overlays(live, compare: list, reference=None) -> tuple[list[Overlay], str]:
    """The overlays of `compare` (run directories) and `reference` (a metrics file), and the live
    run's legend name; raises OverlayError (one line) for a file with no curve."""
    paths = [Path(live), *map(Path, compare)]
    names = overlay_names(paths)
    overlays = [Overlay(path, name) for path, name in zip(paths[1:], names[1:])]
    if reference is not None:
        overlays.append(Overlay(reference, f"ref {Path(reference).name}", reference=True))
    return overlays, names[0]
