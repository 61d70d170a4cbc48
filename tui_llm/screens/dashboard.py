"""The main screen: status bar, loss chart, step timings, samples and the event log.

It only displays. `show(event)` routes one trainer event to the panels that care about it;
the app decides what the run's state is and what keys that command the trainer do. The keys
that only change the view (log scale, smoothing) are this screen's.

Steps can arrive many times a second, and every repaint takes CPU time from the training
threads on the same cores. So a step only records its numbers; the panels that show steps
(status bar, timings, loss chart) repaint from one timer, TICK_SECONDS apart. Rare events
(samples, log lines, state changes, keys) show at once.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Label, ProgressBar

from tui_llm.engine import events as ev
from tui_llm.widgets.logs import EventLog, SamplesPanel
from tui_llm.widgets.metrics_chart import MetricsChart
from tui_llm.widgets.status_bar import StatusBar
from tui_llm.widgets.timings import HISTORY, TimingsPanel

TICK_SECONDS = 1.0
"""Time between two repaints of the step panels."""

MIN_WIDTH, MIN_HEIGHT = 60, 18
"""The smallest terminal the layout fits (timings 30 columns + a chart; status 2 + chart 8 + log 6 +
footer rows): below it the screen says how large to make it, instead of scrolling the header away."""

EARLIER = "earlier  "
"""Where the log shows a time, a line from the run's history shows this."""


def latest_by_step(records: list[dict], kind: str) -> list[dict]:
    """The records of one type with a step and a loss, in step order; when a resumed run repeated
    a step, its last. (Records of another version may lack either: they are left out.)"""
    by_step = {r["step"]: r for r in records if r.get("type") == kind and isinstance(r.get("step"), int)
               and isinstance(r.get("loss"), (int, float))}
    return [by_step[step] for step in sorted(by_step)]


