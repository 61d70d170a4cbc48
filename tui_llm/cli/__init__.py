"""The `tui-llm` command, one module per subcommand.

    tui-llm [TRAIN_BIN] [options]             train in the terminal UI (or headless with --no-ui)   train.py
    tui-llm prepare ...                       make token files from text                             prepare.py
    tui-llm sample --init-from MODEL          generate text from a model                             sample.py
    tui-llm export --init-from MODEL OUT      write a model as llm.c .bin or a Hugging Face directory export.py
    tui-llm watch RUN_DIR                     watch and steer a run another process trains           watch.py
    tui-llm chat RUN_DIR|MODEL                talk to a model with its chat template                 chat.py

parser.py holds what they share (the one-line argparse, exit codes, defaults), headless.py the
lines a headless run prints. The CLI only maps flags to the engine's RunConfig fields (`--seq-len`
is `seq_len`). Every error a user can fix is an engine TuiLlmError (or a UsageError here): `main`
prints it as one line and exits with its code (2: bad input) in one place, below. A training
error exits 1; an interrupted run (Ctrl-C, SIGTERM, SIGHUP) saves a checkpoint and exits 130 /
143 / 129.
"""

from __future__ import annotations

import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    from tui_llm.signals import StopBeforeStart, stop_before_start

    previous = stop_before_start()  # first: a signal while the command still imports is a clean stop too
    try:
        from tui_llm.cli.streams import courtesy_streams

        argv = list(sys.argv[1:] if argv is None else argv)
        name = argv[0] if argv and argv[0] in ("prepare", "sample", "export", "watch", "chat") else "train"
        if name != "train":
            argv = argv[1:]
        with courtesy_streams():  # a closed pipe or a hung-up terminal never stops a command (cli/streams.py)
            return _main(name, argv)
    except StopBeforeStart as e:  # (maybe before anything else was imported: the rank from the environment)
        if os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")) == "0":
            print(f"\n{e}: stopped before the run started; nothing was trained or saved", file=sys.stderr)
        return e.exit_code
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _main(name: str, argv: list[str]) -> int:
    from tui_llm.engine.errors import TuiLlmError
    from tui_llm.signals import StopBeforeStart

    try:
        return _command(name)(argv)
    except TuiLlmError as e:
        from tui_llm.cli.headless import safe_text
        from tui_llm.cli.parser import is_root_process

        if is_root_process():  # MPI: one line, not N
            print(f"error: {safe_text(e.cli_message())}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        if isinstance(e, StopBeforeStart):
            raise  # said by main()
        print("interrupted", file=sys.stderr)
        return 130


def _command(name: str):
    """The subcommand's entry, imported only when it runs (so `--help` stays quick)."""
    if name == "prepare":
        from tui_llm.cli.prepare import cmd_prepare as command
    elif name == "sample":
        from tui_llm.cli.sample import cmd_sample as command
    elif name == "export":
        from tui_llm.cli.export import cmd_export as command
    elif name == "watch":
        from tui_llm.cli.watch import cmd_watch as command
    elif name == "chat":
        from tui_llm.cli.chat import cmd_chat as command
    else:
        from tui_llm.cli.train import cmd_train as command
    return command
