"""One vocabulary: docs/glossary.md and the code name the same things, checked both ways by exact name.

The glossary's tables are read by their first column (backticked names; a parenthesised part
such as "`reason` (`finished`)" only qualifies the name). Documented => exists and exists =>
documented for run settings, CLI flags, event fields, commands, run states and presets; every
flag, module and class named anywhere on the page exists.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path

import pytest

from tui_llm.cli.chat import chat_parser
from tui_llm.cli.export import export_parser
from tui_llm.cli.prepare import prepare_parser
from tui_llm.cli.sample import sample_parser
from tui_llm.cli.train import train_parser
from tui_llm.cli.watch import watch_parser
from tui_llm.engine import events as ev
from tui_llm.engine.models.gpt2_config import PRESETS
from tui_llm.engine.run.channel import command_from_json, command_to_json
from tui_llm.engine.training.run_config import LIVE_SETTINGS, RunConfig

ROOT = Path(__file__).resolve().parent.parent
GLOSSARY = (ROOT / "docs" / "glossary.md").read_text()
RUN_PARSERS = {"tui-llm": train_parser(), "sample": sample_parser(), "export": export_parser(), "watch": watch_parser(),
               "chat": chat_parser()}


def section(title: str) -> str:
    """The body of the one `## ` section whose heading starts with `title`."""
    parts = re.split(r"^## ", GLOSSARY, flags=re.M)[1:]
    found = [part.split("\n", 1)[1] for part in parts if part.startswith(title)]
    assert len(found) == 1, f"{len(found)} glossary sections start with {title!r}"
    return found[0]


def table(title: str) -> list[list[str]]:
    """The cells of the section's table, header and separator left out."""
    lines = [line.strip() for line in section(title).splitlines() if line.startswith("|")]
    header = lines[0].strip("|").split("|")
    rows = [line.strip("|").split("|") for line in lines[2:]]
    for row in rows:
        assert len(row) == len(header), f"{title}: a row of {len(row)} cells (a stray '|'?): {row}"
    return [[cell.strip() for cell in row] for row in rows]


def names(cell: str) -> list[str]:
    """The backticked names of a cell, without its parenthesised qualifiers."""
    return re.findall(r"`([^`]+)`", re.sub(r"\([^)]*\)", "", cell))


def ticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", text))


def rows_by_name(title: str) -> dict[str, list[str]]:
    """name -> the texts of the rows whose first column documents it."""
    rows: dict[str, list[str]] = {}
    for row in table(title):
        for name in names(row[0]):
            rows.setdefault(name, []).append(" | ".join(row))
    return rows


def options(parser):
    """(long flag, dest) of each option but --help."""
    for action in parser._actions:
        longs = [opt for opt in action.option_strings if opt.startswith("--")]
        if longs and longs != ["--help"]:
            assert len(longs) == 1, longs
            yield longs[0], action.dest


def positionals(parser) -> set[str]:
    return {action.dest for action in parser._actions if not action.option_strings}


def undocumented_flags(parsers, rows: dict[str, list[str]]) -> list[str]:
    """Flags that are neither a row by their own name (`--no-ui`: `no_ui`) nor named by the row
    of their field (`--val` in `val_file`'s row)."""
    missing = []
    for command, parser in parsers.items():
        for flag, dest in options(parser):
            if flag[2:].replace("-", "_") in rows:
                continue
            if not any(f"`{flag}`" in row for row in rows.get(dest, [])):
                missing.append(f"{command} {flag}")
    return missing


def test_every_run_setting_and_flag_is_a_row_of_run_settings():
    rows = rows_by_name("Run settings")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert sorted(fields - rows.keys()) == []
    assert undocumented_flags(RUN_PARSERS, rows) == []


def test_every_prepare_flag_is_a_row_of_its_table():
    assert undocumented_flags({"prepare": prepare_parser()}, rows_by_name("`tui-llm prepare` flags")) == []


def test_every_documented_setting_or_flag_exists():
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    for title, parsers in [("Run settings", RUN_PARSERS.values()), ("`tui-llm prepare` flags", [prepare_parser()])]:
        known = set(fields) if title == "Run settings" else set()
        for parser in parsers:
            known |= {flag[2:].replace("-", "_") for flag, _ in options(parser)} | positionals(parser)
        assert sorted(rows_by_name(title).keys() - known) == [], title


