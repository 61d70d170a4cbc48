"""One vocabulary: every event field and every CLI flag is a name of docs/glossary.md."""

import dataclasses
import re
from pathlib import Path

from tui_llm.cli.export import export_parser
from tui_llm.cli.sample import sample_parser
from tui_llm.cli.train import train_parser
from tui_llm.engine import events as ev
from tui_llm.engine.training.run_config import RunConfig

GLOSSARY = (Path(__file__).resolve().parent.parent / "docs" / "glossary.md").read_text()
NAMES = set(re.findall(r"`([a-z_]+)`", GLOSSARY))


def test_every_event_field_is_in_the_glossary():
    for cls in ev.EVENT_TYPES.values():
        record_keys = {"type"} | {f.name for f in dataclasses.fields(cls)}
        assert record_keys <= NAMES, (cls.__name__, record_keys - NAMES)
        assert cls.kind in NAMES or cls.kind == "compiling" or f"`{cls.kind}`" in GLOSSARY


def test_every_run_setting_and_cli_flag_is_in_the_glossary():
    assert {f.name for f in dataclasses.fields(RunConfig)} <= NAMES
    from tui_llm.cli.watch import watch_parser

    parsers = [train_parser(), sample_parser(), export_parser(), watch_parser()]
    flags = set()
    for parser in parsers:
        for action in parser._actions:
            flags |= {opt for opt in action.option_strings if opt.startswith("--")}
    flags -= {"--help"}
    names = {flag[2:].replace("-", "_") for flag in flags}
    aliases = {"val": "val_file", "format": "data_format", "no_shuffle": "shuffle"}
    names = {aliases.get(n, n) for n in names}
    assert names <= NAMES, names - NAMES


def test_enum_values_are_the_glossary_words():
    for enum in (ev.FinishReason, ev.SaveReason, ev.RunState, ev.Level):
        for member in enum:
            assert f"`{member.value}`" in GLOSSARY, member
