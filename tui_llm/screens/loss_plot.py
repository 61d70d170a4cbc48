"""The loss chart: raw and smoothed training loss plus validation loss on one step axis.

The full history lives in plain lists on this widget (the UI thread owns it). Drawing is the
expensive part (plotext rebuilds the whole chart), so new points only mark the chart dirty and a
timer redraws at most twice a second, from series downsampled to about two points per
terminal column (braille markers draw two points per cell).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Sequence

import numpy as np
from textual.app import RenderResult
from textual.reactive import reactive
from textual_plotext import PlotextPlot

SMOOTHING_WEIGHTS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
"""The EMA weights `+`/`-` step through (0 = no smoothing)."""

REDRAW_SECONDS = 0.5
"""The shortest time between two redraws."""

CPU_SHARE = 0.015
"""At most this share of wall time goes into redrawing while training: the UI thread competes with
the training threads for the same cores (a 200x50 chart costs ~50 ms of CPU per redraw, so it is
redrawn every ~3 s there, several times a second in a small terminal). Key presses redraw at once."""


def bucket_means(
    xs: Sequence[float], ys: Sequence[float], buckets: int
) -> tuple[list[float], list[float]]:
    """Downsample a series to at most `buckets` points, each the mean of a run of neighbours."""
    n = len(xs)
    if n <= buckets:
        return list(xs), list(ys)
    # Every bucket holds at least one point because n > buckets.
    starts = np.linspace(0, n, buckets + 1).astype(np.int64)[:-1]
    counts = np.diff(np.append(starts, n))
    x = np.add.reduceat(np.asarray(xs, dtype=np.float64), starts) / counts
    y = np.add.reduceat(np.asarray(ys, dtype=np.float64), starts) / counts
    return x.tolist(), y.tolist()


class LossPlot(PlotextPlot):
    """Train loss per step (faint raw, bold EMA-smoothed) and validation loss."""

    log_scale: reactive[bool] = reactive(False, repaint=False)
    """Draw the loss axis on a log scale."""

    smoothing: reactive[float] = reactive(0.9, repaint=False)
    """Weight of the debiased exponential moving average drawn over the raw loss."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.drawn_points = 0
        """How many train points the last redraw plotted (after downsampling)."""
        self._ema, self._weight_power = 0.0, 1.0
        self._series: tuple[list[float], ...] = ([], [], [], [], [])
        """Downsampled x, raw, smoothed, val x, val y: what render() draws."""
        self._dirty = True
        self._next_redraw = 0.0
        """monotonic() time before which the timer does not redraw (the CPU budget)."""

    def on_mount(self) -> None:
        """Label the axes and start the redraw timer."""
        self.plt.xlabel("step")
        self.set_interval(REDRAW_SECONDS, self.redraw)

    def on_resize(self) -> None:
        """A new width means a new downsampling."""
        self._dirty = True

    def add_train(self, step: int, loss: float) -> None:
        """Record one training step (non-finite losses are not plotted)."""
        if not math.isfinite(loss):
            return
        self.steps.append(step)
        self.losses.append(loss)
        self._extend_ema(loss, self.smoothing)
        self._dirty = True

    def add_val(self, step: int, loss: float) -> None:
        """Record one validation result."""
        if math.isfinite(loss):
            self.val_steps.append(step)
            self.val_losses.append(loss)
            self._dirty = True

    def drop_from(self, step: int) -> None:
        """Forget points at `step` and later (a resumed run computes them again)."""
        keep = bisect.bisect_left(self.steps, step)
        keep_val = bisect.bisect_left(self.val_steps, step)
        if keep < len(self.steps) or keep_val < len(self.val_steps):
            del self.steps[keep:], self.losses[keep:]
            del self.val_steps[keep_val:], self.val_losses[keep_val:]
            self._recompute_ema()

    def smooth_more(self) -> None:
        """Step to the next larger smoothing weight."""
        larger = [w for w in SMOOTHING_WEIGHTS if w > self.smoothing]
        self.smoothing = larger[0] if larger else self.smoothing

    def smooth_less(self) -> None:
        """Step to the next smaller smoothing weight."""
        smaller = [w for w in SMOOTHING_WEIGHTS if w < self.smoothing]
        self.smoothing = smaller[-1] if smaller else self.smoothing

    def watch_smoothing(self) -> None:
        self._recompute_ema()
        self.redraw(now=True)

    def watch_log_scale(self, log_scale: bool) -> None:
        self.border_subtitle = "log scale" if log_scale else ""
        self._dirty = True
        self.redraw(now=True)

    def _extend_ema(self, loss: float, weight: float) -> None:
        # Debiased as in TensorBoard: the EMA starts at 0, so divide by 1 - weight**n.
        self._ema = weight * self._ema + (1 - weight) * loss
        self._weight_power *= weight
        self.smoothed.append(self._ema / (1 - self._weight_power))

    def _recompute_ema(self) -> None:
        self._ema, self._weight_power = 0.0, 1.0
        self.smoothed = []
        weight = self.smoothing
        for loss in self.losses:
            self._extend_ema(loss, weight)
        self._dirty = True

    def redraw(self, now: bool = False) -> None:
        """Downsample the series again if anything changed since the last redraw.

        The timer calls this; it waits for the CPU budget unless `now` (a key was pressed).
        """
        if not self._dirty or self.size.width == 0 or (not now and time.monotonic() < self._next_redraw):
            return
        self._dirty = False
        buckets = 2 * self.size.width
        x, raw = bucket_means(self.steps, self.losses, buckets)
        _, smooth = bucket_means(self.steps, self.smoothed, buckets)
        val_x, val_y = bucket_means(self.val_steps, self.val_losses, buckets)
        self._series = (x, raw, smooth, val_x, val_y)
        self.drawn_points = len(x)
        self.refresh()

    def render(self) -> RenderResult:
        """Draw the series of the last redraw.

        plotext's build() rescales the data it was given in place (log scale), so every
        render, including repaints without new data, starts again from clean series.
        """
        x, raw, smooth, val_x, val_y = self._series
        plt = self.plt
        plt.clear_data()
        # plotext cannot draw log axes without data
        plt.yscale("log" if self.log_scale and (x or val_x) else "linear")
        if x:
            plt.plot(x, raw, marker="braille", color="gray")
            plt.plot(x, smooth, marker="braille", color="cyan", label=f"train (EMA {self.smoothing:g})")
        if val_x:
            plt.plot(val_x, val_y, marker="hd", color="orange", label="val")
        started = time.monotonic()
        chart = super().render()
        cost = time.monotonic() - started
        self._next_redraw = started + cost + max(REDRAW_SECONDS, cost / CPU_SHARE)
        return chart
