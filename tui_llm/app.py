"""The Textual app that drives a Trainer and shows its run.

The trainer's blocking `run(emit)` loop runs in a thread worker. Every event it emits is
wrapped in a `TrainerEvent` message and posted to the app (thread-safe, non-blocking); the
app keeps the run's state from those messages alone and passes each event on to the
dashboard. Keys become commands through `trainer.send`. Nothing here reaches into the trainer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive, var
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from tui_llm.engine import events as ev
from tui_llm.screens.dashboard import DashboardScreen
from tui_llm.screens.dialogs import HelpScreen, PromptScreen, QuitScreen
from tui_llm.screens.metrics_csv import export_csv


class Trainer(Protocol):
    """All the app needs from a trainer."""

    def run(self, emit: Callable[[ev.Event], None], on_error: str = "stop") -> object: ...

    def send(self, command: ev.Command) -> None: ...


@dataclass
class TrainerEvent(Message):
    """One event from the trainer thread, delivered on the UI thread."""

    event: ev.Event


PALETTE = (
    ("pause", "Pause training", "Pause after the current step"),
    ("resume", "Resume training", "Continue from where training paused"),
    ("sample", "Sample now", "Generate a sample from the current weights"),
    ("prompt", "Sample from a prompt", "Type a prompt and generate from it"),
    ("save", "Save checkpoint", "Write a checkpoint of the current step"),
    ("log_scale", "Toggle log scale", "Switch the loss axis between linear and log"),
    ("smooth_more", "More smoothing", "Raise the EMA weight of the smoothed loss"),
    ("smooth_less", "Less smoothing", "Lower the EMA weight of the smoothed loss"),
    ("export", "Export metrics CSV", "Write metrics.csv next to metrics.jsonl"),
    ("help", "Help", "Keys and what each panel shows"),
)
"""Command palette entries: action, title, help."""


class TrainerApp(App[int]):
    """Train a model and watch it learn."""

    CSS_PATH = "app.tcss"

    BINDINGS = [
        Binding("p,space", "pause", "Pause", tooltip="Pause or resume training"),
        Binding("p,space", "resume", "Resume", tooltip="Pause or resume training"),
        Binding("s", "sample", "Sample", tooltip="Sample from the current weights"),
        Binding("g", "prompt", "Prompt", tooltip="Sample from a prompt you type"),
        Binding("c,ctrl+s", "save", "Save", tooltip="Save a checkpoint of the current step"),
        Binding("l", "log_scale", "Log", tooltip="Toggle a log scale on the loss axis"),
        Binding("plus", "smooth_more", "EMA", key_display="+-",
                tooltip="More / less smoothing of the train loss"),
        Binding("minus", "smooth_less", "Less smooth", show=False),
        Binding("e", "export", "CSV", tooltip="Export metrics.csv next to metrics.jsonl"),
        Binding("question_mark", "help", "Help", tooltip="This help"),
        Binding("q", "quit", "Quit", tooltip="Quit (asks if the last steps are not saved)"),
    ]

    phase: var[str] = var("starting", bindings=True)
    """What the trainer is doing: starting, compiling, running, paused or finished."""
    saving: var[bool] = var(False, bindings=True)
    """A SaveNow was sent and its CheckpointSaved has not arrived."""
    sampling: var[bool] = var(False, bindings=True)
    """A SampleNow was sent and its Sample has not arrived."""
    stopping: var[bool] = var(False, bindings=True)
    """A Stop was sent; the app exits when Finished arrives."""
    failed: var[bool] = var(False, bindings=True)
    """An error happened and training has not resumed since."""
    alive: var[bool] = var(True, bindings=True)
    """The trainer's run() has not returned."""
    unsaved: var[bool] = var(False, bindings=True)
    """Steps were done since the last checkpoint (the save key applies)."""
    state: reactive[str] = reactive("starting", init=False)
    """The state shown in the status bar (computed from the above)."""

    def __init__(
        self,
        trainer: Trainer,
        history: list[dict] | None = None,
        title: str = "tui-llm",
    ) -> None:
        super().__init__()
        self.trainer = trainer
        self.history = history or []
        self.title = title
        self.dashboard = DashboardScreen(title)
        self.run_dir: Path | None = None
        self.steps_done = 0
        self.saved_steps = 0
        """Steps done when the last checkpoint was written."""

    async def on_mount(self) -> None:
        """Show the dashboard with the earlier run's history, then start training."""
        await self.push_screen(self.dashboard)
        self.dashboard.load_history(self.history)
        self.run_trainer()

    @work(thread=True, exit_on_error=False, name="trainer")
    def run_trainer(self) -> None:
        """The training loop (blocking, in a thread)."""
        self.trainer.run(lambda event: self.post_message(TrainerEvent(event)), on_error="pause")

    def on_unmount(self) -> None:
        """If the app closes while the trainer still runs, let it save and stop."""
        if self.alive and not self.stopping:
            self.trainer.send(ev.Stop(save=True, reason=ev.FinishReason.INTERRUPTED))

    # -- state -------------------------------------------------------------------------

    def compute_state(self) -> str:
        if self.phase == "finished":
            return "error" if self.failed else "finished"
        if not self.alive or (self.failed and self.phase == "paused"):
            return "error"
        if self.stopping:
            return "stopping"
        if self.saving:
            return "saving"
        if self.sampling:
            return "sampling"
        return self.phase

    def watch_state(self, state: str) -> None:
        self.dashboard.set_state(state)

    def on_trainer_event(self, message: TrainerEvent) -> None:
        """Update the run state from one event, then show it."""
        event = message.event
        match event:
            case ev.Compiling():
                self.phase = "compiling"
            case ev.RunStarted():
                self.run_dir = Path(event.run_dir)
                self.steps_done = self.saved_steps = event.step
                self.phase = "running"
            case ev.TrainStep():
                self.steps_done = event.step
                self.unsaved = True
            case ev.Sample():
                self.sampling = False
            case ev.CheckpointSaved():
                self.saving = False
                self.saved_steps = max(self.saved_steps, event.step)
                self.unsaved = self.steps_done > self.saved_steps
            case ev.Paused():
                self.phase = "paused"
            case ev.Resumed():
                self.phase = "running"
                self.failed = False
            case ev.Error():
                self.saving = self.sampling = False
                self.failed = True
                self.stopping = False  # e.g. the final save failed: stay to show it
                self.notify(event.message, title="Training error", severity="error", timeout=10, markup=False)
            case ev.Finished():
                self.failed = self.failed or event.reason == "error"
                self.phase = "finished"
        self.dashboard.show(event)
        if isinstance(event, ev.Paused) and self.failed:
            hint = "the weights are intact: save (c), resume (p) or quit (q)"
            self.dashboard.event_log.add(hint, "warning")
        if isinstance(event, ev.Finished) and self.stopping:
            self.exit_run()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The trainer returned or crashed, or an export finished."""
        name, state, log = event.worker.name, event.state, self.dashboard.event_log
        if name == "trainer" and state in (WorkerState.SUCCESS, WorkerState.ERROR):
            self.alive = False
            if state == WorkerState.ERROR:
                self.failed = True
                log.add(f"the trainer crashed: {event.worker.error!r}; q quits", "error")
            if self.stopping and self.phase != "finished":
                self.exit_run()
        elif name == "export" and state == WorkerState.SUCCESS:
            log.add(f"metrics written to {event.worker.result}", "good")
        elif name == "export" and state == WorkerState.ERROR:
            log.add(f"export failed: {event.worker.error}", "error")

    def exit_run(self) -> None:
        """Leave the app: status 1 if the run ended in an error, else 0."""
        code = 1 if self.failed else 0
        self.exit(code, return_code=code)

    # -- which keys apply now ----------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """True: allowed. None: shown dimmed. False: hidden (pause/resume share a key)."""
        training = self.alive and self.phase in ("running", "paused") and not self.stopping
        if action == "pause":
            if training and self.phase == "paused":
                return False
            return True if training else None
        if action == "resume":
            return training and self.phase == "paused"
        if action in ("sample", "prompt"):
            return True if training and not self.sampling else None
        if action == "save":  # the trainer skips a save when no step was done since the last
            return True if training and not self.saving and self.unsaved else None
        if action == "export":
            return True if self.run_dir is not None else None
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette offers the same actions as the keys, when they apply."""
        yield from super().get_system_commands(screen)
        for action, title, help_text in PALETTE:
            if self.check_action(action, ()):
                yield SystemCommand(title, help_text, getattr(self, f"action_{action}"))

    # -- actions -----------------------------------------------------------------------

    def action_pause(self) -> None:
        """Pause after the current step."""
        self.trainer.send(ev.Pause())
        self.notify("Pausing after the current step...", timeout=3)

    def action_resume(self) -> None:
        """Continue training."""
        self.trainer.send(ev.Resume())

    def action_sample(self, prompt: str = "") -> None:
        """Ask for a sample from the current weights."""
        self.sampling = True
        self.trainer.send(ev.SampleNow(prompt=prompt))

    def action_prompt(self) -> None:
        """Ask for a prompt, then sample from it."""

        def sample(prompt: str | None) -> None:
            if prompt is not None and self.check_action("sample", ()):
                self.action_sample(prompt)

        self.push_screen(PromptScreen(), sample)

    def action_save(self) -> None:
        """Ask for a checkpoint of the current step."""
        self.saving = True
        self.trainer.send(ev.SaveNow())

    def action_log_scale(self) -> None:
        """Toggle the loss axis between linear and log."""
        plot = self.dashboard.loss_plot
        plot.log_scale = not plot.log_scale

    def action_smooth_more(self) -> None:
        self.dashboard.loss_plot.smooth_more()

    def action_smooth_less(self) -> None:
        self.dashboard.loss_plot.smooth_less()

    def action_export(self) -> None:
        """Write metrics.csv next to the run's metrics.jsonl (in a thread: it can be long)."""
        assert self.run_dir is not None
        self.run_worker(
            partial(export_csv, self.run_dir / "metrics.jsonl"),
            name="export", thread=True, exclusive=True, group="export", exit_on_error=False,
        )

    def action_help(self) -> None:
        """Show the keys (from BINDINGS) and what each panel shows."""
        keys: dict[str, str] = {}
        for binding in self.BINDINGS:
            if binding.show:
                shown = binding.key_display or " / ".join(
                    self.get_key_display(Binding(key, binding.action)) for key in binding.key.split(",")
                )
                keys.setdefault(shown, binding.tooltip)
        keys[self.get_key_display(Binding(self.COMMAND_PALETTE_BINDING, ""))] = "command palette"
        self.push_screen(HelpScreen(list(keys.items())))

    def action_quit(self) -> None:
        """Stop training (asking about unsaved steps) and exit once the trainer finishes."""
        if not self.alive or self.phase == "finished":
            self.exit_run()
        elif isinstance(self.screen, QuitScreen):  # ctrl+q works in dialogs too
            return
        elif self.stopping:
            self.notify("Stopping after the current step...")
        elif self.unsaved:
            self.push_screen(QuitScreen(self.steps_done, self.saved_steps), self._answer_quit)
        else:
            self._stop(save=False)

    def _answer_quit(self, answer: str | None) -> None:
        if answer in ("save", "discard"):
            self._stop(save=answer == "save")

    def _stop(self, save: bool) -> None:
        self.stopping = True
        self.trainer.send(ev.Stop(save=save, reason=ev.FinishReason.STOPPED))
        saving = ", saving" if save else ", without saving"
        self.dashboard.event_log.add(f"stopping after the current step{saving}...", "warning")


def run_app(trainer: Trainer, history: list[dict] | None = None) -> int:
    """Run the UI until the user quits; returns the exit status (1 after a training error)."""
    # The trainer thread needs the GIL back after every kernel and matmul (~100 per step). While
    # the UI thread renders, Python hands the GIL over only every switch interval (5 ms by
    # default): a shorter one keeps the UI's cost to training small.
    sys.setswitchinterval(0.0005)
    app = TrainerApp(trainer, history)
    app.run()
    return app.return_code or 0
