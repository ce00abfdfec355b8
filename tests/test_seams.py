"""The architecture's seams, enforced: what may import what, and the agent's Python floor."""

from __future__ import annotations

import json
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
