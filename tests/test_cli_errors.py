"""No raw traceback from the CLI: hostile files and homes are one-line errors, and anything
unexpected is one line naming a crash log that holds the traceback."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import add_finished_run

from cvtui.catalog import Catalog

RUN = "01hzzcrash0test0run0000000"


def cvtui(tmp_path: Path, *args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")  # where crash logs go
    argv = [sys.executable, "-m", "cvtui.cli", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("cvtui: ")
    return line


def test_an_inventory_nested_10000_deep_is_a_located_error(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("hosts: " + "[" * 10_000 + "]" * 10_000 + "\n")
    done = cvtui(tmp_path, "--inventory", str(flow), "--home", str(tmp_path / "h"), "hosts")
    assert done.returncode == 2
    assert (
        one_line_error(done) == f"cvtui: {flow}:1:107: invalid YAML: nested deeper than 100 levels"
    )
    block = tmp_path / "block.yaml"
    block.write_text("hosts:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 3000)))
    done = cvtui(tmp_path, "--inventory", str(block), "--home", str(tmp_path / "h"), "hosts")
    assert done.returncode == 2
    assert one_line_error(done).endswith("invalid YAML: nested deeper than 100 levels")


def test_a_run_config_nested_deep_is_a_located_error(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  gpu-01: {address: 127.0.0.1}\n")
    for depth in (10_000, 500):  # 500: libyaml composes it, the walk after it would recurse
        config = tmp_path / f"deep{depth}.yaml"
        config.write_text(
            "name: x\ncommand: echo\nparams:\n  a: " + "[" * depth + "1" + "]" * depth + "\n"
        )
        done = cvtui(
            tmp_path, "--inventory", str(inventory), "--home", str(tmp_path / "h"),
            "run", str(config), "--dry-run",
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        line = one_line_error(done)
        assert line.startswith(f"cvtui: {config}:4:") and line.endswith(
            "nested deeper than 100 levels"
        )


def test_a_home_that_is_a_file_or_beneath_one_is_a_one_line_error(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    done = cvtui(tmp_path, "--home", str(afile), "ps")
    assert one_line_error(done) == f"cvtui: cvtui home {afile} exists and is not a directory"
    done = cvtui(tmp_path, "--home", str(afile / "sub"), "ps")
    assert (
        one_line_error(done) == f"cvtui: cannot create cvtui home {afile / 'sub'}: Not a directory"
    )


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run cvtui as another user",
)
def test_a_home_the_user_cannot_read_is_a_one_line_error(tmp_path: Path) -> None:
    # Behind a directory the user cannot enter (pytest's tmp dirs are 0700):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    done = cvtui(tmp_path, "--home", str(home), "ps", user=65534)
    assert one_line_error(done) == f"cvtui: cannot create cvtui home {home}: Permission denied"
    # Reachable, but not the user's to read and write:
    base = Path(tempfile.mkdtemp(prefix="cvtui-home-"))
    try:
        base.chmod(0o711)
        home = base / "home"
        home.mkdir(mode=0o700)
        done = cvtui(tmp_path, "--home", str(home), "ps", user=65534)
        wanted = f"cvtui: cvtui home {home} is not readable and writable by you"
        assert one_line_error(done) == wanted
    finally:
        shutil.rmtree(base)


def test_an_unexpected_error_names_its_crash_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Catalog.open_home(home) as catalog:
        add_finished_run(catalog, RUN, "r")
    # A catalog row that no code path expects: a metric chunk that is not JSON.
    conn = sqlite3.connect(home / "catalog.db")
    with conn:
        conn.execute(
            "INSERT INTO metric_series (id, run_id, file, key) VALUES (1, ?, 'm.csv', 'x')", (RUN,)
        )
        conn.execute(
            "INSERT INTO metric_chunks (series, seq, count, steps, vals)"
            " VALUES (1, 0, 1, 'x', '[1]')"
        )
    conn.close()
    done = cvtui(tmp_path, "--home", str(home), "metrics", RUN)
    assert done.returncode == 70
    line = one_line_error(done)
    assert line.startswith("cvtui: internal error: JSONDecodeError: Expecting value")
    logs = list((tmp_path / "state" / "cvtui" / "log").glob("crash-*.log"))
    assert len(logs) == 1 and line.endswith(f"(traceback in {logs[0]})")
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "json.decoder.JSONDecodeError" in text
    assert f"command: {sys.executable.split('/')[-1]}" not in text  # argv of the CLI, as given
    assert "metrics" in text.splitlines()[1]
    assert logs[0].stat().st_mode & 0o777 == 0o600
