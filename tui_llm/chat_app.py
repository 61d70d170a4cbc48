"""The Textual app of `tui-llm chat`: one ChatScreen (screens/chat.py) talking to one model.

Thin on purpose: the screen owns the conversation, its keys and the worker that generates replies.
"""

from __future__ import annotations

import sys

from textual.app import App

from tui_llm.engine.training.chat import Chat, Conversation
from tui_llm.screens.chat import ChatScreen
from tui_llm.terminal import HangupSafeDriver


class ChatApp(App[int]):
    """Talk to a model."""

    def __init__(self, chat: Chat, conversation: Conversation, settings: dict, rng, title: str = "tui-llm chat",
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.title = title
        self.chat_screen = ChatScreen(conversation, chat=chat, settings=settings, rng=rng, title=title)

    def on_mount(self) -> None:
        self.push_screen(self.chat_screen)


def run_chat_app(chat: Chat, conversation: Conversation, settings: dict, rng, title: str = "tui-llm chat") -> int:
    app = ChatApp(chat, conversation, settings, rng, title=title,
                  driver_class=HangupSafeDriver if sys.platform != "win32" else None)
    app.run()
    return app.return_code or 0
