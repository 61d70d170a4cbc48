"""The metrics chart: the loss (raw, smoothed, validation), or the learning rate, grad_norm, tok/s
or the step's fwd/bwd/opt milliseconds, against steps, tokens or training time.

The full history lives in numpy columns on this widget (the UI thread owns it). New steps only
mark the chart stale: the dashboard calls `redraw()` once a second, which draws the chart again
(widgets/plotext_charts.py: plotext, handed one point per dot column, so a 100k-step run draws as
fast as a short one) and asks Textual to repaint only the rows that changed, usually a few at the
right end of the curves. `m` switches the metric, `x` the x axis, `l` the log scale, `+`/`-` the
smoothing (the dashboard's keys).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from tui_llm.widgets.overlays import Overlay
from tui_llm.widgets.plotext_charts import MARKER, draw_chart, duration_label, human_number
from tui_llm.widgets.text_charts import AXIS, Columns, Line, Points, Row, tick_label

SMOOTHING_WEIGHTS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
"""The EMA weights `+`/`-` step through (0 = no smoothing)."""

FIELDS = ("step", "tokens", "elapsed_s", "loss", "lr", "grad_norm", "tok_per_s", "fwd_ms", "bwd_ms", "opt_ms")
"""What the chart keeps of each TrainStep (the glossary's names)."""


@dataclass(frozen=True)
class Metric:
    name: str
    """The chart's title (the glossary's name)."""
    fields: tuple[str, ...]
    """The TrainStep fields drawn, one line each (their style names too)."""


METRICS = (
    Metric("loss", ("loss",)),  # plus the smoothed loss and validation
    Metric("lr", ("lr",)),
    Metric("grad_norm", ("grad_norm",)),
    Metric("tok/s", ("tok_per_s",)),
    Metric("step ms", ("fwd_ms", "bwd_ms", "opt_ms")),
)

X_AXES = {"step": ("step", tick_label), "tokens": ("tokens", human_number),
          "time": ("elapsed_s", duration_label)}
"""x axis name -> (TrainStep field, tick label)."""

CPU_SHARE = 0.005
"""At most this share of a core goes to drawing the chart for new steps (a 168x36 chart takes
5 ms: at most one a second, the tick's pace). On cores that training keeps busy the UI's CPU
comes out of the step: at 0.02 the chart was most of the UI's 1.7% of a core (issue 20)."""

OVERLAY_STYLES = ("overlay1", "overlay2", "overlay3", "overlay4")
"""The colours of other runs' curves, in turn."""

STYLES = ("train", "smoothed", "val", "metric", "fwd", "bwd", "opt", MARKER, *OVERLAY_STYLES, "reference", AXIS)


class MetricsChart(Widget):
    """Train loss per step (faint raw, bold EMA-smoothed) and validation loss; other metrics on `m`."""

    DEFAULT_CSS = """
    MetricsChart {
        border: round $primary;
        border-title-color: $text;
        border-subtitle-color: $text-muted;
    }
    MetricsChart > .metrics-chart--axis {
        color: $text-muted;
    }
    MetricsChart > .metrics-chart--train {
        color: $text-disabled;
    }
    MetricsChart > .metrics-chart--smoothed {
        color: $primary-lighten-2;
        text-style: bold;
    }
    MetricsChart > .metrics-chart--val {
        color: $warning;
        text-style: bold;
    }
    MetricsChart > .metrics-chart--metric {
        color: $primary-lighten-2;
    }
    MetricsChart > .metrics-chart--fwd {
        color: $primary-lighten-2;
    }
    MetricsChart > .metrics-chart--bwd {
        color: $secondary-lighten-2;
    }
    MetricsChart > .metrics-chart--opt {
        color: $success;
    }
    MetricsChart > .metrics-chart--marker {
        color: $accent;
    }
    MetricsChart > .metrics-chart--overlay1 {
        color: ansi_bright_magenta;
    }
    MetricsChart > .metrics-chart--overlay2 {
        color: ansi_bright_green;
    }
    MetricsChart > .metrics-chart--overlay3 {
        color: ansi_bright_red;
    }
    MetricsChart > .metrics-chart--overlay4 {
        color: ansi_bright_yellow;
    }
    MetricsChart > .metrics-chart--reference {
        color: $text;
        text-style: dim;
    }
    """

    COMPONENT_CLASSES = {f"metrics-chart--{name}" for name in STYLES}

    log_scale: reactive[bool] = reactive(False, repaint=False)
    """Draw the y axis on a log scale."""

    smoothing: reactive[float] = reactive(0.9, repaint=False)
    """Weight of the debiased exponential moving average drawn over the raw loss."""

    metric: reactive[str] = reactive("loss", repaint=False)
    """Which of METRICS is drawn."""

    x_axis: reactive[str] = reactive("step", repaint=False)
    """What the x axis counts: one of X_AXES."""

    show_overlays: reactive[bool] = reactive(True, repaint=False)
    """Draw the other runs' curves and the reference curve (`o`)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.steps = Columns(FIELDS)
        """Every step's numbers (non-finite losses are not kept)."""
        self.smoothed = Points()
        """The EMA of the train loss, by step."""
        self.val = Points()
        """Validation loss by step."""
        self.overlays: list[Overlay] = []
        """Other runs (compare) and reference curves, drawn under this run's."""
        self.live_name = ""
        """This run's name in the legend when there are overlays."""
        self.markers: list[tuple[int, str]] = []
        """(step, what changed) of each live setting change, drawn as a dotted vertical line."""
        self.drawn_points = 0
        """How many steps the last redraw drew."""
        self._ema, self._weight_power = 0.0, 1.0
        self._rows: list[Row] = []
        """The chart's text and style names, as last drawn."""
        self._strips: list[Strip] = []
        """The same, ready for Textual."""
        self._y_range: tuple[float, float] | None = None
        """The y range drawn last time, kept while the data fills most of it."""
        self._stale = True
        """Points arrived (or the view changed) since the last redraw."""
        self._restyle = True
        """The whole widget must be repainted (new size or colours), not just changed rows."""
        self._styles: dict[str, Style] = {}
        """Each style name's rich Style ("" the widget's own), looked up again on a restyle."""
        self._not_before = 0.0
        """No redraw for new steps before this time (time.monotonic())."""
        self._update_titles()

    # -- data --------------------------------------------------------------------------

    @property
    def train(self) -> Points:
        """The raw train loss by step (a view of the columns)."""
        points = Points()
        points._xy = np.stack([self.steps["step"], self.steps["loss"]])
        points.count = len(self.steps)
        return points

    def add_step(self, record) -> None:
        """Record one training step: a TrainStep, or its metrics.jsonl record (a missing field is NaN)."""
        get = record.get if isinstance(record, Mapping) else lambda name, default: getattr(record, name, default)
        values = []
        for name in FIELDS:
            value = get(name, math.nan)
            values.append(float(value) if isinstance(value, (int, float)) else math.nan)
        loss = values[FIELDS.index("loss")]
        if not math.isfinite(loss):
            return
        if len(self.steps) and values[0] <= self.steps["step"][-1]:  # a repeated step: the later one wins
            self.steps.drop_from(values[0])
            self._recompute_ema()
        self.steps.append(tuple(values))
        self._extend_ema(values[0], loss, self.smoothing)
        self._stale = True

    def add_train(self, step: int, loss: float) -> None:
        """Record a step known only by its loss."""
        self.add_step({"step": step, "loss": loss})

    def add_val(self, step: int, loss: float) -> None:
        """Record one validation result."""
        if math.isfinite(loss):
            if len(self.val) and step <= self.val.x[-1]:
                self.val.drop_from(step)
            self.val.append(step, loss)
            self._stale = True

    def add_overlay(self, overlay: Overlay) -> None:
        """Draw another run's (or a reference file's) curves too."""
        self.overlays.append(overlay)
        self._view_changed()

    def poll_overlays(self) -> None:
        """Read what live overlay runs appended (a stat each, and their new lines)."""
        if any([overlay.poll() for overlay in self.overlays]) and self.show_overlays:  # noqa: C419 (poll every one)
            self._stale = True

    def toggle_overlays(self) -> None:
        self.show_overlays = not self.show_overlays

    def watch_show_overlays(self) -> None:
        self._view_changed()

    def add_marker(self, step: int, label: str) -> None:
        """Mark a step where a live setting changed (`label`: e.g. "lr_scale = 0.5")."""
        self.markers.append((step, label))
        self.border_subtitle = self._subtitle()
        self._stale = True

    def drop_from(self, step: int) -> None:
        """A run resumes with `step` steps done: forget the steps after it and the validations
        from `step` on (the resumed run computes them again)."""
        self.markers = [(s, label) for s, label in self.markers if s <= step]
        self.steps.drop_from(step + 1)
        self.val.drop_from(step)
        self._recompute_ema()

    def smooth_more(self) -> None:
        """Step to the next larger smoothing weight."""
        larger = [w for w in SMOOTHING_WEIGHTS if w > self.smoothing]
        self.smoothing = larger[0] if larger else self.smoothing

    def smooth_less(self) -> None:
        """Step to the next smaller smoothing weight."""
        smaller = [w for w in SMOOTHING_WEIGHTS if w < self.smoothing]
        self.smoothing = smaller[-1] if smaller else self.smoothing

    def next_metric(self) -> None:
        names = [m.name for m in METRICS]
        self.metric = names[(names.index(self.metric) + 1) % len(names)]

    def next_x_axis(self) -> None:
        names = list(X_AXES)
        self.x_axis = names[(names.index(self.x_axis) + 1) % len(names)]

    def watch_smoothing(self) -> None:
        self._recompute_ema()
        self.redraw(now=True)

    def watch_log_scale(self) -> None:
        self._view_changed()

    def watch_metric(self) -> None:
        self._view_changed()

    def watch_x_axis(self) -> None:
        self._view_changed()

    def _view_changed(self) -> None:
        self._update_titles()
        self._y_range = None  # a range found for another view
        self._stale = True
        self.redraw(now=True)

    def _update_titles(self) -> None:
        self.border_title = self.metric
        self.border_subtitle = self._subtitle()

    def _subtitle(self) -> str:
        """The x axis (unless steps), the log scale, and the latest setting change."""
        parts = [] if self.x_axis == "step" else [f"x: {self.x_axis}"]
        if self.log_scale:
            parts.append("log scale")
        if self.overlays and not self.show_overlays:
            parts.append("overlays hidden (o)")
        if self.markers:
            step, label = self.markers[-1]
            parts.append(f"┊ step {step:,}: {label}")
        return ", ".join(parts)

    def _extend_ema(self, step: float, loss: float, weight: float) -> None:
        # Debiased as in TensorBoard: the EMA starts at 0, so divide by 1 - weight**n.
        self._ema = weight * self._ema + (1 - weight) * loss
        self._weight_power *= weight
        self.smoothed.append(step, self._ema / (1 - self._weight_power))

    def _recompute_ema(self) -> None:
        self._ema, self._weight_power = 0.0, 1.0
        self.smoothed = Points()
        weight = self.smoothing
        for step, loss in zip(self.steps["step"].tolist(), self.steps["loss"].tolist()):
            self._extend_ema(step, loss, weight)
        self._stale = True

    # -- drawing -----------------------------------------------------------------------

    def lines(self) -> list[Line]:
        """The lines of the current view, against the current x axis (overlays first: under this run's)."""
        field, _ = X_AXES[self.x_axis]
        xs = self.steps[field]
        overlays = self.overlay_lines()
        if self.metric == "loss":
            named = bool(overlays) and self.live_name
            lines = [Line(xs, self.steps["loss"], "train", "" if named else "train", robust=True),
                     Line(xs, self.smoothed.y, "smoothed",
                          f"{self.live_name} (EMA {self.smoothing:g})" if named else f"EMA {self.smoothing:g}",
                          smooth=True)]
            val_x = self.val.x
            if field != "step" and len(val_x):  # validations happen between steps: place them by step
                val_x = np.interp(val_x, np.concatenate([[0.0], self.steps["step"]]), np.concatenate([[0.0], xs]))
            return overlays + lines + [Line(val_x, self.val.y, "val", "val", on_top=True)]
        metric = next(m for m in METRICS if m.name == self.metric)
        if len(metric.fields) == 1:
            label = self.live_name if overlays and self.live_name else self.metric
            return overlays + [Line(xs, self.steps[metric.fields[0]], "metric", label, robust=True)]
        return [Line(xs, self.steps[f], f.removesuffix("_ms"), f.removesuffix("_ms"), robust=True)
                for f in metric.fields]

    def overlay_lines(self) -> list[Line]:
        """The overlays' curves of the current metric (those that have it), in their colours."""
        if not self.show_overlays:
            return []
        field, _ = X_AXES[self.x_axis]
        metric = next(m for m in METRICS if m.name == self.metric)
        if len(metric.fields) != 1:
            return []
        lines, others = [], 0
        for overlay in self.overlays:
            if overlay.reference:
                style = "reference"
            else:
                style, others = OVERLAY_STYLES[others % len(OVERLAY_STYLES)], others + 1
            if not overlay.has(field):
                continue
            xs = overlay.steps[field]
            if self.metric == "loss":
                lines.append(Line(xs, overlay.smoothed(self.smoothing), style, overlay.name, smooth=True))
            elif overlay.has(metric.fields[0]):
                lines.append(Line(xs, overlay.steps[metric.fields[0]], style, overlay.name, robust=True))
        return lines

    def marker_xs(self) -> list[float]:
        """Where the setting changes fall on the current x axis."""
        if not self.markers:
            return []
        steps = [float(step) for step, _ in self.markers]
        field, _ = X_AXES[self.x_axis]
        if field == "step" or not len(self.steps):
            return steps
        return np.interp(steps, np.concatenate([[0.0], self.steps["step"]]),
                         np.concatenate([[0.0], self.steps[field]])).tolist()

    def on_resize(self) -> None:
        self._stale = self._restyle = True
        self.redraw(now=True)

    def notify_style_update(self) -> None:
        """The theme or CSS changed: draw again with the new colours."""
        super().notify_style_update()
        self._stale = self._restyle = True
        self.call_later(self.redraw, True)

    def redraw(self, now: bool = False) -> None:
        """Draw the chart again if anything changed since the last time; repaint the rows that differ.

        A redraw for new steps waits while the chart's drawing would take more than CPU_SHARE of
        a core (plotext takes 10-30 ms for a large chart; a slow machine is not slowed further);
        `now`: the view changed (a key, a resize), draw at once."""
        width, height = self.size
        if not self._stale or width == 0 or height == 0:
            return
        started = time.monotonic()
        if not now and started < self._not_before:
            return
        self._stale = False
        x_name = self.x_axis
        rows, self._y_range = draw_chart(width, height, self.lines(), log_y=self.log_scale, x_name=x_name,
                                         keep_y=self._y_range, x_label=X_AXES[self.x_axis][1],
                                         markers=self.marker_xs())
        if self._restyle or not self._styles:  # looked up through the DOM: only when the theme or CSS changed
            self._styles = {name: self.get_component_rich_style(f"metrics-chart--{name}") for name in STYLES}
            self._styles[""] = self.rich_style
        styles, base = self._styles, self._styles[""]
        strips = [Strip([Segment(text, styles.get(name, base)) for text, name in row], width) for row in rows]
        if self._restyle or len(rows) != len(self._rows):
            self.refresh()
        else:
            for y, (old, new) in enumerate(zip(self._rows, rows)):
                if old != new:
                    self.refresh(Region(0, y, width, 1))
        self._rows, self._strips, self._restyle = rows, strips, False
        self.drawn_points = len(self.steps)
        self._not_before = started + (time.monotonic() - started) / CPU_SHARE

    def render_line(self, y: int) -> Strip:
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)

    def chart_text(self) -> str:
        """The chart as plain text, as the last redraw drew it."""
        return "\n".join(strip.text for strip in self._strips)
