"""The main screen: status bar, loss chart, step timings, samples and the event log.

It only displays. `show(event)` routes one trainer event to the panels that care about it;
the app decides what the run's state is and what keys do.

Steps can arrive many times a second, and every repaint takes CPU time from the training
threads on the same cores. So a step only records its numbers; the panels that show steps
(status bar, timings, loss chart) repaint from one timer, TICK_SECONDS apart. Rare events
(samples, log lines, state changes, keys) show at once.
"""

from __future__ import annotations

import dataclasses
import math

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Label, ProgressBar

from tui_llm.engine import events as ev
from tui_llm.screens.logs import EventLog, SamplesPanel
from tui_llm.screens.loss_plot import LossPlot
from tui_llm.screens.status import StatusBar
from tui_llm.screens.timings import HISTORY, TimingsPanel

TICK_SECONDS = 1.0
"""Time between two repaints of the step panels."""

REPLAYED = {cls.kind: cls for cls in (ev.TrainStep, ev.Sample, ev.CheckpointSaved, ev.Validation, ev.Notice, ev.Error)}
"""The metrics.jsonl records rebuilt into events when an earlier run's history is shown."""
FIELDS = {kind: {f.name for f in dataclasses.fields(cls)} for kind, cls in REPLAYED.items()}


def event_from_record(record: dict) -> ev.Event | None:
    """Rebuild an event from its metrics.jsonl record, or None if it is not one we replay."""
    kind = record.get("type", "")
    if kind not in REPLAYED:
        return None
    try:
        return REPLAYED[kind](**{k: v for k, v in record.items() if k in FIELDS[kind]})
    except TypeError:  # a field is missing: written by another version
        return None


def latest_by_step(records: list[dict], kind: str) -> list[dict]:
    """The records of one type in step order; when a resumed run repeated a step, its last."""
    by_step = {r.get("step", 0): r for r in records if r.get("type") == kind}
    return [by_step[step] for step in sorted(by_step)]


class DashboardScreen(Screen):
    """Everything about the run on one screen."""

    def __init__(self, title: str) -> None:
        super().__init__()
        self.app_title = title

    def compose(self) -> ComposeResult:
        yield StatusBar(self.app_title, id="status")
        with Vertical(id="compile"):
            yield Label("Compiling kernels (cached after the first run)...", id="compile-label")
            yield ProgressBar(show_eta=False, id="compile-progress")
        with Horizontal(id="top"):
            yield LossPlot(id="loss")
            yield TimingsPanel(id="timings")
        with Horizontal(id="bottom"):
            yield SamplesPanel(id="samples")
            yield EventLog(id="log")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(LossPlot).border_title = "loss"
        self.set_interval(TICK_SECONDS, self.tick)

    def tick(self) -> None:
        """Repaint the step panels whose numbers changed since the last tick."""
        self.status_bar.tick()
        self.timings.tick()
        self.loss_plot.redraw()

    @property
    def loss_plot(self) -> LossPlot:
        return self.query_one(LossPlot)

    @property
    def event_log(self) -> EventLog:
        return self.query_one(EventLog)

    @property
    def samples(self) -> SamplesPanel:
        return self.query_one(SamplesPanel)

    @property
    def status_bar(self) -> StatusBar:
        return self.query_one(StatusBar)

    @property
    def timings(self) -> TimingsPanel:
        return self.query_one(TimingsPanel)

    def set_state(self, state: str) -> None:
        """Show the run state (computed by the app)."""
        self.status_bar.state = state
        self.set_class(state == "compiling", "-compiling")

    def load_history(self, records: list[dict]) -> None:
        """Replay an earlier run's metrics.jsonl: plot its losses, show its samples and saves."""
        train, val = latest_by_step(records, "train"), latest_by_step(records, "val")
        plot = self.loss_plot
        for record in train:  # maybe 100k of them: only the plot needs them all
            plot.add_train(record.get("step", 0), record.get("loss", math.nan))
        for record in val:
            plot.add_val(record.get("step", 0), record.get("loss", math.nan))
        for record in train[-HISTORY:]:
            if (event := event_from_record(record)) is not None:
                self.timings.record(event)
        for record in records:
            if record.get("type") in ("sample", "checkpoint"):
                if (event := event_from_record(record)) is not None:
                    self.show(event)
        if train:
            self.event_log.add(f"loaded {len(train):,} steps and {len(val):,} validations "
                               "of earlier training")

    def remove_compile_panel(self) -> None:
        """Compiling is over: the progress bar goes (its timers would go on waking the UI)."""
        self.query("#compile").remove()

    def show(self, event: ev.Event) -> None:
        """Route one trainer event to the panels."""
        match event:
            case ev.Compiling(done=done, total=total, name=name):
                for label in self.query("#compile-label").results(Label):
                    label.update(f"Compiling kernels (cached after the first run): {done}/{total} {name}")
                for bar in self.query(ProgressBar):
                    bar.update(total=total, progress=done)
                self.status_bar.compile_note = f"{done}/{total} {name}  "
            case ev.RunStarted():
                self.remove_compile_panel()
                self.loss_plot.drop_from(event.step)
                self.status_bar.show_start(event)
                resumed = f" (resuming at step {event.step:,})" if event.step else ""
                self.event_log.add(f"run started{resumed}: {event.run_dir}")
            case ev.TrainStep():
                self.loss_plot.add_train(event.step, event.loss)
                self.timings.record(event)
                self.status_bar.record_step(event)
            case ev.Validation(step=step, loss=loss):
                self.loss_plot.add_val(step, loss)
                self.event_log.add(f"step {step:,}: val loss {loss:.4f}")
            case ev.Sample():
                self.samples.show(
                    event.step, event.prompt, event.text, event.token_texts, event.token_probs
                )
            case ev.CheckpointSaved():
                self.event_log.add(
                    f"step {event.step:,}: saved {event.path} ({event.reason}, {event.seconds:.1f} s)",
                    "good",
                )
            case ev.Paused(step=step):
                self.event_log.add(f"paused at step {step:,}")
            case ev.Resumed(step=step):
                self.event_log.add(f"resumed at step {step:,}")
            case ev.Notice(text=text, level=level):
                self.event_log.add(text, level)
            case ev.Error(step=step, message=message):
                self.event_log.add(f"step {step:,}: ERROR {message}", "error")
            case ev.Finished(step=step, reason=reason):
                self.remove_compile_panel()
                self.status_bar.stop_clock()
                self.event_log.add(f"finished at step {step:,} ({reason}); q quits", "good")
