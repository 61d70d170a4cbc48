"""The two scrolling panels: model samples and the run's event log.

Model output is untrusted text: it is never parsed as markup. Everything is written as rich
`Text`, so a sample containing `[/bold]` is shown as those characters.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.text import Text
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


class SamplesPanel(RichLog):
    """Each sample with its step and prompt; token colour = the model's confidence."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, markup=False, wrap=True, min_width=20, max_lines=2000)

    def on_mount(self) -> None:
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
        self.write(header)
        body = Text(prompt, style="italic dim")
        if token_texts and len(token_texts) == len(token_probs):
            body.append_text(colored_tokens(token_texts, token_probs))
        else:  # no per-token data: plain text, without repeating the prompt
            body.append(text[len(prompt):] if text.startswith(prompt) else text)
        self.write(body)
        self.write(Text(""))


LEVEL_STYLES = {"info": "", "warning": "yellow", "error": "bold red", "good": "green"}


class EventLog(RichLog):
    """Checkpoint saves, validation results, warnings and errors, with the time they happened."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, markup=False, wrap=True, min_width=20, max_lines=1000)

    def on_mount(self) -> None:
        self.border_title = "log"

    def add(self, message: str, level: str = "info") -> None:
        """Append one line; `level` is info, warning, error or good."""
        line = Text(time.strftime("%H:%M:%S "), style="dim")
        line.append(message, style=LEVEL_STYLES.get(level, ""))
        self.write(line)