def test_every_flag_the_glossary_names_exists():
    flags = {opt for parser in [*RUN_PARSERS.values(), prepare_parser()] for a in parser._actions
             for opt in a.option_strings}
    named = {name for name in ticked(GLOSSARY) if re.fullmatch(r"--?[a-z][a-z-]*", name)}
    assert sorted(named - flags) == []


def test_event_fields_are_the_rows_of_events_both_ways():
    fields = {"type"} | {f.name for cls in ev.EVENT_TYPES.values() for f in dataclasses.fields(cls)}
    assert set(rows_by_name("Events")) == fields


def test_record_types_and_enum_values_are_the_glossary_words():
    rows = rows_by_name("Events")
    assert ticked(rows["type"][0].split("|", 1)[1]) == set(ev.EVENT_TYPES)
    finished, = [row for row in rows["reason"] if "(`finished`)" in row]
    saved, = [row for row in rows["reason"] if "`path`" in row]
    assert ticked(finished.split("|", 1)[1]) == {r.value for r in ev.FinishReason}
    assert ticked(saved.split("|", 1)[1]) == {r.value for r in ev.SaveReason}
    assert ticked(rows["level"][0].split("|", 1)[1]) == {level.value for level in ev.Level}
    assert ticked(section("Run states")) == {state.value for state in ev.RunState}


def test_commands_table_is_the_command_classes_and_the_channel_requests():
    classes = {cls.__name__: cls for cls in ev.Command.__subclasses__()}
    rows = table("Commands")
    documented = {names(row[0])[0] for row in rows if row[0]}
    assert documented == set(classes)
    for row in rows:
        request, = names(row[1])
        fields = set(names(row[2]))
        if not row[0]:  # a request with no command: only the channel answers it
            assert command_from_json({"command": request}, lambda name, value: value) is None, row
            continue
        cls = classes[names(row[0])[0]]
        assert fields == {f.name for f in dataclasses.fields(cls)}, row
        sample = cls(**({"name": "lr_scale", "value": 0.5} if cls is ev.SetSetting else {}))
        as_json = command_to_json(sample)
        assert as_json["command"] == request, row
        assert command_from_json(as_json, lambda name, value: value) == sample, row
        assert set(as_json) - {"command"} <= fields, row


def test_live_settings_are_listed_in_order():
    listed = names(section("Live settings").split(":", 1)[0])
    assert listed == list(LIVE_SETTINGS)


def test_presets_are_stated_as_they_are():
    model, = rows_by_name("Run settings")["model"]
    stated = {name: dict(num_layers=int(layers), num_heads=int(heads), channels=int(channels))
              for name, layers, heads, channels in re.findall(r"`(d\d+)` (\d+)/(\d+)/(\d+)", model)}
    assert stated == PRESETS


def test_modules_and_classes_the_glossary_names_exist():
    for name in ticked(GLOSSARY):
        if re.fullmatch(r"[\w/]+\.py", name):
            assert (ROOT / "tui_llm" / name).is_file() or (ROOT / name).is_file(), name
        elif re.fullmatch(r"tui_llm(\.\w+)+", name):  # a module, or a name of the public API (tui_llm.encode_chat)
            module, _, attribute = name.rpartition(".")
            assert importlib.util.find_spec(name) is not None or hasattr(importlib.import_module(module), attribute), name
    sources = "\n".join(p.read_text() for p in (ROOT / "tui_llm").rglob("*.py"))
    for name in ticked(GLOSSARY):
        if re.fullmatch(r"[A-Z][a-z]+[A-Z]\w*", name):  # CamelCase: a class (or an alias of one)
            assert re.search(rf"^\s*(class {name}\b|{name} = )", sources, re.M), name


@pytest.mark.parametrize("title", ["Run settings", "`tui-llm prepare` flags", "Events", "Commands"])
def test_tables_have_one_row_per_name(title):
    first_columns = [name for row in table(title) for name in names(row[0])]
    repeated = {n for n in first_columns if first_columns.count(n) > 1}
    assert repeated <= {"reason", "name"}, repeated  # qualified: (`finished`), (`setting`), compiling's name
