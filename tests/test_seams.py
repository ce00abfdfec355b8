"""The architecture's seams, enforced: what may import what, and the agent's Python floor."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def modules_after_import(*modules: str) -> set[str]:
    code = "import json, sys\n" + "".join(f"import {m}\n" for m in modules)
    code += "print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    "module",
    ["cvtui.engine.engine", "cvtui.engine.doctor", "cvtui.catalog", "cvtui.inventory", "cvtui.lab"],
)
def test_core_never_imports_textual(module: str) -> None:
    loaded = modules_after_import(module)
    assert not {m for m in loaded if m == "textual" or m.startswith("textual.")}


def test_cli_help_imports_no_heavy_modules() -> None:
    loaded = modules_after_import("cvtui.cli")
    heavy = {"textual", "asyncssh", "sqlite_utils", "yaml", "watchfiles", "xxhash"}
    assert not heavy & loaded


@pytest.mark.parametrize(
    "module",
    ["cvtui.api", "cvtui.hosts_command", "cvtui.stats", "cvtui.cli.hosts", "cvtui.cli.queue"],
)
def test_daemon_speed_paths_import_no_ssh_and_no_tui(module: str) -> None:
    """What `hosts`, `ps`, `stats`... import beside a running engine: asyncssh alone costs
    ~0.2 s of a 0.2 s budget (a top-level import in hosts_command once took `hosts` from
    111 ms to 292 ms). The engine is imported where a command runs one itself."""
    loaded = modules_after_import(module)
    assert not {"asyncssh", "textual", "numpy"} & loaded


def test_remote_agent_needs_only_python_3_8() -> None:
    done = subprocess.run(
        [
            Path(sys.executable).with_name("vermin"),
            "-t=3.8-",
            "--no-tips",
            "--violations",
            "remote_agent",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- the import graph, read from the source ----------------------------------------------

SOURCE_TREES = ("cvtui", "remote_agent")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules(*trees: str) -> dict[str, Path]:
    """Module name -> file, for every module of these top-level trees."""
    return {module_name(p): p for tree in trees for p in sorted((REPO / tree).rglob("*.py"))}


MODULES = source_modules(*SOURCE_TREES)


def imported_names(tree: ast.AST) -> list[tuple[ast.AST, str, str | None]]:
    """(node, module, name) of every import anywhere in a module (inside functions and
    TYPE_CHECKING blocks too): name is None for `import module`."""
    found: list[tuple[ast.AST, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node, node.module, alias.name) for alias in node.names]
    return found


def module_imports(path: Path) -> set[str]:
    """The modules of SOURCE_TREES that a module imports (a package's submodule when named)."""
    targets = set()
    for _, module, name in imported_names(ast.parse(path.read_text())):
        target = f"{module}.{name}" if name and f"{module}.{name}" in MODULES else module
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != module_name(path):
            targets.add(target)
    return targets


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of graph with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            part = []
            while True:
                top = stack.pop()
                part.append(top)
                if top == node:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def top_level_part(module: str) -> str:
    """cvtui.engine.runner -> cvtui.engine; remote_agent.x -> remote_agent. The CLI's command
    modules (cvtui/cli_*.py) are parts of the CLI, cvtui.cli, until they become its package."""
    parts = module.split(".")
    if parts[0] != "cvtui" or len(parts) == 1:
        return parts[0]
    return "cvtui.cli" if parts[1].startswith("cli_") else f"cvtui.{parts[1]}"


def test_the_checks_below_see_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert top_level_part("cvtui.cli_runs") == "cvtui.cli"
    assert top_level_part("cvtui.engine.runner") == "cvtui.engine"
    assert "cvtui.catalog.store" in module_imports(MODULES["cvtui.catalog"])


def test_no_import_cycle_between_top_level_parts() -> None:
    """Every import counts, deferred and type-only too: a part imports another, or is
    imported by it, never both (cvtui.engine uses cvtui.repro, never the reverse)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        for target in module_imports(path):
            if top_level_part(target) != top_level_part(module):
                graph.setdefault(top_level_part(module), set()).add(top_level_part(target))
    assert cycles(graph) == []


@pytest.mark.parametrize("package", ["cvtui.catalog", "cvtui.repro", "cvtui.inventory"])
def test_no_import_cycle_inside_a_core_package(package: str) -> None:
    inside = {m: p for m, p in MODULES.items() if m.startswith(f"{package}.")}
    graph = {m: {t for t in module_imports(p) if t in inside} for m, p in inside.items()}
    assert cycles(graph) == []


def test_no_private_name_is_imported_from_another_module() -> None:
    """A leading underscore means "this module's own": other modules ask for a public name."""
    trees = (*SOURCE_TREES, "benchmarks", "tests")
    offences = []
    for tree in trees:
        for path in sorted((REPO / tree).rglob("*.py")):
            for node, module, name in imported_names(ast.parse(path.read_text())):
                if module.split(".")[0] not in SOURCE_TREES:
                    continue
                private = [
                    part
                    for part in [*module.split("."), name or ""]
                    if part.startswith("_") and not part.startswith("__")
                ]
                if private:
                    offences.append(f"{path.relative_to(REPO)}:{node.lineno}: {module} {name}")
    assert offences == []


# Statements of SQL as cvtui writes them (upper-case keywords).
SQL = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+(OR\s+\w+\s+)?INTO\b|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b|\b(CREATE|DROP|ALTER)\s+(TABLE|INDEX|VIEW|UNIQUE)\b|\bPRAGMA\s+\w+"
    r"|^\s*(BEGIN|COMMIT|ROLLBACK)\b"
)


def docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of a module, its classes and functions."""
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
        ):
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def test_the_sql_check_knows_sql() -> None:
    assert SQL.search("SELECT name FROM hosts WHERE drained = 1")
    assert SQL.search("INSERT OR IGNORE INTO blobs (hash) VALUES (?)")
    assert SQL.search("UPDATE runs SET reproduces = ? WHERE id = ?")
    assert SQL.search("PRAGMA query_only = ON") and SQL.search("BEGIN IMMEDIATE")
    assert not SQL.search("select the runs to show, then update the table")


