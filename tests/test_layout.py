"""The package's layout is its architecture (issue 19), checked on the source (AST, nothing runs).

- ``src/postergenre/`` holds at most six modules; the rest lives in the stages, subpackages in
  dependency order: each stage imports only stages before it, and siblings not each other.
- No import cycle between stages (imports inside functions count) nor between modules
  (module-level imports: what runs when a module is imported).
- Each stage's ``__init__`` says what it may import, and says it truthfully; the README and the
  package docstring state the order.
- Small pieces: no function over 60 lines, no module over 400.
- The tests follow the layout: one folder per stage, each test module's name unique.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "postergenre"
TESTS = REPO / "tests"
# The stages in dependency order; a tuple holds siblings (the same rank, neither imports the other).
ORDER = ("data", "backbones", "text", "modeling", ("training", "inference"), "study", "app")
RANK = {stage: rank for rank, entry in enumerate(ORDER) for stage in (entry if isinstance(entry, tuple) else (entry,))}
ORDER_TEXT = " -> ".join(" | ".join(e) if isinstance(e, tuple) else e for e in ORDER)
FACADE = {"postergenre", "postergenre.__main__"}  # the package's own entry points: above every stage
MAX_TOP_LEVEL, MAX_FUNCTION, MAX_MODULE = 6, 60, 400


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its ``__init__``)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("postergenre", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, bool, int]]:
    """``(module imported, at module level?, line)`` for each import of the package in ``name``.
    ``from X import y`` imports ``X.y`` when that is a module, else ``X``; the root's
    ``__version__`` (a constant, nothing runs) is ``postergenre.__version__``."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, top, child.lineno) for a in child.names if a.name.split(".")[0] == "postergenre")
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                if base.split(".")[0] == "postergenre":
                    for a in child.names:
                        sub = f"{base}.{a.name}"
                        target = sub if sub in MODULES or (base == "postergenre" and a.name == "__version__") else base
                        found.append((target, top, child.lineno))
            visit(child, top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), True)
    return found


IMPORTS = {name: _imports(name) for name in MODULES}


def _stage(name: str) -> str:
    """``data``, ``modeling``, ... for a module of a stage; ``base`` for the top-level modules
    (errors, _io, ...) and ``__version__``; the module itself for the facade."""
    parts = name.split(".")
    if name in FACADE:
        return name
    if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()):
        return parts[1]
    return "base"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_top_level_is_a_few_modules_and_the_stages():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules at the top of src/postergenre (at most {MAX_TOP_LEVEL}): {top}"
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages <= set(RANK), f"subpackages that are not stages of ORDER: {sorted(packages - set(RANK))}"
    assert {s for s in RANK if s != "text"} <= packages  # text/ arrives with the poster-text issue


def test_no_import_cycle_between_modules():
    """Module-level imports only: what runs when a module is imported, including the packages'
    ``__init__`` that importing a submodule runs first."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, found in IMPORTS.items():
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for target, top, _ in found:
            if not top or target not in MODULES:
                continue
            parts = target.split(".")
            graph[name] |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} - own - {name}
    assert not _cycles(graph), f"module-level import cycles: {_cycles(graph)}"


def test_each_stage_imports_only_the_stages_before_it():
    """Imports inside functions count. The top-level modules import nothing of the stages; the
    package's ``__init__`` imports nothing at module level (its entry points load lazily)."""
    wrong = []
    for name, found in IMPORTS.items():
        stage = _stage(name)
        for target, top, line in found:
            goes_to = _stage(target)
            if stage == "postergenre.__main__" or goes_to in ("base", stage):
                ok = stage != "postergenre" or not top
            elif stage == "postergenre":
                ok = not top
            else:
                ok = stage in RANK and goes_to in RANK and RANK[goes_to] < RANK[stage]
            if not ok:
                wrong.append(f"{MODULES[name].relative_to(REPO)}:{line} imports {target} ({stage} -> {goes_to})")
    assert not wrong, f"imports against the order {ORDER_TEXT}:\n" + "\n".join(wrong)


def test_no_cycle_between_stages():
    graph: dict[str, set[str]] = defaultdict(set)
    for name, found in IMPORTS.items():
        if _stage(name) in RANK:
            graph[_stage(name)] |= {_stage(t) for t, _, _ in found if _stage(t) in RANK} - {_stage(name)}
    assert not _cycles(graph), f"import cycles between stages (function-level imports included): {_cycles(graph)}"


def test_each_stage_says_what_it_may_import_and_keeps_to_it():
    for stage in (s for s in RANK if (PACKAGE / s / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text())) or ""
        said = re.search(r"May import:(.*?)(?:Never|Nothing|\n\n|$)", doc, re.S)
        assert said, f"{stage}/__init__.py: the docstring does not say what the stage may import ('May import: ...')"
        listed = set(re.findall(r"``(\w+)``", said[1]))
        below = {s for s in RANK if RANK[s] < RANK[stage]}
        assert listed <= below | {p.stem for p in PACKAGE.glob("*.py")}, f"{stage}: lists {sorted(listed - below)}, not below it"
        used = {t.split(".")[1] for name, found in IMPORTS.items() if _stage(name) == stage for t, _, _ in found
                if _stage(t) != stage and t != "postergenre.__version__"}
        assert used <= listed, f"{stage} imports {sorted(used - listed)}, which its docstring does not list"


def test_the_order_is_written_where_a_reader_looks():
    assert ORDER_TEXT in (REPO / "README.md").read_text()
    assert ORDER_TEXT in " ".join((ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text())) or "").split())


def test_no_function_over_60_lines_and_no_module_over_400():
    long = []
    for name, path in MODULES.items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE:
            long.append(f"{path.relative_to(REPO)}: {len(text.splitlines())} lines (module, at most {MAX_MODULE})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION:
                long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines "
                            f"(function, at most {MAX_FUNCTION})")
    assert not long, "\n".join(long)


def test_the_tests_follow_the_layout():
    """One folder per stage (no ``__init__.py``: pytest imports test modules by name, so each
    name is unique), shared fixtures and helpers in ``conftest.py``."""
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders <= set(RANK) | {"fixtures"}, f"test folders that are not stages: {sorted(folders - set(RANK))}"
    names = [p.name for p in TESTS.rglob("test_*.py")]
    assert len(names) == len(set(names)), f"test modules with the same name: {sorted({n for n in names if names.count(n) > 1})}"
