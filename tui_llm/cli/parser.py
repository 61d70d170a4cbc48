"""What the subcommands share: argparse that fails in one line, exit codes, defaults."""

from __future__ import annotations

import argparse
import os

from tui_llm.engine.errors import TuiLlmError

EXIT_OK, EXIT_TRAINING_ERROR, EXIT_BAD_INPUT = 0, 1, 2
SAMPLE_LEN, SEED = 64, 42  # one default for training's samples and `tui-llm sample`


def is_root_process() -> bool:
    """Rank 0 of an MPI job (or no MPI at all): the process that prints."""
    return os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")) == "0"


class UsageError(TuiLlmError):
    """Arguments that cannot work together (or that argparse refused): one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is our one-line error (exit 2) instead of a usage dump."""

    def error(self, message):
        raise UsageError(message)

    def parse_known_args(self, args=None, namespace=None):
        # As a subcommand, leftover arguments would go back to the main parser, which prints a usage
        # block: refuse them here instead.
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras
