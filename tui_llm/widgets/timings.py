"""Where the time of a training step goes: forward, backward and optimizer phases.

One widget draws the whole panel: for each phase its last duration and share of the step over a
sparkline of recent steps, then step time, steps/s and tokens/s. Steps are recorded as they
arrive; the panel draws itself again only when the dashboard ticks. (It used to be eleven
Static and Sparkline widgets; repainting those took more CPU than the rest of the dashboard.)
"""

from __future__ import annotations

from collections import deque

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from tui_llm.engine.events import TrainStep
from tui_llm.widgets.text_charts import sparkline_rows

HISTORY = 120
"""Steps of history behind each sparkline."""

PHASES = ("fwd", "bwd", "opt")


class TimingsPanel(Widget):
    """Last step's phase timings, their recent history, and throughput."""

    DEFAULT_CSS = """
    TimingsPanel {
        width: 30;
        padding: 0 1;
        border: round $primary;
        border-title-color: $text;
    }
    TimingsPanel > .timings--label {
        text-style: bold;
    }
    TimingsPanel > .timings--dim {
        color: $text-muted;
    }
    TimingsPanel > .timings--fwd {
        color: $primary-lighten-2;
    }
    TimingsPanel > .timings--bwd {
        color: $secondary-lighten-2;
    }
    TimingsPanel > .timings--opt {
        color: $success;
    }
    """

    COMPONENT_CLASSES = {"timings--label", "timings--dim", "timings--fwd", "timings--bwd", "timings--opt"}

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.history = {phase: deque(maxlen=HISTORY) for phase in PHASES}
        """Recent milliseconds of each phase."""
        self.last: TrainStep | None = None
        """The last step recorded."""
        self._shown: TrainStep | None = None
        self._strips: list[Strip] = []

    def on_mount(self) -> None:
        self.border_title = "step time"

    def record(self, event: TrainStep) -> None:
        """Add one finished step to the history (shown at the next `tick`)."""
        for phase, ms in zip(PHASES, (event.fwd_ms, event.bwd_ms, event.opt_ms)):
            self.history[phase].append(ms)
        self.last = event

    def tick(self) -> None:
        """Draw the panel again if a step arrived since the last tick."""
        if self.last is not self._shown:
            self._shown = self.last
            self.draw()

    def on_resize(self) -> None:
        self.draw()

    def notify_style_update(self) -> None:
        """The theme or CSS changed: draw again with the new colours."""
        super().notify_style_update()
        self.call_later(self.draw)

    def draw(self) -> None:
        """Lay out the panel for its size: two lines of throughput, the rest shared by the phases."""
        width, height = self.size
        event = self.last
        if width == 0 or height == 0:
            return
        base = self.rich_style
        label, dim = (self.get_component_rich_style(f"timings--{name}") for name in ("label", "dim"))

        def line(*parts: tuple[str, Style]) -> Strip:
            return Strip([Segment(text, style) for text, style in parts], None).crop_extend(0, width, base)

        spark_rows = max(0, (height - 2 - len(PHASES)) // len(PHASES))
        strips = []
        for phase, ms in zip(PHASES, (event.fwd_ms, event.bwd_ms, event.opt_ms) if event else (None,) * 3):
            if ms is None:
                strips.append(line((phase, label)))
            else:
                share = ms / event.step_ms if event.step_ms > 0 else 0.0
                strips.append(line((f"{phase} ", label), (f"{ms:8.1f} ms", base), (f"  {share:4.0%}", dim)))
            bars = self.get_component_rich_style(f"timings--{phase}")
            values = np.fromiter(self.history[phase], dtype=np.float64)
            strips += [line((text, bars)) for text in sparkline_rows(values, width, spark_rows)]
        if event is not None:
            steps_per_s = 1000.0 / event.step_ms if event.step_ms > 0 else 0.0
            strips.append(line(("step ", label), (f"{event.step_ms:7.1f} ms  ", base), (f"{steps_per_s:.2f}/s", dim)))
            strips.append(line(("tok/s ", label), (f"{event.tok_per_s:,.0f}", base)))
        if len(strips) != len(self._strips):
            self.refresh()
        else:  # repaint only the lines that changed (each repainted line costs the terminal and Textual)
            for y, (old, new) in enumerate(zip(self._strips, strips)):
                if old != new:
                    self.refresh(Region(0, y, width, 1))
        self._strips = strips

    def render_line(self, y: int) -> Strip:
        if y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)
