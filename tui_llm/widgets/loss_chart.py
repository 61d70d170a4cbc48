"""The loss chart: raw and smoothed training loss plus validation loss on one step axis.

The full history lives in numpy buffers on this widget (the UI thread owns it). New points only
mark the chart stale: the dashboard calls `redraw()` once a second, which draws the chart again
(widgets/text_charts.py: about a millisecond, even for a 100k-step run in a large terminal) and asks
Textual to repaint only the rows that changed, usually a few at the right end of the curves.
"""

from __future__ import annotations

import math

from rich.segment import Segment
from textual.geometry import Region
from textual.reactive import reactive
from textual.strip import Strip
from textual.widget import Widget

from tui_llm.widgets.text_charts import AXIS, Line, Points, Row, draw_chart

SMOOTHING_WEIGHTS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99)
"""The EMA weights `+`/`-` step through (0 = no smoothing)."""


class LossChart(Widget):
    """Train loss per step (faint raw, bold EMA-smoothed) and validation loss."""

    DEFAULT_CSS = """
    LossChart {
        border: round $primary;
        border-title-color: $text;
        border-subtitle-color: $text-muted;
    }
    LossChart > .loss-chart--axis {
        color: $text-muted;
    }
    LossChart > .loss-chart--train {
        color: $text-disabled;
    }
    LossChart > .loss-chart--smoothed {
        color: $primary-lighten-2;
        text-style: bold;
    }
    LossChart > .loss-chart--val {
        color: $warning;
        text-style: bold;
    }
    """

    COMPONENT_CLASSES = {"loss-chart--train", "loss-chart--smoothed", "loss-chart--val", "loss-chart--axis"}

    log_scale: reactive[bool] = reactive(False, repaint=False)
    """Draw the loss axis on a log scale."""

    smoothing: reactive[float] = reactive(0.9, repaint=False)
    """Weight of the debiased exponential moving average drawn over the raw loss."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.border_title = "loss"
        self.train = Points()
        """Raw training loss by step."""
        self.smoothed = Points()
        """The EMA of `train` at the same steps."""
        self.val = Points()
        """Validation loss by step."""
        self.drawn_points = 0
        """How many train points the last redraw drew."""
        self._ema, self._weight_power = 0.0, 1.0
        self._rows: list[Row] = []
        """The chart's text and style names, as last drawn."""
        self._strips: list[Strip] = []
        """The same, ready for Textual."""
        self._y_range: tuple[float, float] | None = None
        """The loss range drawn last time, kept while the data fills most of it."""
        self._stale = True
        """Points arrived (or the view changed) since the last redraw."""
        self._restyle = True
        """The whole widget must be repainted (new size or colours), not just changed rows."""

    # -- data --------------------------------------------------------------------------

    def add_train(self, step: int, loss: float) -> None:
        """Record one training step (non-finite losses are not plotted)."""
        if not math.isfinite(loss):
            return
        self.train.append(step, loss)
        self._extend_ema(step, loss, self.smoothing)
        self._stale = True

    def add_val(self, step: int, loss: float) -> None:
        """Record one validation result."""
        if math.isfinite(loss):
            self.val.append(step, loss)
            self._stale = True

    def drop_from(self, step: int) -> None:
        """A run resumes with `step` steps done: forget the train losses of later steps and the
        validations from `step` on (the resumed run computes them again)."""
        self.train.drop_from(step + 1)
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

    def watch_smoothing(self) -> None:
        self._recompute_ema()
        self.redraw()

    def watch_log_scale(self, log_scale: bool) -> None:
        self.border_subtitle = "log scale" if log_scale else ""
        self._y_range = None  # a range found on the other scale
        self._stale = True
        self.redraw()

    def _extend_ema(self, step: float, loss: float, weight: float) -> None:
        # Debiased as in TensorBoard: the EMA starts at 0, so divide by 1 - weight**n.
        self._ema = weight * self._ema + (1 - weight) * loss
        self._weight_power *= weight
        self.smoothed.append(step, self._ema / (1 - self._weight_power))

    def _recompute_ema(self) -> None:
        self._ema, self._weight_power = 0.0, 1.0
        self.smoothed = Points()
        weight = self.smoothing
        for step, loss in zip(self.train.x.tolist(), self.train.y.tolist()):
            self._extend_ema(step, loss, weight)
        self._stale = True

    # -- drawing -----------------------------------------------------------------------

    def on_resize(self) -> None:
        self._stale = self._restyle = True
        self.redraw()

    def notify_style_update(self) -> None:
        """The theme or CSS changed: draw again with the new colours."""
        super().notify_style_update()
        self._stale = self._restyle = True
        self.call_later(self.redraw)

    def redraw(self) -> None:
        """Draw the chart again if anything changed since the last time; repaint the rows that differ."""
        width, height = self.size
        if not self._stale or width == 0 or height == 0:
            return
        self._stale = False
        lines = [
            Line(self.train.x, self.train.y, "train", "train"),
            Line(self.smoothed.x, self.smoothed.y, "smoothed", f"EMA {self.smoothing:g}"),
            Line(self.val.x, self.val.y, "val", "val", on_top=True),
        ]
        rows, self._y_range = draw_chart(width, height, lines, log_y=self.log_scale, x_name="step",
                                         keep_y=self._y_range)
        styles = {name: self.get_component_rich_style(f"loss-chart--{name}")
                  for name in ("train", "smoothed", "val", AXIS)}
        styles[""] = self.rich_style
        strips = [Strip([Segment(text, styles[name]) for text, name in row], width) for row in rows]
        if self._restyle or len(rows) != len(self._rows):
            self.refresh()
        else:
            for y, (old, new) in enumerate(zip(self._rows, rows)):
                if old != new:
                    self.refresh(Region(0, y, width, 1))
        self._rows, self._strips, self._restyle = rows, strips, False
        self.drawn_points = len(self.train)

    def render_line(self, y: int) -> Strip:
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)

    def chart_text(self) -> str:
        """The chart as plain text, as the last redraw drew it."""
        return "\n".join(strip.text for strip in self._strips)
