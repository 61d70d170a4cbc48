"""The chat's widgets: one message (who said it and what), and the scrolling conversation.

Model output is untrusted text: it is shown as rich `Text`, never parsed as markup.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static


class ChatMessage(Static):
    """One turn: a role label and its text; an assistant's grows as its reply streams in."""

    DEFAULT_CSS = """
    ChatMessage {
        padding: 0 1;
        margin: 0 0 1 0;
    }
    ChatMessage.-user { background: $boost; }
    ChatMessage.-note { color: $text-muted; }
    ChatMessage.-error { color: $error; }
    ChatMessage.-streaming { border-left: thick $success; }
    """

    def __init__(self, role: str, text: str = "", classes: str = "") -> None:
        super().__init__(markup=False, classes=f"-{role} {classes}".strip())
        self.role = role
        self.text = text

    def on_mount(self) -> None:
        self._render_text()

    def append(self, piece: str) -> None:
        self.text += piece
        self._render_text()

    def _render_text(self) -> None:
        label = {"user": "you", "assistant": "model", "system": "system"}.get(self.role)
        shown = Text()
        if label:
            shown.append(f"{label}: ", style="bold")
        shown.append(self.text)
        self.update(shown)


class ChatLog(VerticalScroll):
    """The conversation so far, newest at the bottom (kept in view while it grows)."""

    DEFAULT_CSS = """
    ChatLog {
        border: round $primary;
        border-title-color: $text;
        height: 1fr;
        scrollbar-gutter: stable;
    }
    """

    def add(self, role: str, text: str = "", classes: str = "") -> ChatMessage:
        message = ChatMessage(role, text, classes)
        self.mount(message)
        self.scroll_end(animate=False)
        return message

    def clear(self) -> None:
        self.remove_children()

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self.query(ChatMessage))

    def transcript(self) -> str:
        """What the log shows, one message a paragraph (for tests and copying)."""
        return "\n\n".join(f"{m.role}: {m.text}" for m in self.messages)