class DashboardScreen(Screen):
    """Everything about the run on one screen."""

    BINDINGS = [
        Binding("l", "log_scale", "Log", tooltip="Toggle a log scale on the loss axis"),
        Binding("plus", "smooth_more", "EMA", key_display="+-",
                tooltip="More / less smoothing of the train loss"),
        Binding("minus", "smooth_less", "Less smooth", show=False),
        # not in the footer (80 columns hold the others): in the help and the command palette
        Binding("m", "next_metric", "Metric", show=False,
                tooltip="Chart the loss, lr, grad_norm, tok/s or the step's fwd/bwd/opt ms"),
        Binding("x", "next_x_axis", "x axis", show=False, tooltip="Chart against steps, tokens or training time"),
        Binding("o", "toggle_overlays", "Overlays", show=False,
                tooltip="Show or hide the other runs' curves and the reference curve (watch RUN_A RUN_B, --compare)"),
    ]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.app_title = title

    def compose(self) -> ComposeResult:
        yield Label("", id="too-small")
        yield StatusBar(self.app_title, id="status")
        with Vertical(id="compile"):
            yield Label("Compiling kernels (cached after the first run)...", id="compile-label")
            yield ProgressBar(show_eta=False, id="compile-progress")
        with Horizontal(id="top"):
            yield MetricsChart(id="chart")
            yield TimingsPanel(id="timings")
        with Horizontal(id="bottom"):
            yield SamplesPanel(id="samples")
            yield EventLog(id="log")
        yield Footer(compact=True)

    class Ticked(Message):
        """The once-a-second tick: the app reads a watched run's state on it (no timer of its own)."""

    def on_mount(self) -> None:
        self.set_interval(TICK_SECONDS, self.tick)
        self.fit(self.app.size.width, self.app.size.height)

    def on_resize(self, event) -> None:
        self.fit(event.size.width, event.size.height)

    def fit(self, width: int, height: int) -> None:
        """Below MIN_WIDTH x MIN_HEIGHT show only how large the terminal must be."""
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        self.set_class(small, "-too-small")
        if small:
            self.query_one("#too-small", Label).update(
                f"make the terminal at least {MIN_WIDTH}x{MIN_HEIGHT} (it is {width}x{height}); "
                f"training goes on, q quits")

    def tick(self) -> None:
        """Repaint the step panels whose numbers changed since the last tick."""
        self.post_message(self.Ticked())
        chart = self.chart
        if chart.overlays:
            chart.poll_overlays()
        self.status_bar.tick()
        self.timings.tick()
        self.chart.redraw()

    @property
    def chart(self) -> MetricsChart:
        return self.query_one(MetricsChart)

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

    # -- view keys -----------------------------------------------------------------------

    def action_log_scale(self) -> None:
        """Toggle the y axis between linear and log."""
        chart = self.chart
        chart.log_scale = not chart.log_scale

    def action_smooth_more(self) -> None:
        """More smoothing of the train loss."""
        self.chart.smooth_more()

    def action_smooth_less(self) -> None:
        """Less smoothing of the train loss."""
        self.chart.smooth_less()

    def action_next_metric(self) -> None:
        """Chart the next metric: loss, lr, grad_norm, tok/s, step ms."""
        self.chart.next_metric()

    def action_next_x_axis(self) -> None:
        """Chart against the next x axis: steps, tokens, training time."""
        self.chart.next_x_axis()

    def action_toggle_overlays(self) -> None:
        """Show or hide the overlays (other runs, the reference curve)."""
        chart = self.chart
        if chart.overlays:
            chart.toggle_overlays()
        else:
            self.notify("no overlays: tui-llm watch RUN_A RUN_B, --compare RUN_DIR or --reference FILE", timeout=4)

    # -- what the app tells -------------------------------------------------------------

    def set_state(self, state: ev.RunState) -> None:
        """Show the run state (computed by the app)."""
        self.status_bar.state = state
        self.set_class(state == ev.RunState.COMPILING, "-compiling")

    def load_history(self, records: list[dict]) -> None:
        """Show the run so far (metrics.jsonl's records): its curves, samples and log."""
        train, val = latest_by_step(records, "train"), latest_by_step(records, "val")
        chart = self.chart
        for record in train:  # maybe 100k of them: only the chart needs them all, and not as events
            chart.add_step(record)
        for record in val:
            chart.add_val(record["step"], float(record["loss"]))
        for record in train[-HISTORY:]:
            if isinstance(event := ev.event_from_json(record), ev.TrainStep):
                self.timings.record(event)
        for record in records:
            if record.get("type") in ("train", "compiling"):
                continue
            if (event := ev.event_from_json(record)) is not None:
                self.show(event, replay=True)
        if train:
            self.event_log.add(f"loaded {len(train):,} steps and {len(val):,} validations of earlier training",
                               when=EARLIER)

    def remove_compile_panel(self) -> None:
        """Compiling is over: the progress bar goes (its timers would go on waking the UI)."""
        self.query("#compile").remove()

    def show(self, event: ev.Event, replay: bool = False) -> None:
        """Route one trainer event to the panels; `replay`: an event of the run's history."""
        log = self.event_log

        def add(message: str, level: str = "info") -> None:
            log.add(message, level, when=EARLIER if replay else None)

        match event:
            case ev.Compiling(done=done, total=total, name=name):
                for label in self.query("#compile-label").results(Label):
                    label.update(f"Compiling kernels (cached after the first run): {done}/{total} {name}")
                for bar in self.query(ProgressBar):
                    bar.update(total=total, progress=done)
                self.status_bar.compile_note = f"{done}/{total} {name}  "
            case ev.RunStarted():
                if not replay:
                    self.remove_compile_panel()
                    self.chart.drop_from(event.step)
                    self.status_bar.show_start(event)
                resumed = f" (resuming at step {event.step:,})" if event.step else ""
                add(f"run started{resumed}: {event.run_dir}")
            case ev.TrainStep():
                self.chart.add_step(event)
                self.timings.record(event)
                self.status_bar.record_step(event)
            case ev.Validation(step=step, loss=loss):
                if not replay:
                    self.chart.add_val(step, loss)
                add(f"step {step:,}: val loss {loss:.4f}")
            case ev.Sample():
                self.samples.show(
                    event.step, event.prompt, event.text, event.token_texts, event.token_probs
                )
            case ev.ChatReply(step=step, text=text, message=message):
                add(f"step {step:,}: chat: no reply ({message})" if message else
                    f"step {step:,}: chat reply ({len(event.token_ids)} tokens): {text[:60]}")
            case ev.CheckpointSaved():
                add(f"step {event.step:,}: saved {event.path} ({event.reason}, {event.seconds:.1f} s)", "good")
            case ev.Paused(step=step):
                add(f"paused at step {step:,}")
            case ev.Resumed(step=step):
                add(f"resumed at step {step:,}")
            case ev.SettingChanged(step=step, name=name, value=value):
                self.chart.add_marker(step, f"{name} = {value:g}")
                add(f"step {step:,}: {name} = {value:g}", "good")
            case ev.Notice(text=text, level=level):
                add(text, level)
            case ev.Error(step=step, message=message):
                add(f"step {step:,}: ERROR {message}", "error")
            case ev.Finished(step=step, reason=reason):
                if replay:
                    add(f"stopped at step {step:,} ({reason})")
                else:
                    self.remove_compile_panel()
                    add(f"finished at step {step:,} ({reason})", "good")
