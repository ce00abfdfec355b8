"""Seam: remote_agent imports only the standard library and keeps to Python 3.8 syntax."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from remote_agent_harness import python38

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "remote_agent"
MODULES = sorted(PACKAGE.glob("*.py"))

# In a clean interpreter (-I: no environment, no user site; -S: no site-packages at all), import
# every agent module, then sort sys.modules by where each module came from.
PROBE = """
import json, sys
sys.path.insert(0, REPO)
before = set(sys.modules)
for name in NAMES:
    __import__(name)
loaded = sorted(set(sys.modules) - before)
import sysconfig
paths = sysconfig.get_paths()
stdlib = (paths["stdlib"], paths["platstdlib"])
report = {"repo": [], "third_party": []}
for name in loaded:
    origin = getattr(sys.modules[name], "__file__", None) or ""
    if origin.startswith(REPO + "/"):
        report["repo"].append(name)
    elif origin and not origin.startswith(stdlib):
        report["third_party"].append(name + " from " + origin)
print(json.dumps(report))
"""


def _module_name(path: Path) -> str:
    return "remote_agent" if path.stem == "__init__" else f"remote_agent.{path.stem}"


@pytest.mark.parametrize("python", ["current", "py3.8"])
def test_agent_modules_import_only_the_standard_library(python: str) -> None:
    """On this interpreter and on a real Python 3.8, the oldest a host may have."""
    executable = sys.executable if python == "current" else python38()
    names = [_module_name(path) for path in MODULES]
    assert "remote_agent.agent" in names and "remote_agent.gpus" in names
    code = f"REPO = {str(REPO)!r}\nNAMES = {names!r}\n{PROBE}"
    done = subprocess.run(
        [executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["third_party"] == []
    assert set(names) <= set(report["repo"])
    assert all(name.split(".")[0] == "remote_agent" for name in report["repo"]), report["repo"]


_BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}
_NEWER_METHODS = {"removeprefix", "removesuffix", "is_relative_to", "with_stem"}


def _annotation_nodes(tree: ast.AST) -> set[int]:
    """ids of every node inside an annotation (never evaluated with postponed annotations)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(inner) for root in roots for inner in ast.walk(root)}


def py38_problems(source: str) -> list[str]:
    """Constructs that parse here but fail on Python 3.8 (a cheap stand-in for vermin)."""
    try:
        tree = ast.parse(source, feature_version=(3, 8))  # match, except*, new grammar
    except SyntaxError as exc:
        return [f"line {exc.lineno}: {exc.msg}"]
    postponed = any(
        isinstance(node, ast.ImportFrom)
        and node.module == "__future__"
        and any(alias.name == "annotations" for alias in node.names)
        for node in tree.body
    )
    in_annotation = _annotation_nodes(tree)
    problems = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        runtime = id(node) not in in_annotation or not postponed
        if (
            runtime
            and isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in _BUILTIN_GENERICS
        ):
            problems.append(f"line {line}: {node.value.id}[...] is evaluated (3.9+)")
        if runtime and isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            sides = (node.left, node.right)
            if any(isinstance(s, ast.Constant) and s.value is None for s in sides):
                problems.append(f"line {line}: X | None is evaluated (3.10+)")
        if isinstance(node, ast.Attribute) and node.attr in _NEWER_METHODS:
            problems.append(f"line {line}: .{node.attr} is 3.9+")
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg in {"slots", "kw_only"}:
                    problems.append(f"line {line}: dataclass({keyword.arg}=) is 3.10+")
                if keyword.arg == "strict" and getattr(node.func, "id", "") == "zip":
                    problems.append(f"line {line}: zip(strict=) is 3.10+")
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "functools"
            and any(alias.name == "cache" for alias in node.names)
        ):
            problems.append(f"line {line}: functools.cache is 3.9+")
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "cache"
            and getattr(node.value, "id", "") == "functools"
        ):
            problems.append(f"line {line}: functools.cache is 3.9+")
    return problems


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_agent_modules_keep_to_python_38(path: Path) -> None:
    assert py38_problems(path.read_text()) == []


def test_the_checker_catches_what_it_claims() -> None:
    bad = (
        "x = list[int]\n"
        "y = s.removeprefix('a')\n"
        "def f(a: int | None) -> None: ...\n"
        "match x:\n    case 1: pass\n"
    )
    (problem,) = py38_problems(bad)  # the grammar check stops at the first error
    assert "Pattern matching is only supported in Python 3.10" in problem
    found = py38_problems("x = list[int]\ny = s.removeprefix('a')\ndef f(a: int | None): ...\n")
    assert sorted(found) == [
        "line 1: list[...] is evaluated (3.9+)",
        "line 2: .removeprefix is 3.9+",
        "line 3: X | None is evaluated (3.10+)",
    ]
    future = (
        "from __future__ import annotations\ndef f(a: list[int] | None) -> dict[str, int]: ...\n"
    )
    assert py38_problems(future) == []
    assert py38_problems("[y for x in z if (y := x)]\n") == []  # walrus is 3.8


def test_main_module_parses_on_old_pythons() -> None:
    # The entry point must at least reach its version check on an old interpreter.
    source = (PACKAGE / "__main__.py").read_text()
    tree = ast.parse(source, feature_version=(3, 4))
    assert not any(isinstance(node, ast.JoinedStr) for node in ast.walk(tree))
    assert not any(isinstance(node, ast.AnnAssign) for node in ast.walk(tree))
