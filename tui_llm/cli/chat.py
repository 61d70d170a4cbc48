"""`tui-llm chat RUN_DIR|MODEL`: talk to a model with its chat template (a chat screen, or a REPL with --no-ui).

    tui-llm chat runs/smol-sft                       the chat screen (screens/chat.py)
    tui-llm chat gpt2_124M.bin --chat-template chatml --no-ui < questions.txt

The model loads as for `tui-llm sample` (a run directory, a checkpoint, an llm.c .bin, a Hugging Face
directory or cached name); the conversation is rendered with the tokenizer's chat template, or the one
given with --chat-template (a .jinja file, a tokenizer_config.json, or chatml). Each reply streams as it
is generated and ends at the template's end of turn (engine/training/chat.py). Typed commands: /reset,
/save FILE (one JSONL line {"messages": [...]}, what `prepare --chat` reads), /quit, /help.

--no-ui reads messages from stdin, one a line, and writes each reply to stdout as it comes (one line
per reply, newlines in it kept); notes (a reset, a save, an error in one turn) go to stderr. End of
input quits with status 0.
"""

from __future__ import annotations

import sys

from tui_llm.cli.headless import safe_text
from tui_llm.cli.parser import EXIT_OK, SEED, Parser

CHAT_SAMPLE_LEN = 256  # a reply's most tokens (a sample's default, SAMPLE_LEN, is short for a reply)


def chat_parser() -> Parser:
    p = Parser(prog="tui-llm chat", description="Talk to a model with its chat template.")
    p.add_argument("init_from", metavar="RUN_DIR|MODEL",
                   help="our run directory or checkpoint, llm.c .bin, Hugging Face dir or cached name")
    add_chat_options(p)
    p.add_argument("--sample-len", type=int, default=CHAT_SAMPLE_LEN,
                   help=f"most tokens of a reply (default {CHAT_SAMPLE_LEN})")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="0 = all tokens (default 0)")
    p.add_argument("--seed", type=int, default=SEED, help=f"random seed (default {SEED})")
    p.add_argument("--threads", type=int, default=0, help="threads (default 0 = all cores)")
    p.add_argument("--tokenizer", metavar="DIR|NAME", help="the model's tokenizer (default: the one recorded with it)")
    p.add_argument("--no-ui", action="store_true", help="a plain REPL on stdin/stdout instead of the chat screen")
    return p


def add_chat_options(p: Parser) -> None:
    """--chat-template and --system (shared with `sample --chat`)."""
    p.add_argument("--chat-template", metavar="FILE|chatml",
                   help="the template (a .jinja file, a tokenizer_config.json, or chatml); default: the run's "
                        "--chat-template, else the tokenizer's own")
    p.add_argument("--system", metavar="TEXT", help="a system prompt to start the conversation with")


def load_chat(args):
    """(model name, engine Chat) for the parsed arguments; settings checked first (one line, exit 2)."""
    from tui_llm.engine.training.run_config import RunConfig

    RunConfig(sample_len=args.sample_len, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
              threads=args.threads).validate()
    from tui_llm.cli.parser import UsageError
    from tui_llm.engine.api import load_model
    from tui_llm.engine.machine import set_threads
    from tui_llm.engine.models.llama import LlamaConfig
    from tui_llm.engine.tokenizers.lookup import load_tokenizer
    from tui_llm.engine.training.chat import Chat
    from tui_llm.engine.training.model_source import recorded_chat_template

    if args.system is not None and not args.system.strip():
        raise UsageError("--system is empty")
    model = load_model(args.init_from, tokenizer=args.tokenizer)   # a LoRA run's: its base with the adapters
    name, tokenizer_dir = model.name, model.tokenizer_dir
    if isinstance(model.config, LlamaConfig) and tokenizer_dir is None:
        raise UsageError(f"{args.init_from}: no tokenizer.json with this Llama model; give --tokenizer DIR")
    chat_template = args.chat_template or recorded_chat_template(args.init_from)  # a run's own, by default
    set_threads(args.threads)
    return name, Chat(model, load_tokenizer(tokenizer_dir), chat_template)


def cmd_chat(argv) -> int:
    args = chat_parser().parse_args(argv)
    name, chat = load_chat(args)
    import numpy as np

    from tui_llm.engine.training.chat import Conversation

    conversation = Conversation(system=args.system)
    rng = np.random.default_rng(args.seed)
    settings = dict(sample_len=args.sample_len, temperature=args.temperature, top_k=args.top_k)
    if args.no_ui:
        return repl(chat, conversation, settings, rng, name)
    from tui_llm.chat_app import run_chat_app

    return run_chat_app(chat, conversation, settings, rng, title=f"tui-llm chat {safe_text(name)}")


def repl(chat, conversation, settings: dict, rng, name: str) -> int:
    """Messages from stdin, replies to stdout as they stream; commands as in the chat screen."""
    from tui_llm.engine.errors import TuiLlmError
    from tui_llm.engine.training.chat import COMMANDS, parse_command

    def note(text: str) -> None:
        print(safe_text(text), file=sys.stderr, flush=True)

    interactive = sys.stdin.isatty()
    note(f"chatting with {name}; /help for commands, Ctrl-D quits")
    while True:
        if interactive:
            print("> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            if interactive:
                print()
            return EXIT_OK
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        try:
            command = parse_command(line)
        except TuiLlmError as e:
            note(f"error: {e}")
            continue
        if command is not None:
            what, argument = command
            if what == "quit":
                return EXIT_OK
            if what == "help":
                for usage, meaning in COMMANDS.items():
                    note(f"  {usage:<12} {meaning}")
            elif what == "reset":
                conversation.reset()
                note("conversation reset")
            elif what == "save":
                try:
                    note(f"saved {conversation.turns} turn(s) to {conversation.save(argument)}")
                except TuiLlmError as e:
                    note(f"error: {e}")
            continue
        asked = conversation.ask(line)
        try:
            reply = chat.reply(asked, rng=rng, on_text=lambda piece: print(safe_text(piece, keep_newlines=True),
                                                                            end="", flush=True), **settings)
        except TuiLlmError as e:
            note(f"error: {e}")
            continue
        print(flush=True)
        conversation.answered(asked, reply.text)
        if reply.stopped == "sample_len":
            note(f"(the reply reached --sample-len {settings['sample_len']} tokens)")
