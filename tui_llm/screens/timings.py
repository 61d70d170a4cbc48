"""Where the time of a training step goes: forward, backward and optimizer phases."""

from __future__ import annotations

from collections import deque
from statistics import mean

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from tui_llm.engine.events import StepDone

HISTORY = 120
"""Steps of history behind each sparkline."""


class PhaseRow(Vertical):
    """One phase: its last duration and share of the step, over a sparkline of recent steps."""

    def __init__(self, phase: str) -> None:
        super().__init__(classes="phase-row")
        self.phase = phase
        self.history: deque[float] = deque(maxlen=HISTORY)

    def compose(self) -> ComposeResult:
        yield Static(Text(self.phase, style="bold"))
        yield Sparkline([], summary_function=mean)

    def show(self, ms: float, step_ms: float) -> None:
        """Add this step's time in the phase."""
        self.history.append(ms)
        share = ms / step_ms if step_ms > 0 else 0.0
        line = Text.assemble((f"{self.phase} ", "bold"), f"{ms:8.1f} ms", (f"  {share:4.0%}", "dim"))
        self.query_one(Static).update(line)
        self.query_one(Sparkline).data = list(self.history)


class TimingsPanel(Vertical):
    """Last step's phase timings, their recent history, and throughput."""

    def compose(self) -> ComposeResult:
        yield PhaseRow("fwd")
        yield PhaseRow("bwd")
        yield PhaseRow("opt")
        yield Static(id="throughput")

    def on_mount(self) -> None:
        self.border_title = "step time"

    def show(self, event: StepDone) -> None:
        """Show one finished step."""
        phases = (event.fwd_ms, event.bwd_ms, event.opt_ms)
        for row, ms in zip(self.query(PhaseRow), phases):
            row.show(ms, event.step_ms)
        steps_per_s = 1000.0 / event.step_ms if event.step_ms > 0 else 0.0
        self.query_one("#throughput", Static).update(Text.assemble(
            ("step ", "bold"), f"{event.step_ms:7.1f} ms  ", (f"{steps_per_s:.2f}/s", "dim"), "\n",
            ("tok/s ", "bold"), f"{event.tok_per_s:,.0f}",
        ))
