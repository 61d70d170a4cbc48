"""The Textual app that drives a Trainer and shows its run.

The trainer's blocking `run(emit)` loop runs in a thread worker. Every event it emits is
wrapped in a `TrainerEvent` message and posted to the app (thread-safe, non-blocking); the
app keeps the run's state from those messages alone and passes each event on to the
dashboard. Keys become commands through `trainer.send`. Nothing here reaches into the trainer.
The app owns the run (its state, the keys that command the trainer, quitting); the dashboard
screen owns the view (and the keys that only change the view).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
from tui_llm.engine.run.run_dir import RunDir
from tui_llm.engine.training.chat import Conversation
from tui_llm.engine.training.run_config import LIVE_SETTINGS, ConfigError, RunConfig
from tui_llm.screens.chat import ChatScreen
from tui_llm.screens.checkpoints import CheckpointsScreen
from tui_llm.screens.dashboard import DashboardScreen
from tui_llm.screens.dialogs import HelpScreen, LeaveScreen, PromptScreen, QuitScreen, SettingsScreen
from tui_llm.signals import SIGNAL_EXIT
from tui_llm.terminal import HangupSafeDriver, SignalHandlers, yield_to_training

RunState = ev.RunState


class Trainer(Protocol):
    """All the app needs from a trainer (`history` and `sample` are used when present)."""

    def run(self, emit: Callable[[ev.Event], None], on_error: str = "stop") -> object: ...

    def send(self, command: ev.Command) -> None: ...

    def history(self) -> list[dict]: ...

    def sample(self, prompt: str = "") -> ev.Sample: ...

    def chat(self, messages: list[dict]) -> ev.ChatReply: ...


@dataclass
class TrainerEvent(Message):
    """One event from the trainer thread, delivered on the UI thread."""

    event: ev.Event


@dataclass
class Signalled(Message):
    """The process got SIGINT, SIGTERM or SIGHUP (`count`: how many so far)."""

    signum: int
    count: int


PALETTE = (
    ("pause", "Pause training", "Pause after the current step"),
    ("resume", "Resume training", "Continue from where training paused"),
    ("sample", "Sample now", "Generate a sample from the current weights"),
    ("prompt", "Sample from a prompt", "Type a prompt and generate from it"),
    ("chat", "Chat", "Talk to the current weights with the run's chat template"),
    ("save", "Save checkpoint", "Write a checkpoint of the current step"),
    ("settings", "Live settings", "Change lr_scale, temperature, top_k, ... of the running run"),
    ("screen.log_scale", "Toggle log scale", "Switch the loss axis between linear and log"),
    ("screen.smooth_more", "More smoothing", "Raise the EMA weight of the smoothed loss"),
    ("screen.smooth_less", "Less smoothing", "Lower the EMA weight of the smoothed loss"),
    ("screen.next_metric", "Chart the next metric", "Loss, lr, grad_norm, tok/s, step ms"),
    ("screen.next_x_axis", "Chart against the next x axis", "Steps, tokens, training time"),
    ("screen.toggle_overlays", "Show or hide overlays", "Other runs' curves and the reference curve"),
    ("checkpoints", "Checkpoints", "Browse the run's checkpoints: sample from one, keep one, resume command"),
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
        Binding("t", "chat", "Chat", show=False,
                tooltip="Talk to the current weights (the run's chat template); training goes on meanwhile"),
        Binding("v", "settings", "Settings", show=False, tooltip="Change a live setting (lr_scale, temperature, ...)"),
        Binding("k", "checkpoints", "Checkpoints", show=False,
                tooltip="The run's checkpoints: sample from one, mark one to keep, the resume command"),
        Binding("e", "export", "CSV", tooltip="Export metrics.csv next to metrics.jsonl"),
        Binding("question_mark", "help", "Help", tooltip="This help"),
        Binding("q", "quit", "Quit", tooltip="Quit (asks if the last steps are not saved)"),
    ]

    phase: var[RunState] = var(RunState.STARTING, bindings=True)
    """What the trainer is doing: starting, compiling, running, paused or finished."""
    saving: var[bool] = var(False, bindings=True)
    """A SaveNow was sent and its CheckpointSaved has not arrived."""
    sampling: var[bool] = var(False, bindings=True)
    """A sample was asked for and has not arrived."""
    stopping: var[bool] = var(False, bindings=True)
    """A Stop was sent; the app exits when Finished arrives."""
    failed: var[bool] = var(False, bindings=True)
    """An error happened and training has not resumed since."""
    alive: var[bool] = var(True, bindings=True)
    """The trainer's run() has not returned."""
    unsaved: var[bool] = var(False, bindings=True)
    """Steps were done since the last checkpoint (the save key applies)."""
    stale: var[bool] = var(False)
    """Watch mode: the watched run has sent nothing for a while (the watcher's state says so)."""
    state: reactive[RunState] = reactive(RunState.STARTING, init=False)
    """The state shown in the status bar (computed from the above)."""

    def __init__(
        self,
        trainer: Trainer,
        history: list[dict] | None = None,
        title: str | None = None,
        watching: bool = False,
        overlays: list | None = None,
        live_name: str = "",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.trainer = trainer
        self.history = history
        """The run's earlier records (None: ask the trainer)."""
        self.overlays = list(overlays or [])
        """Other runs and reference curves (widgets/overlays.py), read once by the caller."""
        self.live_name = live_name
        """This run's name in the chart's legend when there are overlays."""
        self.watching = watching
        """The trainer is a RunWatcher (`tui-llm watch`): quitting leaves the run going."""
        if title is None:
            run_dir = getattr(getattr(trainer, "run_dir", None), "path", None)
            title = f"tui-llm watch {run_dir}" if watching and run_dir is not None else "tui-llm"
        self.title = title
        self.dashboard = DashboardScreen(title)
        self.run_dir: Path | None = None
        self.steps_done = 0
        self.saved_steps = 0
        """Steps done when the last checkpoint was written."""
        self.signal_exit: int | None = None
        """Exit status owed to a signal (129, 130, 143), once one arrived."""
        self.loop: asyncio.AbstractEventLoop | None = None
        self.run_config = RunConfig()
        """The run's configuration as it started (live settings are checked against it)."""
        self.settings: dict[str, int | float] = {}
        """The live settings' current values (from RunStarted, then each SettingChanged)."""
        self.resumed = False
        """The run has steps from before (a --resume)."""
        self.conversation = Conversation()
        """The chat panel's conversation (kept while the panel is closed)."""
        self._early_signals: list[Signalled] = []
        self.signal_handlers = None  # run_app's (terminal.SignalHandlers): ctrl+c goes through them

    async def on_mount(self) -> None:
        """Show the dashboard with the run's history so far, then start training."""
        self.loop = asyncio.get_running_loop()
        await self.push_screen(self.dashboard)
        history = self.history
        if history is None:
            history = self.trainer.history() if hasattr(self.trainer, "history") else []
        self.resumed = any(record.get("type") == "train" for record in history)
        self.dashboard.load_history(history)
        chart = self.dashboard.chart
        chart.live_name = self.live_name or "this run"
        for overlay in self.overlays:
            chart.add_overlay(overlay)
        self.run_trainer()
        for message in self._early_signals:
            self.post_message(message)

    @work(thread=True, exit_on_error=False, name="trainer")
    def run_trainer(self) -> None:
        """The training loop (blocking, in a thread)."""
        yield_to_training()  # from the trainer's own thread, which keeps its priority: the UI's step back
        self.trainer.run(lambda event: self.post_message(TrainerEvent(event)), on_error="pause")

    def on_unmount(self) -> None:
        """If the app closes while the trainer still runs, let it save and stop."""
        if self.alive and not self.stopping:
            self.trainer.send(ev.Stop(save=True, reason=ev.FinishReason.INTERRUPTED))

    # -- state -------------------------------------------------------------------------

    def compute_state(self) -> RunState:
        if self.phase == RunState.FINISHED:
            return RunState.ERROR if self.failed else RunState.SAMPLING if self.sampling else RunState.FINISHED
        if not self.alive or (self.failed and self.phase == RunState.PAUSED):
            return RunState.ERROR
        if self.stopping:
            return RunState.STOPPING
        if self.saving:
            return RunState.SAVING
        if self.sampling:
            return RunState.SAMPLING
        if self.stale and self.phase == RunState.RUNNING:
            return RunState.STALE
        return self.phase

    def on_dashboard_screen_ticked(self) -> None:
        """Once a second: is the watched run stale? (The watcher's state, read, never written.)"""
        if self.watching:
            self.stale = getattr(self.trainer, "state", None) == RunState.STALE

    def watch_state(self, state: RunState) -> None:
        self.dashboard.set_state(state)

    def on_trainer_event(self, message: TrainerEvent) -> None:
        """Update the run state from one event, then show it."""
        if not self.dashboard.is_mounted:  # the app is closing (a Stop from on_unmount)
            return
        event = message.event
        match event:
            case ev.Compiling():
                self.phase = RunState.COMPILING
            case ev.RunStarted():
                self.run_dir = Path(event.run_dir)
                try:
                    self.run_config = RunConfig.from_dict(event.run_config)
                except ConfigError:
                    self.run_config = RunConfig()
                self.settings = {name: getattr(self.run_config, name) for name in LIVE_SETTINGS}
                self.steps_done = self.saved_steps = event.step
                self.phase = RunState.RUNNING
            case ev.SettingChanged():
                self.settings[event.name] = event.value
            case ev.TrainStep():
                self.steps_done = event.step
                self.unsaved = True
            case ev.Sample():
                self.sampling = False
            case ev.ChatReply():
                self.deliver_chat_reply(event)
            case ev.CheckpointSaved():
                if isinstance(self.screen, CheckpointsScreen):
                    self.screen.reload()
                self.saving = False
                self.saved_steps = max(self.saved_steps, event.step)
                self.unsaved = self.steps_done > self.saved_steps
            case ev.Paused():
                self.phase = RunState.PAUSED
            case ev.Resumed():
                self.phase = RunState.RUNNING
                self.failed = False
            case ev.Error():
                self.saving = self.sampling = False
                self.failed = True
                if self.signal_exit is None:
                    self.stopping = False  # e.g. the final save failed: stay to show it
                self.notify(event.message, title="Training error", severity="error", timeout=10, markup=False)
            case ev.Finished():
                self.failed = self.failed or event.reason == ev.FinishReason.ERROR
                self.phase = RunState.FINISHED
        self.dashboard.show(event)
        if isinstance(event, ev.Paused) and self.failed:
            hint = "the weights are intact: save (c), resume (p) or quit (q)"
            self.dashboard.event_log.add(hint, "warning")
        if isinstance(event, ev.Finished):
            if self.stopping or self.signal_exit is not None:
                self.exit_run()
            elif self.can_sample_final():
                self.dashboard.event_log.add("s and g still sample from the final weights; q quits")
            else:
                self.dashboard.event_log.add("q quits")

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The trainer returned or crashed, an export finished, or a sample after the run."""
        name, state, log = event.worker.name, event.state, self.dashboard.event_log
        if name == "trainer" and state in (WorkerState.SUCCESS, WorkerState.ERROR):
            self.alive = False
            if state == WorkerState.ERROR:
                self.failed = True
                log.add(f"the trainer crashed: {event.worker.error!r}; q quits", "error")
            if (self.stopping or self.signal_exit is not None) and self.phase != RunState.FINISHED:
                self.exit_run()
        elif name == "export" and state == WorkerState.SUCCESS:
            log.add(f"metrics written to {event.worker.result}", "good")
        elif name == "export" and state == WorkerState.ERROR:
            log.add(f"export failed: {event.worker.error}", "error")
        elif name == "final-chat" and state in (WorkerState.SUCCESS, WorkerState.ERROR):
            if state == WorkerState.SUCCESS:
                self.deliver_chat_reply(event.worker.result)
                self.dashboard.show(event.worker.result)
            elif isinstance(self.screen, ChatScreen):
                self.screen.reply_failed(str(event.worker.error))
        elif name == "final-sample" and state in (WorkerState.SUCCESS, WorkerState.ERROR):
            self.sampling = False
            if state == WorkerState.SUCCESS:
                self.dashboard.show(event.worker.result)
            else:
                log.add(f"sampling failed: {event.worker.error}", "error")

    def exit_run(self) -> None:
        """Leave the app: 1 if the run ended in an error, else the signal's status, else 0."""
        code = 1 if self.failed else self.signal_exit or 0
        self.exit(code, return_code=code)

    # -- signals ---------------------------------------------------------------------------

    def signal_received(self, signum: int, count: int) -> None:
        """From a signal handler (main thread, any moment): hand the news to the event loop."""
        message = Signalled(signum, count)
        if self.loop is None:
            self._early_signals.append(message)
        else:
            self.loop.call_soon_threadsafe(self.post_message, message)

    def on_signalled(self, message: Signalled) -> None:
        """The handler already sent Stop(save=True); say so, exit when the trainer finishes."""
        name = signal.Signals(message.signum).name
        log = self.dashboard.event_log
        if message.count == 1:
            self.signal_exit = SIGNAL_EXIT.get(message.signum, 128 + message.signum)
            if not self.alive or self.phase == RunState.FINISHED:
                self.exit_run()
                return
            self.stopping = True
            log.add(f"{name}: finishing the current step and saving, then exiting ...", "warning")
        else:
            log.add(f"{name}: still finishing the step and saving; once more aborts and loses the steps "
                    "since the last checkpoint", "warning")

    # -- which keys apply now ----------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """True: allowed. None: shown dimmed. False: hidden (pause/resume share a key)."""
        training = self.alive and self.phase in (RunState.RUNNING, RunState.PAUSED) and not self.stopping
        if action == "pause":
            if training and self.phase == RunState.PAUSED:
                return False
            return True if training else None
        if action == "resume":
            return training and self.phase == RunState.PAUSED
        if action in ("sample", "prompt"):
            return True if (training or self.can_sample_final()) and not self.sampling else None
        if action == "chat":
            return True if (training or self.can_chat_final()) and not isinstance(self.screen, ChatScreen) else None
        if action == "save":  # the trainer skips a save when no step was done since the last
            return True if training and not self.saving and self.unsaved else None
        if action == "settings":
            return True if training and self.settings else None
        if action == "checkpoints":
            return True if self.browsed_run_dir() is not None and not isinstance(self.screen, CheckpointsScreen) else None
        if action == "export":
            return True if self.run_dir is not None else None
        return True

    def can_sample_final(self) -> bool:
        """The run finished with its weights in memory: sample from them in a thread."""
        return (self.phase == RunState.FINISHED and self.steps_done > 0
                and self.signal_exit is None and hasattr(self.trainer, "sample"))

    def can_chat_final(self) -> bool:
        """The run finished with its weights in memory: chat with them in a thread."""
        return (self.phase == RunState.FINISHED and self.signal_exit is None and hasattr(self.trainer, "chat"))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """The command palette offers the same actions as the keys, when they apply."""
        yield from super().get_system_commands(screen)
        for action, title, help_text in PALETTE:
            target, _, name = action.rpartition(".")
            owner = self.screen if target == "screen" else self
            if hasattr(owner, f"action_{name}") and owner.check_action(name, ()):
                yield SystemCommand(title, help_text, getattr(owner, f"action_{name}"))

    # -- actions -----------------------------------------------------------------------

    def action_pause(self) -> None:
        """Pause after the current step."""
        self.trainer.send(ev.Pause())
        self.notify("Pausing after the current step...", timeout=3)

    def action_resume(self) -> None:
        """Continue training."""
        self.trainer.send(ev.Resume())

    def action_sample(self, prompt: str = "") -> None:
        """Ask for a sample from the current weights (after the run: the final ones)."""
        self.sampling = True
        if self.phase != RunState.FINISHED:
            self.trainer.send(ev.SampleNow(prompt=prompt))
        else:
            self.run_worker(lambda: self.trainer.sample(prompt), name="final-sample", thread=True,
                            exclusive=True, group="sample", exit_on_error=False)

    def action_prompt(self) -> None:
        """Ask for a prompt, then sample from it."""

        def sample(prompt: str | None) -> None:
            if prompt is not None and self.check_action("sample", ()):
                self.action_sample(prompt)

        self.push_screen(PromptScreen(), sample)

    def action_chat(self) -> None:
        """The chat panel: talk to the current weights (escape comes back; the conversation is kept)."""
        self.push_screen(ChatScreen(self.conversation,
                                    title=f"{self.title}: chat with the current weights (escape: back to the dashboard)",
                                    can_leave=True))

    def on_chat_screen_asked(self, message: ChatScreen.Asked) -> None:
        """The chat panel wants a reply: the trainer gives it between steps (after the run: a thread)."""
        if self.phase == RunState.FINISHED or not self.alive:
            if self.can_chat_final():
                self.run_worker(lambda: self.trainer.chat(message.messages), name="final-chat", thread=True,
                                exclusive=True, group="chat", exit_on_error=False)
            elif isinstance(self.screen, ChatScreen):
                self.screen.reply_failed("the run has ended without weights to talk to")
            return
        self.trainer.send(ev.ChatNow(messages=tuple(message.messages)))

    def deliver_chat_reply(self, event: ev.ChatReply) -> None:
        """A ChatReply goes to the chat panel, if it is open (and waiting)."""
        screen = self.screen
        if isinstance(screen, ChatScreen):
            if event.message:
                screen.reply_failed(event.message)
            else:
                screen.reply_arrived(event.text, tok_per_s=event.tok_per_s)

    def action_save(self) -> None:
        """Ask for a checkpoint of the current step."""
        self.saving = True
        self.trainer.send(ev.SaveNow())

    def action_settings(self) -> None:
        """Show the live settings; a changed one goes to the trainer (or the watched run)."""
        config = RunConfig(**{**self.run_config.to_dict(), **self.settings})

        def send(choice: tuple[str, int | float] | None) -> None:
            if choice is not None:
                name, value = choice
                self.trainer.send(ev.SetSetting(name=name, value=value))
                self.dashboard.event_log.add(f"asked for {name} = {value:g} (from the next step)")

        self.push_screen(SettingsScreen(config, dict(self.settings)), send)

    def browsed_run_dir(self) -> Path | None:
        """The run directory the checkpoint browser lists (a watcher's own, else the run's)."""
        if self.watching:
            return getattr(getattr(self.trainer, "run_dir", None), "path", None)
        return self.run_dir

    def action_checkpoints(self) -> None:
        """Show the checkpoint browser (it samples in a model of its own: training goes on)."""
        run_dir = self.browsed_run_dir()
        assert run_dir is not None
        val = self.dashboard.chart.val
        val_losses = dict(zip(map(int, val.x.tolist()), val.y.tolist()))
        sampling = {name: self.settings.get(name, getattr(self.run_config, name))
                    for name in ("sample_len", "temperature", "top_k")}
        self.push_screen(CheckpointsScreen(run_dir, val_losses, sampling))

    def action_export(self) -> None:
        """Write metrics.csv next to the run's metrics.jsonl (in a thread: it can be long)."""
        assert self.run_dir is not None
        self.run_worker(
            RunDir(self.run_dir).export_csv,
            name="export", thread=True, exclusive=True, group="export", exit_on_error=False,
        )

    def action_help(self) -> None:
        """Show the keys (from the app's and the dashboard's bindings) and what each panel shows."""
        keys: dict[str, str] = {}
        for binding in [*self.BINDINGS, *DashboardScreen.BINDINGS]:
            if binding.tooltip:
                shown = binding.key_display or " / ".join(
                    self.get_key_display(Binding(key, binding.action)) for key in binding.key.split(",")
                )
                keys.setdefault(shown, binding.tooltip)
        keys[self.get_key_display(Binding(self.COMMAND_PALETTE_BINDING, ""))] = "command palette"
        self.push_screen(HelpScreen(list(keys.items())))

    def action_help_quit(self) -> None:
        """ctrl+c: in a terminal UI the key, not a signal, so do what SIGINT does everywhere else
        (the trainer finishes its step, saves, and the app exits 130; a third one aborts)."""
        if self.signal_handlers is not None:
            self.signal_handlers.deliver(signal.SIGINT)
        else:  # no handlers (a test's app): the quit key's path
            self.action_quit()

    def action_quit(self) -> None:
        """Stop training (asking about unsaved steps) and exit once the trainer finishes; when
        watching, leave (asking whether the run should save first) and let the run go on."""
        if not self.alive or self.phase == RunState.FINISHED:
            self.exit_run()
        elif isinstance(self.screen, (QuitScreen, LeaveScreen)):  # ctrl+q works in dialogs too
            return
        elif self.watching:
            if self.stopping:  # already leaving (the watcher detaches at once)
                return
            if self.unsaved and self.phase in (RunState.RUNNING, RunState.PAUSED) and not self.stopping:
                self.push_screen(LeaveScreen(self.steps_done, self.saved_steps), self._answer_leave)
            else:
                self._leave(save=False)
        elif self.stopping:
            self.notify("Stopping after the current step...")
        elif self.phase in (RunState.STARTING, RunState.COMPILING):
            self.stopping = True
            self.trainer.send(ev.Stop(save=False, reason=ev.FinishReason.STOPPED))
            left = ("the run directory stays as its last checkpoint left it" if self.resumed
                    else "no run directory is left")
            self.dashboard.event_log.add(
                "quitting once the kernel being compiled is done; "
                f"no step is trained, nothing is saved and {left}", "warning")
        elif self.unsaved:
            self.push_screen(QuitScreen(self.steps_done, self.saved_steps), self._answer_quit)
        else:
            self._stop(save=False)

    def _answer_quit(self, answer: str | None) -> None:
        if answer in ("save", "discard"):
            self._stop(save=answer == "save")

    def _answer_leave(self, answer: str | None) -> None:
        if answer in ("save", "leave"):
            self._leave(save=answer == "save")

    def _leave(self, save: bool) -> None:
        """Detach from the watched run (a watcher's Stop never stops the run)."""
        self.stopping = True
        self.trainer.send(ev.Stop(save=save, reason=ev.FinishReason.STOPPED))
        asked = "; the run was asked to save a checkpoint" if save else ""
        self.dashboard.event_log.add(f"stopped watching{asked}; the run goes on", "warning")

    def _stop(self, save: bool) -> None:
        self.stopping = True
        self.trainer.send(ev.Stop(save=save, reason=ev.FinishReason.STOPPED))
        saving = ", saving" if save else ", without saving"
        self.dashboard.event_log.add(f"stopping after the current step{saving}...", "warning")


def run_app(trainer: Trainer, history: list[dict] | None = None, watching: bool = False,
            overlays: list | None = None, live_name: str = "") -> int:
    """Run the UI until the user quits or a signal stops the run; returns the exit status
    (1 after a training error; 130 / 143 / 129 after SIGINT / SIGTERM / SIGHUP). `watching`:
    the trainer is a RunWatcher (`tui-llm watch`); quitting leaves the run going. `overlays`:
    other runs' and reference curves on the chart (widgets/overlays.py), `live_name` this run's."""
    # The trainer thread needs the GIL back after every kernel and matmul (~100 per step). While
    # the UI thread renders, Python hands the GIL over only every switch interval (5 ms by
    # default): a shorter one keeps the UI's cost to training small.
    sys.setswitchinterval(0.0005)
    app = TrainerApp(trainer, history, watching=watching, overlays=overlays, live_name=live_name,
                     driver_class=HangupSafeDriver if sys.platform != "win32" else None)

    def abort_message() -> str:
        step, saved = getattr(trainer, "step", None), getattr(trainer, "last_saved_step", None)
        if isinstance(step, int) and isinstance(saved, int):
            return f"aborted: steps {max(saved, 0) + 1}..{step} are lost"
        return "aborted: the steps since the last checkpoint are lost"

    handlers = SignalHandlers(stop=lambda: trainer.send(ev.Stop(save=True, reason=ev.FinishReason.INTERRUPTED)),
                              tell=app.signal_received, abort_message=abort_message)
    app.signal_handlers = handlers  # ctrl+c, a key in the UI, is delivered as SIGINT
    with handlers:
        app.run()
    code = app.return_code or 0
    if handlers.exit_code is not None and code != 1:
        return handlers.exit_code
    return code
