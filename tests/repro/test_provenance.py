"""Run provenance: git state at submit, host, GPUs and packages at dispatch, on real sshd."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from cvtui.catalog import Catalog
from cvtui.engine.provenance import SIMULATED_MARK, record_dispatch
from cvtui.engine.scheduler import Placement
from cvtui.inventory import load_inventory
from cvtui.lab import LabHostSpec
from cvtui.local_engine import drive
from cvtui.repro.blobstore import BlobStore
from cvtui.repro.provenance import read_git_state
from cvtui.run_config import load_run_config
from cvtui.submit import prepare_runs, submit

FINAL = ("succeeded", "failed", "cancelled", "lost")
GIT = "/usr/bin/git"


def git(repo: Path, *args: str) -> bytes:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    return subprocess.run(
        [GIT, "-C", str(repo), *args], check=True, capture_output=True, env=env
    ).stdout


def make_repo(path: Path, files: dict[str, str]) -> Path:
    """A git work tree with files committed."""
    path.mkdir(parents=True)
    git(path, "init", "-q")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path


def write_config(code: Path, **document: Any) -> Path:
    config = {"name": code.name, "command": "python3 train.py --lr {lr}", "params": {"lr": [0.1]}}
    config.update(document)
    path = code / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def git_shim(tmp_path: Path) -> Path:
    """A `git` first on PATH that logs each call (its arguments) and runs the real one."""
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    log = tmp_path / "git-calls.log"
    shim = shim_dir / "git"
    shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {GIT} "$@"\n')
    shim.chmod(0o755)
    return log


def test_submit_calls_git_once_per_code_dir(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirty = make_repo(tmp_path / "dirty", {"train.py": "print(1)\n", "lib/model.py": "A = 1\n"})
    clean = make_repo(tmp_path / "clean", {"train.py": "print(2)\n"})
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.py").write_text("print(3)\n")
    grid = {"params": {"lr": [0.1, 0.2, 0.3, 0.4, 0.5], "seed": [1, 2, 3, 4]}}
    configs = [write_config(d, **grid) for d in (dirty, clean, plain)]
    git(clean, "add", "run.yaml")
    git(clean, "commit", "-q", "-m", "the sweep")
    fresh = make_repo(tmp_path / "fresh", {"train.py": "print(4)\n"})
    configs.append(write_config(fresh, **grid))  # only the new config is not committed
    (dirty / "lib/model.py").write_text("A = 2\n")  # a tracked file edited, not committed
    (dirty / "notes.txt").write_text("untracked\n")  # shipped, but not part of `git diff`
    expected_diff = git(dirty, "diff", "HEAD", "--binary")
    log = git_shim(tmp_path)
    monkeypatch.setenv("PATH", f"{log.parent / 'shim'}{os.pathsep}{os.environ['PATH']}")

    specs = [s for c in configs for s in load_run_config(str(c))]
    assert len(specs) == 80
    with Catalog.open_home(home) as catalog:
        run_ids = submit(catalog, home, specs)
        rows = [catalog.run_provenance(i) for i in run_ids]

    calls = [line.split() for line in log.read_text().splitlines()]
    per_dir = Counter((c[1], c[2]) for c in calls)  # (code dir, git subcommand)
    for code in (dirty, clean, plain, fresh):
        # One listing of the files to ship, one diff, and two rev-parse (the work tree's top,
        # the default code dir, when the config is read; HEAD at submit): not one per run.
        assert per_dir[(str(code), "ls-files")] == 1
        assert per_dir[(str(code), "rev-parse")] == 2
    assert all(per_dir[(str(code), "diff")] == 1 for code in (dirty, clean, fresh))
    assert len(calls) == 4 * 3 + 4 * 1 - 1  # plain: no work tree, so no diff is asked for

    by_dir: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        assert row is not None
        by_dir.setdefault(row["code_root"], []).append(row)
    assert {k: len(v) for k, v in by_dir.items()} == {
        str(dirty): 20,
        str(clean): 20,
        str(plain): 20,
        str(fresh): 20,
    }
    first = by_dir[str(dirty)][0]
    assert first["git_head"] == git(dirty, "rev-parse", "HEAD").decode().strip()
    assert first["git_dirty"] == 1
    assert BlobStore.in_home(home).read(first["git_diff_hash"]) == expected_diff
    assert b"A = 2" in expected_diff and b"notes.txt" not in expected_diff
    assert {r["git_diff_hash"] for r in by_dir[str(dirty)]} == {first["git_diff_hash"]}
    assert first["config"]["params"] == {"lr": 0.1, "seed": 1} and first["env"] == {}
    assert first["command"] == "python3 train.py --lr 0.1"
    assert first["submitted_at"] is not None and first["dispatched_at"] is None

    tidy = by_dir[str(clean)][0]
    assert tidy["git_head"] == git(clean, "rev-parse", "HEAD").decode().strip()
    assert (tidy["git_dirty"], tidy["git_diff_hash"]) == (0, None)
    # Nothing tracked changed, but the snapshot ships a file HEAD lacks: not clean.
    new_file = by_dir[str(fresh)][0]
    assert (new_file["git_dirty"], new_file["git_diff_hash"]) == (1, None)
    untracked = by_dir[str(plain)][0]
    assert (untracked["git_head"], untracked["git_dirty"], untracked["git_diff_hash"]) == (
        None,
        None,
        None,
    )
    assert untracked["code_hash"] is not None


def test_git_missing_or_no_commit_gives_nulls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_repo = tmp_path / "fresh"
    empty_repo.mkdir()
    git(empty_repo, "init", "-q")
    (empty_repo / "a.py").write_text("x\n")
    state = read_git_state(empty_repo)  # a work tree without a commit: no HEAD to name
    assert (state.head, state.dirty, state.diff) == (None, None, None)

    repo = make_repo(tmp_path / "repo", {"a.py": "x\n"})
    (repo / "a.py").write_text("y\n")
    assert read_git_state(repo).dirty is True
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git is not installed
    assert read_git_state(repo) == read_git_state(tmp_path)
    assert read_git_state(repo).head is None


def test_record_dispatch_never_raises(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    catalog = Catalog.open_home(home)
    catalog.close()  # every write now fails
    session: Any = SimpleNamespace(latest=None, hello=None)  # a session with nothing seen yet
    placement = Placement(run_id="r1", host="gpu-01", gpus=(0,))
    with caplog.at_level(logging.ERROR, logger="cvtui.engine.provenance"):
        record_dispatch(catalog, {"id": "r1", "code_hash": "0" * 32}, session, placement, "x")
    assert "run r1: provenance not recorded" in caplog.text


TRAIN = "import os, time\ntime.sleep(float(os.environ.get('SLEEP', '0')))\nprint('trained')\n"


@pytest.mark.sshd
def test_dispatch_records_host_gpus_python_and_pip_freeze(
    lab_factory: Any, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(
        LabHostSpec("gpu-01", gpus=2, model="A100-SXM4-80GB"),
        LabHostSpec("nopip", gpus=1, model="RTX-3090-24GB"),
    )
    # nopip's interpreter is a venv made without pip: its packages are listed all the same.
    venv = tmp_path / "venv-nopip"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["policy"]["interval"] = "0.5s"
    document["hosts"]["nopip"]["python"] = str(venv / "bin" / "python")
    # ... and its runs use that venv: the run environment's python is what their
    # provenance names, not the python that runs the agent.
    document["hosts"]["nopip"]["run_env"] = {"python": str(venv / "bin" / "python")}
    lab.inventory_path.write_text(yaml.safe_dump(document, sort_keys=False))
    inventory = load_inventory(lab.inventory_path)

    code = make_repo(tmp_path / "project", {"train.py": TRAIN})
    (code / "train.py").write_text(TRAIN + "print('edited')\n")
    config = write_config(code, command="{python} train.py", params={}, resources={"gpus": 1})
    expected_diff = git(code, "diff", "HEAD", "--binary")
    head = git(code, "rev-parse", "HEAD").decode().strip()

    with Catalog.open_home(home) as catalog:
        [on_gpu01] = submit(catalog, home, prepare_runs(config, inventory, hosts=["gpu-01"]))
        [on_nopip] = submit(catalog, home, prepare_runs(config, inventory, hosts=["nopip"]))
        hosts = ("gpu-01", "nopip")

        def done(engine: Any) -> bool:
            ended = all(
                (catalog.get_run(i) or {}).get("state") in FINAL for i in (on_gpu01, on_nopip)
            )
            captured = all(
                (catalog.run_provenance(i) or {}).get("python_executable")
                for i in (on_gpu01, on_nopip)
            )
            return ended and captured and all(catalog.host_environment(h) for h in hosts)

        assert asyncio.run(drive(inventory, catalog, home, done, timeout_s=60))
        first_env = {h: catalog.host_environment(h) for h in hosts}
        runs = {i: catalog.get_run(i) for i in (on_gpu01, on_nopip)}
        rows = {i: catalog.run_provenance(i) for i in (on_gpu01, on_nopip)}
        python = dict(catalog.db.execute("SELECT name, python FROM hosts").fetchall())
        manifest = catalog.run_manifest(on_gpu01)
        snapshot = catalog.snapshot_manifest(runs[on_gpu01]["code_hash"])  # type: ignore[index]

        # A second connection within the hour does not take the freeze again.
        assert asyncio.run(
            drive(
                inventory,
                catalog,
                home,
                lambda e: e is not None and all(e.answered[h].is_set() for h in hosts),
                timeout_s=30,
            )
        )
        assert {h: catalog.host_environment(h) for h in hosts} == first_env

    assert {r["state"] for r in runs.values()} == {"succeeded"}  # type: ignore[index]
    row = rows[on_gpu01]
    assert row is not None
    run = runs[on_gpu01]
    assert run is not None
    assert (row["git_head"], row["git_dirty"]) == (head, 1)
    assert BlobStore.in_home(home).read(row["git_diff_hash"]) == expected_diff
    assert row["code_hash"] == run["code_hash"] and row["code_root"] == str(code)
    assert row["host"] == "gpu-01" and row["gpus"] == run["gpus"] and len(row["gpus"]) == 1
    assert row["gpu_models"] == ["A100-SXM4-80GB" + SIMULATED_MARK]
    assert row["driver"] == "simulated"  # the simulated backend's "driver", labelled so
    # gpu-01 names no run environment: its runs' {python} is python3 on the host's PATH.
    assert Path(row["python_executable"]).name == "python3"
    assert Path(row["python_executable"]).is_absolute()
    assert row["python"] == platform_version(row["python_executable"])
    assert row["command"] == "python3 train.py"
    assert row["config"] == run["config"] and row["env"] == {}
    assert row["submitted_at"] <= row["dispatched_at"] <= time.time()
    assert manifest == {e.path: e.hash for e in snapshot or []}
    assert set(manifest) == {"train.py", "run.yaml"}

    freeze_env = first_env["gpu-01"]
    assert freeze_env is not None and freeze_env["reason"] is None
    assert python["gpu-01"] == freeze_env["python"]  # the agent's own, kept per host
    frozen = BlobStore.in_home(home).read(row["pip_freeze_hash"]).decode()
    assert "pip==" in frozen  # --all lists pip itself

    other = rows[on_nopip]
    nopip_env = first_env["nopip"]
    assert other is not None and nopip_env is not None
    assert other["gpu_models"] == ["RTX-3090-24GB" + SIMULATED_MARK]
    assert other["command"] == f"{venv / 'bin' / 'python'} train.py"
    assert other["python_executable"] == str(venv / "bin" / "python")
    assert other["pip_freeze_hash"] is not None and nopip_env["reason"] is None
    assert "pip==" not in BlobStore.in_home(home).read(other["pip_freeze_hash"]).decode()
    with Catalog.open_home(home) as catalog:
        kinds = dict(catalog.db.execute("SELECT hash, kind FROM blobs").fetchall())
    assert kinds[row["pip_freeze_hash"]] == "pip_freeze"
    assert kinds[row["git_diff_hash"]] == "diff"


def platform_version(python: str | None) -> str:
    assert python is not None
    done = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_retry_takes_its_first_attempts_submit_half(tmp_path: Path, home: Path) -> None:
    """A retry is queued by the engine, not by submit: dispatch copies the first attempt's
    code and git state, and takes GPU names from the catalog when no telemetry is at hand."""
    code = make_repo(tmp_path / "project", {"train.py": TRAIN})
    (code / "train.py").write_text(TRAIN + "# dirty\n")
    config = write_config(code, command="python3 train.py", params={})
    with Catalog.open_home(home) as catalog:
        [first_id] = submit(catalog, home, load_run_config(str(config)))
        first = catalog.get_run(first_id)
        assert first is not None
        keep = ("name", "project", "user", "priority", "command", "params", "config", "spec")
        retry = {k: first[k] for k in keep}
        retry.update(
            id="retry-1",
            resources=first["resources"],
            retries=1,
            code_hash=first["code_hash"],
            attempt=2,
            submitted=first["submitted"],
        )
        catalog.insert_runs([retry])
        with catalog._write() as conn:
            conn.execute(
                "INSERT INTO gpus (host, idx, name) VALUES ('gpu-07', 3, 'H100-SXM5-80GB')"
            )
        session: Any = SimpleNamespace(latest=None, hello=None)  # nothing heard on this connection
        placement = Placement(run_id="retry-1", host="gpu-07", gpus=(3,))
        record_dispatch(catalog, dict(catalog.get_run("retry-1") or {}), session, placement, "x y")
        row = catalog.run_provenance("retry-1")
        earlier = catalog.run_provenance(first_id)
    assert row is not None and earlier is not None
    for column in ("code_hash", "code_root", "git_head", "git_dirty", "git_diff_hash", "config"):
        assert row[column] == earlier[column], column
    assert row["git_dirty"] == 1 and row["git_diff_hash"] is not None
    assert row["gpu_models"] == ["H100-SXM5-80GB"] and row["gpus"] == [3]
    assert row["command"] == "x y" and row["python"] is None and row["pip_freeze_hash"] is None
