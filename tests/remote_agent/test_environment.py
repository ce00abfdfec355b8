"""OP_ENVIRONMENT: the host's packages (as pip freeze lists them) and GPU driver, from real
child interpreters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from remote_agent.environment import EnvironmentOps, list_packages


def test_packages_match_what_pip_freeze_lists() -> None:
    listed = list_packages(sys.executable)
    assert listed["packages_reason"] is None
    ours = {line.split("==")[0].lower() for line in listed["packages"].splitlines()}
    assert {"pyyaml", "xxhash", "asyncssh"} <= ours  # this project's own dependencies
    lines = listed["packages"].splitlines()
    names = [line.split("==")[0].lower() for line in lines]
    assert names == sorted(names) and all("==" in line for line in lines)


def test_an_empty_venv_lists_nothing_and_a_broken_python_says_why(tmp_path: Path) -> None:
    venv = tmp_path / "empty"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    assert list_packages(str(venv / "bin" / "python")) == {
        "packages": "\n",
        "packages_reason": None,
    }
    missing = list_packages(str(tmp_path / "no-python"))
    assert missing["packages"] is None and "no-python" in missing["packages_reason"]
    broken = tmp_path / "broken"
    broken.write_text("#!/bin/sh\necho 'ImportError: no metadata' >&2\nexit 3\n")
    broken.chmod(0o755)
    assert list_packages(str(broken)) == {
        "packages": None,
        "packages_reason": "ImportError: no metadata",
    }


def test_the_op_answers_once_and_a_failing_driver_query_is_reported() -> None:
    calls = []

    def driver() -> str:
        calls.append(1)
        raise OSError("nvidia-smi: not found on PATH")

    ops = EnvironmentOps(driver)
    assert ops.ops["environment"]({"id": 1, "op": "environment"}) == {"pending": True}
    ops.wait(30)  # read in a thread: the request thread never waits for a child python
    first = ops.ops["environment"]({"id": 2, "op": "environment"})
    again = ops.ops["environment"]({"id": 3, "op": "environment"})
    assert first == again and len(calls) == 1  # cached for the agent's life
    assert first["driver"] is None and "not found on PATH" in first["driver_reason"]
    assert first["python"] == sys.version.split()[0] and first["executable"] == sys.executable
