"""The import graph: no circles between modules, and the layers of docs/architecture.md.

(`lint-imports` in .ci/run checks the layer contracts of pyproject.toml too; this test needs
nothing but the standard library, so `pytest` alone keeps the graph honest.)
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tui_llm"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the tui_llm modules it imports (anywhere in it, lazy imports included; not those
    under `if TYPE_CHECKING:`, which exist for annotations only)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        tree = ast.parse(path.read_text(), str(path))
        for block in [n for n in ast.walk(tree) if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]:
            block.body = []  # imports for annotations only are not dependencies
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # `from pkg import name`: the module is pkg
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    deps.add(target)
        graph[name] = {d for d in deps if d != "tui_llm" or name == "tui_llm.__main__"}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_the_engine_imports_no_ui_and_no_cli():
    graph = import_graph()
    outside = ("tui_llm.app", "tui_llm.terminal", "tui_llm.screens", "tui_llm.widgets", "tui_llm.cli", "tui_llm.signals")
    bad = {m: sorted(d for d in deps if d.startswith(outside)) for m, deps in graph.items()
           if m.startswith("tui_llm.engine")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def layout_entries(readme: str) -> set[str]:
    """The paths (under tui_llm/) that README's "Layout" list names. Each bullet may open with a
    folder (`engine/`, then nested `models/`); the modules it names are in that folder."""
    section = readme[readme.index("## Layout"):]
    section = section[:section.index("\n## ", 1)]
    folders: dict[int, str] = {}
    named, folder = set(), ""
    lines = section.splitlines()
    first_bullet = next(i for i, line in enumerate(lines) if line.startswith("- "))
    for line in lines[first_bullet:]:
        bullet = re.match(r"^(\s*)- (?:`([\w/]+/)`)?", line)
        if bullet:
            depth = len(bullet.group(1)) // 2
            parent = folders.get(depth - 1, "")
            folder = parent + bullet.group(2) if bullet.group(2) else parent
            folders[depth] = folder
            if bullet.group(2):
                named.add(folder)
        named |= {folder + name for name in re.findall(r"`([\w/]+\.py)`", line)}
    return named


def test_readme_layout_names_every_module_and_only_real_ones():
    named = layout_entries((ROOT / "README.md").read_text())
    files = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(files - named) == [], "modules missing from README's layout section"
    assert sorted(n for n in named if not (PACKAGE / n).exists()) == [], "README's layout names paths that do not exist"
