"""The two-line status bar: what is training, how far it is, and what state the run is in."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from tui_llm.engine.events import RunStarted, RunState, TrainStep

STATE_STYLES = {
    RunState.STARTING: "bold",
    RunState.COMPILING: "bold cyan",
    RunState.RUNNING: "bold green",
    RunState.PAUSED: "bold yellow",
    RunState.SAMPLING: "bold magenta",
    RunState.SAVING: "bold blue",
    RunState.STOPPING: "bold yellow",
    RunState.FINISHED: "bold blue",
    RunState.ERROR: "bold white on red",
    RunState.STALE: "bold black on yellow",
}

ETA_SKIP_STEPS = 2
"""Steps after a start or resume left out of the ETA (caches warm up, threads spin up)."""
ETA_MIN_STEPS = 5
"""Step intervals needed before an ETA is shown."""
ETA_WINDOW = 200
"""Step arrivals the ETA averages over (validation and sampling time included)."""


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


class EtaClock:
    """Seconds per step from when steps arrive: warm-up steps skipped, averaged over a window, a
    pause cut out of it (so neither compiling nor a pause counts as training time)."""

    def __init__(self) -> None:
        self.arrivals: deque[float] = deque(maxlen=ETA_WINDOW)
        self._skip = ETA_SKIP_STEPS

    def restart(self) -> None:
        """Steps stopped for a while (pause, resume of the run): start a new window."""
        self.arrivals.clear()
        self._skip = ETA_SKIP_STEPS

    def shift(self, seconds: float) -> None:
        """A pause of `seconds` ended: move the window past it, as if it had not happened."""
        self.arrivals = deque((t + seconds for t in self.arrivals), maxlen=ETA_WINDOW)

    def step(self, now: float) -> None:
        if self._skip > 0:
            self._skip -= 1
            self.arrivals.clear()
        self.arrivals.append(now)

    def seconds_per_step(self) -> float | None:
        if len(self.arrivals) <= ETA_MIN_STEPS:
            return None
        return (self.arrivals[-1] - self.arrivals[0]) / (len(self.arrivals) - 1)

    def eta(self, steps_left: int, now: float) -> float | None:
        per_step = self.seconds_per_step()
        if per_step is None:
            return None
        return max(0.0, steps_left * per_step - (now - self.arrivals[-1]))


class StatusBar(Widget):
    """Model, data, progress, optimizer numbers, elapsed training time, ETA and the run state."""

    DEFAULT_CSS = """
    StatusBar {
        height: 2;
        padding: 0 1;
        background: $panel;
    }
    """

    state: reactive[RunState] = reactive(RunState.STARTING)
    """What the run is doing (the app decides)."""

    compile_note: reactive[str] = reactive("")
    """Which kernel is compiling, while kernels compile."""

    def __init__(self, title: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.app_title = title
        self.run_info: RunStarted | None = None
        self.last: TrainStep | None = None
        self.eta_clock = EtaClock()
        self._last_arrival: float | None = None
        self._paused_at: float | None = None
        self._shown_step: TrainStep | None = None
        self._shown_seconds: int | None = None

    def show_start(self, event: RunStarted) -> None:
        """A run began (or resumed): remember what it trains."""
        self.run_info = event
        self.eta_clock.restart()
        self.refresh()

    def record_step(self, event: TrainStep) -> None:
        """A step finished (shown at the next `tick`)."""
        self.last = event
        self._last_arrival = now = time.monotonic()
        self.eta_clock.step(now)

    def watch_state(self, old: RunState, state: RunState) -> None:
        if state == RunState.PAUSED:
            self._paused_at = time.monotonic()
        elif old == RunState.PAUSED and self._paused_at is not None:  # the pause is not training time
            pause = time.monotonic() - self._paused_at
            self.eta_clock.shift(pause)
            if self._last_arrival is not None:
                self._last_arrival += pause
            self._paused_at = None

    @property
    def clock_runs(self) -> bool:
        return self.state in (RunState.RUNNING, RunState.SAVING, RunState.SAMPLING) and self._last_arrival is not None

    def elapsed_s(self) -> float:
        """Training time of the run, across resumes; between steps it goes on from the last one."""
        if self.last is not None:
            elapsed = self.last.elapsed_s
        else:
            elapsed = self.run_info.elapsed_s if self.run_info else 0.0
        if self.clock_runs:
            elapsed += time.monotonic() - self._last_arrival
        return elapsed

    def tick(self) -> None:
        """Repaint if a step arrived or the clock moved on to another second since the last one."""
        seconds = int(self.elapsed_s()) if self.clock_runs else None
        if self.last is not self._shown_step or seconds != self._shown_seconds:
            self._shown_step, self._shown_seconds = self.last, seconds
            self.refresh()

    def render(self) -> Text:
        """Both lines, built as rich Text (file names may contain '[')."""
        top = Text.assemble((self.app_title, "bold"))
        if self.run_info is not None:
            run = self.run_info
            top.append(f"  {run.model_name}", "bold")
            trained = run.trainable_params or run.num_params
            params = f" {human_count(run.num_params)} params" if trained == run.num_params else \
                f" {human_count(trained)} of {human_count(run.num_params)} params trained (LoRA)"
            top.append(params, "dim")
            top.append(f"  {run.memory_bytes / 2**30:,.1f} GiB", "dim")
            top.append(f"  data {Path(run.train_file).name}")
            top.append(f" ({human_count(run.train_tokens)} tok)", "dim")

        state = RunState(self.state)
        bottom = Text.assemble((f" {state.value.upper()} ", STATE_STYLES.get(state, "bold")), " ")
        if state == RunState.COMPILING:
            bottom.append(self.compile_note)
        if self.run_info is not None:
            step = self.last.step if self.last else self.run_info.step  # steps done
            total = self.run_info.steps
            bottom.append(f"step {step:,}/{total:,}")
            if self.last is not None:
                last = self.last
                bottom.append(f"  ep {last.epoch}  lr {last.lr:.2e}  grad_norm {last.grad_norm:.2f}")
                if 0 < last.loss_tokens != self.run_info.tokens_per_step:  # a loss mask: what the loss counted
                    bottom.append(f"  loss_tokens {human_count(last.loss_tokens)}", "dim")
            bottom.append(f"  {human_duration(self.elapsed_s())}", "dim")
            if step < total and state not in (RunState.FINISHED, RunState.ERROR):
                now = time.monotonic() if self.clock_runs else self._last_arrival or time.monotonic()
                eta = self.eta_clock.eta(total - step, now)  # held still while paused
                if eta is not None:
                    bottom.append(f"  ETA {human_duration(eta)}")
        # one line each, whatever the width: the state must never be pushed out of view
        for line in (top, bottom):
            line.truncate(max(1, self.size.width), overflow="ellipsis")
        return Text("\n").join([top, bottom])
