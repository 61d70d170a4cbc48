"""The chat screen: the conversation, a line to type in, replies streaming in as they are generated.

Two ways to get a reply:
  * its own model (`tui-llm chat`): `ChatScreen(conversation, chat=Chat(...), settings=...)` generates in a
    thread worker; each piece of text comes up as a `ReplyText` message, the end as `ReplyDone`;
  * the training run's current weights (the dashboard's chat panel): without `chat`, the screen posts
    `ChatScreen.Asked(messages)`; the app sends the trainer a ChatNow command and hands the ChatReply
    event back with `reply_arrived` (or `reply_failed`). The trainer is never touched from here.

Typed commands (engine/training/chat.py): /reset, /save FILE, /quit, /help. Escape stops a reply that
is streaming (its text so far is kept), or leaves the screen when one was pushed over another.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Input, Label
from textual.worker import Worker, WorkerState, get_current_worker

from tui_llm.engine.errors import TuiLlmError
from tui_llm.engine.training.chat import COMMANDS, Conversation, parse_command
from tui_llm.widgets.chat import ChatLog, ChatMessage


class ChatScreen(Screen):
    """Talk to a model."""

    DEFAULT_CSS = """
    ChatScreen #chat-title { padding: 0 1; background: $panel; width: 100%; }
    ChatScreen #chat-input { dock: bottom; margin-bottom: 1; }
    """

    BINDINGS = [
        Binding("escape", "stop_or_leave", "Stop / back", tooltip="Stop the reply being written, or leave the chat"),
        Binding("ctrl+r", "reset", "Reset", tooltip="Start the conversation over (also /reset)"),
    ]

    @dataclass
    class ReplyText(Message):
        """A piece of the reply being generated (from the worker) to `asked`."""
        asked: list
        text: str

    @dataclass
    class ReplyDone(Message):
        asked: list
        text: str
        stopped: str
        tok_per_s: float

    @dataclass
    class ReplyFailed(Message):
        problem: str

    @dataclass
    class Asked(Message):
        """No model of its own: the app should get a reply to `messages` (the dashboard's chat panel)."""
        messages: list

    def __init__(self, conversation: Conversation, chat=None, settings: dict | None = None, rng=None,
                 title: str = "chat", can_leave: bool = False) -> None:
        super().__init__()
        self.conversation = conversation
        self.chat = chat
        self.settings = dict(settings or {})
        self.rng = rng
        self.title_text = title
        self.can_leave = can_leave
        self.pending: list | None = None
        """The conversation with the user's last message, while its reply is being written."""
        self.streaming: ChatMessage | None = None

    def compose(self) -> ComposeResult:
        yield Label(self.title_text, id="chat-title", markup=False)
        yield ChatLog(id="chat-log")
        yield Input(placeholder="a message, or /help", id="chat-input")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.log_view.border_title = "conversation"
        self._show_conversation()
        self.query_one(Input).focus()

    @property
    def log_view(self) -> ChatLog:
        return self.query_one(ChatLog)

    @property
    def busy(self) -> bool:
        return self.pending is not None

    def _show_conversation(self) -> None:
        log = self.log_view
        log.clear()
        for m in self.conversation.messages:
            log.add(m["role"], m["content"])

    def note(self, text: str, error: bool = False) -> None:
        self.log_view.add("note", text, "-error" if error else "")

    # -- typing ----------------------------------------------------------------------------

    @on(Input.Submitted, "#chat-input")
    def submitted(self, event: Input.Submitted) -> None:
        line = event.value.strip()
        if not line:
            return
        try:
            command = parse_command(line)
        except TuiLlmError as e:
            self.note(str(e), error=True)
            return
        event.input.clear()
        if command is not None:
            self.run_command(*command)
        elif self.busy:
            self.notify("a reply is still being written (escape stops it)", timeout=3)
            event.input.value = line
        else:
            self.ask(line)

    def run_command(self, name: str, argument: str) -> None:
        if name == "quit":
            self.action_leave()
        elif name == "help":
            self.note("  ".join(f"{usage}: {meaning}" for usage, meaning in COMMANDS.items()))
        elif name == "reset":
            self.action_reset()
        elif name == "save":
            try:
                path = self.conversation.save(argument)
            except TuiLlmError as e:
                self.note(str(e), error=True)
                return
            self.note(f"saved {self.conversation.turns} turn(s) to {path}")

    def ask(self, text: str) -> None:
        asked = self.conversation.ask(text)
        self.log_view.add("user", asked[-1]["content"])
        self.streaming = self.log_view.add("assistant", "", "-streaming")
        self.pending = asked
        if self.chat is None:
            self.post_message(self.Asked(asked))
        else:
            self.generate(asked)

    @work(thread=True, exclusive=True, group="chat-reply", exit_on_error=False)
    def generate(self, asked: list) -> None:
        """The reply, in a thread; its text goes up to the screen as messages."""
        worker = get_current_worker()

        def on_text(piece: str) -> None:
            self.post_message(self.ReplyText(asked, piece))

        try:
            reply = self.chat.reply(asked, rng=self.rng, on_text=on_text, cancelled=lambda: worker.is_cancelled,
                                    **self.settings)
        except TuiLlmError as e:
            self.post_message(self.ReplyFailed(str(e)))
            return
        self.post_message(self.ReplyDone(asked, reply.text, reply.stopped, reply.tok_per_s))

    # -- replies -----------------------------------------------------------------------------

    def on_chat_screen_reply_text(self, message: ReplyText) -> None:
        if self.streaming is not None and message.asked is self.pending:
            self.streaming.append(message.text)
            self.log_view.scroll_end(animate=False)

    def on_chat_screen_reply_done(self, message: ReplyDone) -> None:
        if self.pending is None or message.asked is not self.pending:  # from before a /reset
            return
        self.reply_arrived(message.text, message.stopped, message.tok_per_s)

    def on_chat_screen_reply_failed(self, message: ReplyFailed) -> None:
        self.reply_failed(message.problem)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A reply worker that crashed (a bug, not a refusal): say so instead of waiting for ever."""
        if event.worker.group == "chat-reply" and event.state == WorkerState.ERROR:
            self.reply_failed(f"{type(event.worker.error).__name__}: {event.worker.error}")

    def reply_arrived(self, text: str, stopped: str = "end_of_turn", tok_per_s: float = 0.0) -> None:
        """The whole reply to the pending message (also from the app, for the dashboard's panel)."""
        if self.pending is None:
            return
        self.conversation.answered(self.pending, text)
        if self.streaming is not None:
            if self.streaming.text != text:  # not streamed (the dashboard's panel): shown whole
                self.streaming.text = ""
                self.streaming.append(text)
            self.streaming.remove_class("-streaming")
        ending = {"sample_len": f"; stopped at {self.settings.get('sample_len', 'the')} tokens",
                  "cancelled": "; stopped"}.get(stopped, "")
        if tok_per_s or ending:
            self.log_view.add("note", f"{tok_per_s:.1f} tok/s{ending}")
        self.pending = self.streaming = None

    def reply_failed(self, problem: str) -> None:
        if self.streaming is not None:
            self.streaming.remove()
        self.pending = self.streaming = None
        self.note(f"no reply: {problem}", error=True)

    # -- keys --------------------------------------------------------------------------------

    def action_reset(self) -> None:
        """Start over: the conversation (system prompt aside) is forgotten; a reply being written is stopped."""
        self.workers.cancel_group(self, "chat-reply")
        self.pending = self.streaming = None
        self.conversation.reset()
        self._show_conversation()
        self.note("conversation reset")

    def action_stop_or_leave(self) -> None:
        if self.busy and self.chat is not None:
            self.workers.cancel_group(self, "chat-reply")  # the worker ends after its current token
        elif self.can_leave:
            self.action_leave()

    def action_leave(self) -> None:
        if self.can_leave:
            self.dismiss()
        else:
            self.app.exit(0)