def test_no_sql_outside_the_catalog() -> None:
    """cvtui/catalog owns SQLite: elsewhere no sqlite3 or sqlite_utils import, no SQL text,
    no execute() call and no use of the catalog's private transactions."""
    offences = []
    for module, path in MODULES.items():
        if module == "cvtui.catalog" or module.startswith("cvtui.catalog."):
            continue
        tree = ast.parse(path.read_text())
        where = f"{path.relative_to(REPO)}"
        for node, imported, _ in imported_names(tree):
            if imported.split(".")[0] in ("sqlite3", "sqlite_utils"):
                offences.append(f"{where}:{node.lineno}: imports {imported}")
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in skip and SQL.search(node.value):
                    offences.append(f"{where}:{node.lineno}: SQL {node.value[:50]!r}")
            elif isinstance(node, ast.Attribute) and (
                node.attr in ("execute", "executemany", "executescript")
                # The catalog's transactions; a class's own _read is its business.
                or (node.attr in ("_read", "_write") and not _is_self(node.value))
            ):
                offences.append(f"{where}:{node.lineno}: .{node.attr}")
    assert offences == []


def test_only_the_engine_imports_asyncssh() -> None:
    """The engine is the only code that talks to hosts."""
    offences = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for module, path in MODULES.items()
        if not module.startswith("cvtui.engine.")
        for node, imported, _ in imported_names(ast.parse(path.read_text()))
        if imported.split(".")[0] == "asyncssh"
    ]
    assert offences == []


def spelled_out(tree: ast.AST, words: set[str]) -> list[int]:
    """Lines where a tuple, list or set literal spells out three or more of words."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Tuple | ast.List | ast.Set)
        and len(words & {e.value for e in node.elts if isinstance(e, ast.Constant)}) >= 3
    ]


def test_the_vocabulary_check_sees_a_list() -> None:
    words = {"queued", "running", "failed", "lost"}
    assert spelled_out(ast.parse('x = ("queued", "running", "failed")'), words) == [1]
    assert spelled_out(ast.parse('x = ["queued", "running"]'), words) == []


def test_states_and_priorities_are_spelled_out_once() -> None:
    """Run states and priorities are listed in cvtui/states.py; everyone else imports them
    (a mapping from each state to its colour or icon is that module's own business)."""
    from cvtui.states import PRIORITIES, RUN_STATES

    words = set(RUN_STATES) | set(PRIORITIES)
    offences = [
        f"{path.relative_to(REPO)}:{line}"
        for module, path in MODULES.items()
        if module != "cvtui.states"
        for line in spelled_out(ast.parse(path.read_text()), words)
    ]
    assert offences == []


def test_sizes_and_durations_are_formatted_in_one_place() -> None:
    """Sizes print in binary units (KiB, MiB, ...) through cvtui/units.py; no other module
    spells a unit suffix into its output (cvtui/quantities.py reads them from YAML)."""
    unit = re.compile(r"\b(?:[KMGT]i?B|kB)\b")
    offences = []
    for module, path in MODULES.items():
        if module in ("cvtui.units", "cvtui.quantities") or not module.startswith("cvtui."):
            continue
        tree = ast.parse(path.read_text())
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                skip |= {id(v) for v in node.values}
                text = "".join(v.value for v in node.values if isinstance(v, ast.Constant))
                if unit.search(text):
                    offences.append(f"{path.relative_to(REPO)}:{node.lineno}: {text[:40]!r}")
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
                and unit.fullmatch(node.value.strip())
            ):
                offences.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert offences == []
