"""Modal dialogs: help, a prompt to sample from, and the quit question."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

PANELS = (
    ("chart", "the loss: raw per step (faint), EMA-smoothed and debiased (bright) and validation "
              "(orange, drawn last); m switches to lr, grad_norm, tok/s or the step's fwd/bwd/opt ms, "
              "x to tokens or training time on the x axis, l to a log y axis; a few outlying steps "
              "may go off the top; each dot column shows the mean of its steps; redrawn once a second; "
              "a dotted vertical line marks a live setting's change (v); other runs' curves (watch RUN_A "
              "RUN_B, --compare, --reference) in their own colours, named in the legend (o hides them)"),
    ("step time", "forward / backward / optimizer time of the last step, its share of the "
                  "step, sparklines of recent steps, tokens/s and steps/s; once a second"),
    ("status", "model, parameters, data, step/total, epoch, lr, grad_norm, training time (across "
               "resumes), ETA (from the recent steps, warm-up left out) and the run state"),
    ("samples", "generated text with its step and prompt; each token coloured by the "
                "probability the model gave it (red low, green high)"),
    ("log", "checkpoints, validation results, warnings and errors; a resumed run's earlier lines "
            "are marked 'earlier'"),
)


class HelpScreen(ModalScreen[None]):
    """The keys and what each panel shows."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    #help-box {
        width: 90%;
        max-width: 100;
        height: auto;
        max-height: 90%;
        padding: 1 2;
        border: round $accent;
        background: $surface;
    }
    """

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        """`keys` pairs a key as displayed with what it does."""
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, description in self.keys:
            table.add_row(key, description)
        table.add_row("", "")
        for panel, description in PANELS:
            table.add_row(Text(panel, style="bold cyan"), description)
        with VerticalScroll(id="help-box"):
            yield Static(table)
            yield Label(Text("escape or ? closes", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#help-box").border_title = "help"


class PromptScreen(ModalScreen[str | None]):
    """Ask for a prompt to sample from; dismisses with the text, or None on escape."""

    DEFAULT_CSS = """
    PromptScreen {
        align: center middle;
    }
    #prompt-box {
        width: 70%;
        max-width: 80;
        height: auto;
        padding: 1 2;
        border: round $accent;
        background: $surface;
    }
    """

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="prompt-box"):
            yield Label("Sample from this prompt:")
            yield Input(placeholder="To be, or not to be", id="prompt-input")
            yield Label(Text("enter samples, escape cancels", style="dim"))

    @on(Input.Submitted)
    def submit(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class QuitScreen(ModalScreen[str | None]):
    """Unsaved steps: dismisses with "save", "discard", or None to keep training."""

    DEFAULT_CSS = """
    QuitScreen {
        align: center middle;
    }
    #quit-box {
        grid-size: 3 2;
        grid-gutter: 1 2;
        grid-rows: auto 3;
        grid-columns: auto;
        width: auto;
        max-width: 100%;
        height: auto;
        padding: 1 2;
        border: round $warning;
        background: $surface;
    }
    #quit-box Button {
        width: auto;
    }
    #quit-question {
        column-span: 3;
        width: 1fr;
        content-align: center middle;
    }
    """

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("s,y", "dismiss('save')", "Save and quit"),
        Binding("d,n", "dismiss('discard')", "Quit without saving"),
    ]

    def __init__(self, step: int, saved_step: int) -> None:
        super().__init__()
        self.step = step
        self.saved_step = saved_step

    def compose(self) -> ComposeResult:
        with Grid(id="quit-box"):
            saved = f"step {self.saved_step:,}" if self.saved_step else "none yet"
            yield Label(
                f"Training is at step {self.step:,}; last checkpoint: {saved}.",
                id="quit-question",
            )
            yield Button("Save and quit (s)", variant="primary", id="save")
            yield Button("Quit without saving (d)", variant="error", id="discard")
            yield Button("Cancel (esc)", id="cancel")

    @on(Button.Pressed)
    def answer(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)


class LeaveScreen(ModalScreen[str | None]):
    """Watch mode: leaving never stops the run. Dismisses with "save" (ask the run to save a
    checkpoint, then leave), "leave", or None to keep watching."""

    DEFAULT_CSS = """
    LeaveScreen {
        align: center middle;
    }
    #leave-box {
        width: 60;
        max-width: 100%;
        height: auto;
        padding: 1 2;
        border: round $warning;
        background: $surface;
    }
    #leave-box Button {
        width: 100%;
        margin-top: 1;
    }
    #leave-question {
        width: 100%;
    }
    """

    BINDINGS = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("s,y", "dismiss('save')", "Save, then leave"),
        Binding("l,n", "dismiss('leave')", "Just leave"),
    ]

    def __init__(self, step: int, saved_step: int) -> None:
        super().__init__()
        self.step = step
        self.saved_step = saved_step

    def compose(self) -> ComposeResult:
        with Vertical(id="leave-box"):
            saved = f"step {self.saved_step:,}" if self.saved_step else "none yet"
            yield Label(f"The run is at step {self.step:,} (last checkpoint: {saved}); it goes on after you leave.",
                        id="leave-question")
            yield Button("Ask the run to save a checkpoint, then leave (s)", variant="primary", id="save")
            yield Button("Just leave (l)", id="leave")
            yield Button("Cancel (esc)", id="cancel")

    @on(Button.Pressed)
    def answer(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)


def parse_number(text: str) -> int | float:
    """A whole number if the text is one, else a float; ValueError if neither."""
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        return float(text)


class SettingsScreen(ModalScreen[tuple[str, int | float] | None]):
    """The live settings (run_config.LIVE_SETTINGS) with their current values. Enter in one
    checks the new value (run_config.live_setting) and dismisses with (name, value); a value that
    cannot work shows its one-line error here instead. Escape, or the value it already has: None."""

    DEFAULT_CSS = """
    SettingsScreen {
        align: center middle;
    }
    #settings-box {
        width: 70;
        max-width: 100%;
        height: auto;
        max-height: 100%;
        padding: 1 1 0 1;
        border: round $accent;
        background: $surface;
    }
    #settings-box Horizontal {
        height: auto;
    }
    #settings-box .setting-name {
        width: 16;
        padding: 0 0 0 1;
    }
    #settings-box Input {
        width: 1fr;
    }
    #settings-error {
        color: $error;
        height: auto;
    }
    """

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, config, values: dict[str, int | float]) -> None:
        """`config`: the run's RunConfig (what a new value is checked against); `values`: the
        live settings' current values."""
        super().__init__()
        self.config = config
        self.values = values

    def compose(self) -> ComposeResult:
        from textual.containers import Horizontal

        with VerticalScroll(id="settings-box"):
            for name, value in self.values.items():
                with Horizontal():
                    yield Label(name, classes="setting-name")
                    yield Input(f"{value:g}" if isinstance(value, float) else str(value), id=f"setting-{name}",
                                compact=True)
            yield Label("", id="settings-error")
            yield Label(Text("enter sends a value (taken at the next step); escape closes", style="dim"))

    def on_mount(self) -> None:
        self.query_one("#settings-box").border_title = "live settings"
        self.query_one(Input).focus()

    @on(Input.Submitted)
    def submit(self, event: Input.Submitted) -> None:
        from tui_llm.engine.training.run_config import ConfigError, live_setting

        name = (event.input.id or "").removeprefix("setting-")
        error = self.query_one("#settings-error", Label)
        try:
            value = parse_number(event.value)
        except ValueError:
            error.update(Text(f"{name} must be a number, got {event.value!r}"))
            return
        if isinstance(getattr(self.config, name, None), float):
            value = float(value)
        try:
            value = live_setting(self.config, name, value)
        except ConfigError as e:
            error.update(Text(str(e)))
            return
        self.dismiss(None if value == self.values.get(name) else (name, value))  # unchanged: nothing to send
