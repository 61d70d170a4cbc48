"""The two scrolling panels: model samples and the run's event log.

Model output is untrusted text: it is never parsed as markup. Everything is written as rich
`Text`, so a sample containing `[/bold]` is shown as those characters.

Both panels wrap their lines to their width and never scroll sideways: they keep what they show
and wrap it again when their width changes (a RichLog alone keeps lines at the width they were
written at, so a narrower terminal, or a scrollbar appearing, made them scroll sideways).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from rich.text import Text
from textual import events
from textual.color import Color
from textual.widgets import RichLog

UNLIKELY = Color(220, 50, 47)
"""Colour of a token the model gave probability 0."""
UNSURE = Color(220, 180, 0)
LIKELY = Color(80, 200, 80)
"""Colour of a token the model gave probability 1."""


def probability_color(p: float) -> str:
    """Red for unlikely tokens, through yellow, to green for likely ones."""
    p = min(max(p, 0.0), 1.0)
    if p < 0.5:
        return UNLIKELY.blend(UNSURE, p * 2).hex
    return UNSURE.blend(LIKELY, (p - 0.5) * 2).hex


def colored_tokens(pieces: Sequence[str], probs: Sequence[float]) -> Text:
    """The generated text with each token coloured by its probability."""
    text = Text()
    for piece, p in zip(pieces, probs):
        text.append(piece, style=probability_color(p))
    return text


class WrappedLog(RichLog):
    """A RichLog of rich Text entries, wrapped to the panel's width, again after a resize."""

    DEFAULT_CSS = """
    WrappedLog {
        border: round $primary;
        border-title-color: $text;
        border-subtitle-color: $text-muted;
        overflow-x: hidden;
        scrollbar-gutter: stable;
    }
    """

    def __init__(self, *, max_entries: int, id: str | None = None) -> None:
        super().__init__(id=id, markup=False, wrap=True, min_width=10, max_lines=4 * max_entries)
        self.entries: deque[Text] = deque(maxlen=max_entries)
        """What the panel shows, unwrapped (the oldest entries go first)."""
        self._wrapped_at = 0

    def add_entry(self, text: Text) -> None:
        self.entries.append(text)
        self.write(text)

    def on_resize(self, event: events.Resize) -> None:
        if self._size_known and self.scrollable_content_region.width != self._wrapped_at:
            self._rewrap()

    def _rewrap(self) -> None:
        self._wrapped_at = self.scrollable_content_region.width
        self.clear()
        for text in self.entries:
            self.write(text)


class SamplesPanel(WrappedLog):
    """Each sample with its step and prompt; token colour = the model's confidence."""

    DEFAULT_CSS = """
    SamplesPanel {
        width: 3fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_entries=500)
        self.border_title = "samples"
        self.border_subtitle = "colour: token probability, red low, green high"

    def show(
        self,
        step: int,
        prompt: str,
        text: str,
        token_texts: Sequence[str] = (),
        token_probs: Sequence[float] = (),
    ) -> None:
        """Append one sample."""
        header = Text(f"step {step:,}", style="bold")
        if prompt:
            header.append(f"  prompt: {prompt!r}", style="dim")
        body = Text(prompt, style="italic dim")
        if token_texts and len(token_texts) == len(token_probs):
            body.append_text(colored_tokens(token_texts, token_probs))
        else:  # no per-token data: plain text, without repeating the prompt
            body.append(text[len(prompt):] if text.startswith(prompt) else text)
        self.add_entry(Text("\n").join([header, body, Text("")]))


LEVEL_STYLES = {"info": "", "warning": "yellow", "error": "bold red", "good": "green"}


class EventLog(WrappedLog):
    """Checkpoint saves, validation results, warnings and errors, with the time they happened."""

    DEFAULT_CSS = """
    EventLog {
        width: 2fr;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, max_entries=1000)
        self.border_title = "log"

    def add(self, message: str, level: str = "info", when: str | None = None) -> None:
        """Append one line; `level` is info, warning, error or good; `when` replaces the time."""
        line = Text(when if when is not None else time.strftime("%H:%M:%S "), style="dim")
        line.append(message, style=LEVEL_STYLES.get(level, ""))
        self.add_entry(line)
