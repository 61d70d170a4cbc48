"""The checkpoint browser: the run's checkpoints, sampling from any of them, marking one to keep.

It lists RunDir.checkpoints() (step, file time, size, the validation loss at that step from the
history, and a mark on those in keep.json) and shows the command that resumes from the selected
one. Sampling loads the checkpoint into a model of its own (`load_model` + `generate`, in a
thread worker), so the training model is never touched and training goes on meanwhile. The last
model loaded is kept for the next sample from the same checkpoint. It works on a live run, a
watched one and a finished one: it only reads the run directory (and writes keep.json).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Static
from textual.worker import Worker, WorkerState

from tui_llm.engine.run.run_dir import RunDir
from tui_llm.widgets.status_bar import human_count

KEPT_MARK = "★"
"""Shown next to a checkpoint marked to keep (never pruned)."""


def resume_command(path: Path) -> str:
    """The command that continues training from this checkpoint."""
    return f"tui-llm --resume {shlex.quote(str(path))}"


class CheckpointsScreen(Screen):
    """The run's checkpoints: sample from one (s / enter), mark it to keep (m), back (escape, k)."""

    DEFAULT_CSS = """
    CheckpointsScreen #ckpt-table {
        height: 1fr;
        border: round $primary;
    }
    CheckpointsScreen #ckpt-side {
        height: auto;
        max-height: 60%;
    }
    CheckpointsScreen #ckpt-resume {
        padding: 0 1;
        color: $text-muted;
    }
    CheckpointsScreen #ckpt-prompt-row {
        height: auto;
    }
    CheckpointsScreen #ckpt-prompt-row Label {
        padding: 1 1 0 1;
    }
    CheckpointsScreen #ckpt-prompt {
        width: 1fr;
    }
    CheckpointsScreen #ckpt-sample {
        height: auto;
        max-height: 12;
        border: round $secondary;
        padding: 0 1;
    }
    """

    BINDINGS = [
        Binding("escape,k", "back", "Back", tooltip="Back to the dashboard"),
        Binding("s", "sample", "Sample", tooltip="Sample from the selected checkpoint (a model of its own)"),
        Binding("m", "keep", "Keep", tooltip="Mark the selected checkpoint to keep (never pruned), or unmark it"),
        Binding("r", "reload", "Reload", tooltip="List the checkpoints again"),
    ]

    def __init__(self, run_dir: Path, val_losses: dict[int, float], sampling: dict) -> None:
        """`val_losses`: validation loss by step (the history's); `sampling`: generate()'s
        keywords (sample_len, temperature, top_k: the run's current settings)."""
        super().__init__()
        self.run_dir = RunDir(run_dir)
        self.val_losses = val_losses
        self.sampling = sampling
        self.rows: list[Path] = []
        """The checkpoint of each table row."""
        self.samples_done = 0
        """Samples shown so far."""
        self._model: tuple[Path, object] | None = None
        """The model loaded last, and from which checkpoint (UI thread only)."""

    def compose(self) -> ComposeResult:
        yield DataTable(id="ckpt-table", cursor_type="row", zebra_stripes=True)
        with Vertical(id="ckpt-side"):
            yield Label("", id="ckpt-resume")
            with Horizontal(id="ckpt-prompt-row"):
                yield Label("prompt")
                yield Input(placeholder="(empty: from the start of a text)  enter samples", id="ckpt-prompt")
            yield Static("", id="ckpt-sample")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.border_title = f"checkpoints of {self.run_dir.path}"
        table.add_columns("keep", "step", "saved", "size", "val loss")
        self.reload()
        table.focus()

    # -- the list ----------------------------------------------------------------------------

    def reload(self) -> None:
        """List the checkpoints again (a save or a prune changed them), keeping the selection."""
        table = self.query_one(DataTable)
        selected = self.selected
        kept = self.run_dir.kept()
        table.clear()
        self.rows = []
        for step, path in self.run_dir.checkpoints():
            try:
                stat = path.stat()
            except OSError:  # pruned meanwhile
                continue
            val = self.val_losses.get(step)
            table.add_row(
                KEPT_MARK if path.name in kept else "",
                f"{step:,}",
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stat.st_mtime)),
                f"{human_count(stat.st_size)}B",
                f"{val:.4f}" if val is not None else "-",
            )
            self.rows.append(path)
        if selected in self.rows:
            table.move_cursor(row=self.rows.index(selected))
        if not self.rows:
            self.query_one("#ckpt-sample", Static).update(Text("no checkpoint yet (c saves one)", style="dim"))
        self.show_resume()

    @property
    def selected(self) -> Path | None:
        table = self.query_one(DataTable)
        if not self.rows or not 0 <= table.cursor_row < len(self.rows):
            return None
        return self.rows[table.cursor_row]

    @on(DataTable.RowHighlighted)
    def show_resume(self) -> None:
        path = self.selected
        text = Text("resume: ", style="bold")
        text.append(resume_command(path) if path is not None else "-")
        self.query_one("#ckpt-resume", Label).update(text)

    # -- keys ----------------------------------------------------------------------------------

    def action_back(self) -> None:
        self.dismiss()

    def action_reload(self) -> None:
        self.reload()

    def action_keep(self) -> None:
        """Toggle the keep mark of the selected checkpoint (keep.json: never pruned)."""
        path = self.selected
        if path is None:
            return
        if not path.exists():  # pruned since the list was read
            self.notify(f"{path.name} is gone (pruned since the list was read)", severity="warning", timeout=4)
            self.reload()
            return
        keep = path.name not in self.run_dir.kept()
        self.run_dir.keep(path, keep)
        self.notify(f"{path.name}: {'kept (never pruned)' if keep else 'no longer kept'}", timeout=3)
        self.reload()

    @on(DataTable.RowSelected)
    @on(Input.Submitted, "#ckpt-prompt")
    def action_sample(self) -> None:
        """Sample from the selected checkpoint with the prompt typed, in a model of its own."""
        path = self.selected
        if path is None:
            return
        prompt = self.query_one("#ckpt-prompt", Input).value
        model = self._model[1] if self._model and self._model[0] == path else None
        self.query_one("#ckpt-sample", Static).update(Text(f"sampling from {path.name} ...", style="dim"))
        self.sample(path, prompt, model)

    @work(thread=True, exclusive=True, group="checkpoint-sample", exit_on_error=False, name="checkpoint-sample")
    def sample(self, path: Path, prompt: str, model):
        """Load (unless given) and generate, off the UI thread; returns (path, model, result)."""
        from tui_llm.engine.api import generate, load_model

        if model is None:
            model = load_model(path)
        return path, model, generate(model, prompt, **self.sampling)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "checkpoint-sample":
            return
        box = self.query_one("#ckpt-sample", Static)
        if event.state == WorkerState.SUCCESS:
            path, model, result = event.worker.result
            self._model = (path, model)
            self.samples_done += 1
            text = Text(f"{path.name}: ", style="bold")
            if result.prompt:
                text.append(result.prompt, style="underline")
            text.append(result.text)
            box.update(text)
            box.border_title = f"sample ({result.tok_per_s:.0f} tok/s)"
        elif event.state == WorkerState.ERROR:
            box.update(Text(f"sampling failed: {event.worker.error}", style="red"))

    @property
    def sample_text(self) -> str:
        """What the sample box shows (for tests)."""
        return str(self.query_one("#ckpt-sample", Static).render())
