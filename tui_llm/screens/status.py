"""The two-line status bar: what is training, how far it is, and what state the run is in."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui_llm.engine.events import RunStarted, TrainStep

STATE_STYLES = {
    "starting": "bold",
    "compiling": "bold cyan",
    "running": "bold green",
    "paused": "bold yellow",
    "sampling": "bold magenta",
    "saving": "bold blue",
    "stopping": "bold yellow",
    "finished": "bold blue",
    "error": "bold white on red",
}


def human_count(n: int) -> str:
    """124439808 -> '124.4M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def human_duration(seconds: float) -> str:
    """3725 -> '1h02m', 185 -> '3m05s', 12 -> '12s'."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class StatusBar(Widget):
    """Model, data, progress, optimizer numbers, elapsed time, ETA and the run state."""

    state: reactive[str] = reactive("starting")
    """One of the keys of STATE_STYLES."""

    compile_note: reactive[str] = reactive("")
    """Which kernel is compiling, while kernels compile."""

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.app_title = title
        self.run_info: RunStarted | None = None
        self.last: TrainStep | None = None
        self._step_ms_ema: float | None = None
        self._started: float | None = None
        self._stopped: float | None = None
        self._shown_step: TrainStep | None = None
        self._shown_seconds: int | None = None

    def show_start(self, event: RunStarted) -> None:
        """A run began: remember what it trains and start the clock."""
        self.run_info = event
        self._started = time.monotonic()
        self.refresh()

    def record_step(self, event: TrainStep) -> None:
        """A step finished (shown at the next `tick`)."""
        self.last = event
        ema = self._step_ms_ema
        self._step_ms_ema = event.step_ms if ema is None else 0.9 * ema + 0.1 * event.step_ms

    def tick(self) -> None:
        """Repaint if a step arrived or the clock moved on to another second since the last one."""
        running = self._started is not None and self._stopped is None
        seconds = int(time.monotonic() - self._started) if running else None
        if self.last is not self._shown_step or seconds != self._shown_seconds:
            self._shown_step, self._shown_seconds = self.last, seconds
            self.refresh()

    def stop_clock(self) -> None:
        """The run finished: freeze the elapsed time."""
        self._stopped = time.monotonic()
        self.refresh()

    def render(self) -> Text:
        """Both lines, built as rich Text (file names may contain '[')."""
        top = Text.assemble((self.app_title, "bold"))
        if self.run_info is not None:
            run = self.run_info
            top.append(f"  {run.model_name}", "bold")
            top.append(f" {human_count(run.num_params)} params", "dim")
            top.append(f"  data {Path(run.train_file).name}")
            top.append(f" ({human_count(run.train_tokens)} tok)", "dim")

        state = self.state
        bottom = Text.assemble((f" {state.upper()} ", STATE_STYLES.get(state, "bold")), " ")
        if state == "compiling":
            bottom.append(self.compile_note)
        if self.run_info is not None:
            step = self.last.step if self.last else self.run_info.step  # steps done
            total = self.run_info.steps
            bottom.append(f"step {step:,}/{total:,}")
            if self.last is not None:
                last = self.last
                bottom.append(f"  ep {last.epoch}  lr {last.lr:.2e}  grad_norm {last.grad_norm:.2f}")
            if self._started is not None:
                now = self._stopped or time.monotonic()
                bottom.append(f"  {human_duration(now - self._started)}", "dim")
            if self._step_ms_ema and step < total and self._stopped is None:
                eta = (total - step) * self._step_ms_ema / 1000.0
                bottom.append(f"  ETA {human_duration(eta)}")
        # one line each, whatever the width: the state must never be pushed out of view
        for line in (top, bottom):
            line.truncate(max(1, self.size.width), overflow="ellipsis")
        return Text("\n").join([top, bottom])
