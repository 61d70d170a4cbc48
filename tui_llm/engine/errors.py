"""The one family of errors the engine raises for things a user can fix.

Every engine error a person may see derives from TuiLlmError: its str() is one line saying what is
wrong, and `field` or `path` say what it concerns (a RunConfig field, a file). The command line
maps every TuiLlmError to that line and its `exit_code` in one place (tui_llm/cli/__init__.py),
spelling a field as its flag (`seq_len` -> `--seq-len`); a notebook catches TuiLlmError.
Anything else that escapes is a bug, and shows as one.
"""

from __future__ import annotations


class TuiLlmError(Exception):
    """Bad input or a condition a user can fix. str() is one line."""

    exit_code = 2  # the command's exit status: bad input

    def __init__(self, message: str, *, field: str | None = None, path: object = None):
        self.field = field
        self.path = None if path is None else str(path)
        self.problem = " ".join(str(message).split())  # one line, whatever the cause said
        super().__init__(f"{field} {self.problem}" if field else self.problem)

    def cli_message(self) -> str:
        """The message as the command line says it: the field spelled as its flag (--seq-len)."""
        return f"{flag_name(self.field)} {self.problem}" if self.field else str(self)


FLAGS = {"data_format": "--format", "val_file": "--val", "train_file": "TRAIN_BIN", "shuffle": "--no-shuffle"}
"""The fields whose flag is not the field's name with - for _ (docs/glossary.md)."""


def flag_name(field: str) -> str:
    """A setting's command-line spelling: seq_len -> --seq-len, data_format -> --format."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))
