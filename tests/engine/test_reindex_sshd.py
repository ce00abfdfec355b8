"""`cvtui reindex` over real sshd: a deleted catalog comes back from two hosts and the mirror."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from support import running, wait_for

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.engine.lock import EngineLock
from cvtui.lab import Lab

pytestmark = pytest.mark.sshd

JOB = r"""
import json, sys
lr, code = float(sys.argv[1]), int(sys.argv[2])
with open("metrics.csv", "w") as fh:
    fh.write("step,loss,acc\n")
    for step in range(0, 50, 5):
        fh.write(f"{step},{lr / (step + 1):.6f},{step / 50:.3f}\n")
with open("events.jsonl", "w") as fh:
    for step in range(3):
        fh.write(json.dumps({"step": step, "lr": lr, "phase": "warm" if step < 2 else "main"}))
        fh.write("\n")
print("done with lr", lr, flush=True)
sys.exit(code)
"""
RUN_KEYS = ("name", "state", "exit_code", "params", "host", "gpus", "command", "config", "spec")
FILE_KEYS = ("path", "size", "synced_size", "sync_status", "hash")


def write_config(tmp_path: Path, name: str, host: str, lr: Any, code: int) -> Path:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "job.py").write_text(JOB)
    path = project / f"{name}.yaml"
    config = {
        "name": name,
        "command": "python3 job.py {lr} {code}",
        "params": {"lr": lr, "code": code},
        "resources": {"gpus": 1, "host": host},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def cvtui(lab: Lab, home: Path, *args: str, stdin: str | None = None) -> Result:
    argv = ["--home", str(home), "--inventory", str(lab.inventory_path), *args]
    return CliRunner().invoke(main, argv, input=stdin)


def snapshot(home: Path) -> dict[str, Any]:
    """Every run's row (the columns that matter), events, metric rows and file rows."""
    with Catalog.open_home(home) as catalog:
        runs = {}
        for run in catalog.list_runs():
            runs[run["id"]] = {
                "run": {key: run[key] for key in RUN_KEYS},
                "events": [e["state"] for e in catalog.run_events(run["id"])],
                "metrics": sorted(map(repr, catalog.metric_rows(run["id"]))),
                "files": sorted(
                    tuple(f[key] for key in FILE_KEYS) for f in catalog.files_of(run["id"])
                ),
            }
    return runs


def run_lab(lab: Lab, home: Path, tmp_path: Path) -> list[str]:
    """Runs on two hosts: one succeeds, one fails with exit code 3, a grid of two; all synced."""
    from cvtui.engine.engine import Engine
    from cvtui.inventory import load_inventory
    from cvtui.submit import prepare_runs, submit

    inventory = load_inventory(lab.inventory_path)
    configs = [
        write_config(tmp_path, "ok", "gpu-01", 0.5, 0),
        write_config(tmp_path, "broken", "gpu-02", 0.1, 3),
        write_config(tmp_path, "sweep", "gpu-02", [0.01, 0.02], 0),
    ]

    async def go() -> list[str]:
        with Catalog.open_home(home) as catalog:
            ids = [i for c in configs for i in submit(catalog, home, prepare_runs(c, inventory))]
            engine = Engine(inventory, catalog)
            async with running(engine.run):

                def settled() -> bool:
                    runs = [catalog.get_run(i) for i in ids]
                    return not engine.runs.pulls and all(
                        r is not None
                        and r["state"] in ("succeeded", "failed")
                        and r["sync_status"] == "synced"
                        for r in runs
                    )

                await wait_for(settled, 90)
            return ids

    return asyncio.run(go())


def delete_catalog(home: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (home / f"catalog.db{suffix}").unlink(missing_ok=True)


def test_reindex_restores_every_run_of_two_hosts(lab: Lab, home: Path, tmp_path: Path) -> None:
    ids = run_lab(lab, home, tmp_path)
    before = snapshot(home)
    assert len(before) == 4
    states = sorted(
        (r["run"]["name"], r["run"]["state"], r["run"]["exit_code"]) for r in before.values()
    )
    assert states == [
        ("broken", "failed", 3),
        ("ok", "succeeded", 0),
        ("sweep[lr=0.01]", "succeeded", 0),
        ("sweep[lr=0.02]", "succeeded", 0),
    ]
    assert all(r["metrics"] for r in before.values())

    # Reindexing a healthy catalog keeps what only it holds and sets the old file aside.
    done = cvtui(lab, home, "reindex", "--yes", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["runs"] == 4 and report["unreachable"] == {}
    assert report["backup"] and Path(report["backup"]).exists()
    assert report["kept_from_old"]["hosts"] == 2
    assert report["kept_from_old"]["run_provenance"] == 4
    assert snapshot(home) == before

    delete_catalog(home)
    done = cvtui(lab, home, "reindex", "--yes")
    assert done.exit_code == 0, done.output
    assert "4 runs" in done.output and "gpu-01: 1 runs" in done.output
    assert "gpu-02: 3 runs" in done.output
    after = snapshot(home)
    assert after == before  # states, exit codes, params, events, the same metric rows, files
    assert set(after) == set(ids)
    mode = stat.S_IMODE((home / "catalog.db").stat().st_mode)
    assert mode == 0o600
    assert not (home / "catalog.db.reindex").exists()

    # Without the mirror's records, the hosts' run dirs alone give each run back: its record
    # (run.json), status.json's state and exit code; metrics and files from the mirror.
    for run_id in ids:
        (home / "runs" / run_id / ".cvtui" / "record.json").unlink()
    delete_catalog(home)
    done = cvtui(lab, home, "reindex", "--yes")
    assert done.exit_code == 0, done.output
    from_hosts = snapshot(home)
    for run_id, run in before.items():
        again = from_hosts[run_id]
        assert again["run"] == run["run"]
        assert again["metrics"] == run["metrics"]
        assert again["events"][0] == "queued" and again["events"][-1] == run["run"]["state"]
        assert [f[:3] for f in again["files"]] == [f[:3] for f in run["files"]]


def test_a_host_down_is_named_and_its_mirrored_runs_come_back(
    lab: Lab, home: Path, tmp_path: Path
) -> None:
    run_lab(lab, home, tmp_path)
    before = snapshot(home)
    delete_catalog(home)
    lab.servers["gpu-02"].kill()
    done = cvtui(lab, home, "reindex", "--yes", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert set(report["unreachable"]) == {"gpu-02"}
    assert report["runs_by_host"] == {"gpu-01": 1, "gpu-02": 3}
    # The mirror's records carry the runs of the host that is down, as they ended.
    assert snapshot(home) == before

    # --from-mirror-only reads no host at all and gives the same catalog.
    delete_catalog(home)
    done = cvtui(lab, home, "reindex", "--yes", "--json", "--from-mirror-only")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["unreachable"] == {} and report["runs_by_host"] == {"gpu-01": 1, "gpu-02": 3}
    assert snapshot(home) == before

    # Without the mirror's record, a run that only the mirror knows is lost, and says why.
    for run_id, run in before.items():
        if run["run"]["name"] == "broken":
            (home / "runs" / run_id / ".cvtui" / "record.json").unlink()
            lost = run_id
    delete_catalog(home)
    done = cvtui(lab, home, "reindex", "--yes")
    assert done.exit_code == 0, done.output
    assert "gpu-02: not reached" in done.output
    with Catalog.open_home(home) as catalog:
        run = catalog.get_run(lost)
        assert run is not None and run["state"] == "lost"
        assert "local mirror alone" in run["reason"]
        assert {f["path"] for f in catalog.files_of(lost)} >= {"metrics.csv", "events.jsonl"}
        assert catalog.metric_rows(lost)  # parsed again from the mirrored copies


def test_a_damaged_catalog_points_at_reindex(lab: Lab, home: Path) -> None:
    with Catalog.open_home(home):
        pass
    path = home / "catalog.db"
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 2 + 512] = b"\x55" * 512  # a page of the file overwritten
    path.write_bytes(bytes(data))
    done = cvtui(lab, home, "ps")
    assert done.exit_code != 0
    assert "is damaged" in done.output and "cvtui reindex" in done.output
    assert "Traceback" not in done.output
    path.write_bytes(b"not a database at all" * 100)
    done = cvtui(lab, home, "ps")
    assert "file is not a database" in done.output and "cvtui reindex" in done.output
    done = cvtui(lab, home, "reindex", "--yes", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["old_unreadable"], report  # said, not fatal
    assert cvtui(lab, home, "ps").exit_code == 0


def test_reindex_refuses_while_an_engine_holds_the_home(lab: Lab, home: Path) -> None:
    lock = EngineLock(home)
    lock.acquire()
    try:
        done = cvtui(lab, home, "reindex", "--yes")
    finally:
        lock.release()
    assert done.exit_code != 0
    assert f"pid {os.getpid()}" in done.output and "before `cvtui reindex`" in done.output
    assert not (home / "catalog.db.reindex").exists()


def test_a_damaged_page_met_after_open_points_at_reindex(
    lab: Lab, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_lab(lab, home, tmp_path)
    path = home / "catalog.db"
    with Catalog.open_home(home) as catalog:
        catalog.checkpoint_and_close()  # the whole catalog in the file, no WAL beside it
    # The runs table's root page overwritten: met by the first read of the runs, not at open.
    with sqlite3.connect(path) as db:
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'runs'").fetchone()
    db.close()
    data = bytearray(path.read_bytes())
    data[(root - 1) * page_size : root * page_size] = b"\x55" * page_size
    path.write_bytes(bytes(data))
    # As for a catalog too large to check at open: the damage is met on reading.
    monkeypatch.setattr("cvtui.catalog.store.QUICK_CHECK_MAX_BYTES", 0)
    done = cvtui(lab, home, "ps", "--all")
    assert done.exit_code != 0
    assert "the catalog is damaged" in done.output and "cvtui reindex" in done.output
    monkeypatch.undo()
    done = cvtui(lab, home, "reindex", "--yes", "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["runs"] == 4
    assert cvtui(lab, home, "ps", "--all").exit_code == 0


def test_a_run_dir_from_before_run_json_is_read_from_its_config(
    lab: Lab, home: Path, tmp_path: Path
) -> None:
    ids = run_lab(lab, home, tmp_path)
    before = snapshot(home)
    for run_id in ids:
        (home / "runs" / run_id / ".cvtui" / "record.json").unlink()
        host = before[run_id]["run"]["host"]
        (lab.host_dir(host) / "root" / "runs" / run_id / "run.json").unlink()
    delete_catalog(home)
    done = cvtui(lab, home, "reindex", "--yes")
    assert done.exit_code == 0, done.output
    assert "read from its config.yaml" in done.output
    after = snapshot(home)
    for run_id, run in before.items():
        again = after[run_id]["run"]
        assert again["params"] == run["run"]["params"]
        assert again["config"] == run["run"]["config"]
        assert (again["state"], again["exit_code"]) == (
            run["run"]["state"],
            run["run"]["exit_code"],
        )
        assert run["run"]["name"].startswith(again["name"])  # a grid point's name is its config's
        assert after[run_id]["metrics"] == run["metrics"]


def test_runs_of_another_controller_sharing_the_host_roots_are_left_out(
    lab: Lab, home: Path, tmp_path: Path
) -> None:
    """Two homes run on the same host accounts (a lab's common login); each reindex restores
    its own runs only, by the controller id its engine stamped on each run's record."""
    other = tmp_path / "other-home"
    for project in ("theirs", "ours"):
        (tmp_path / project).mkdir()
    theirs = run_lab(lab, other, tmp_path / "theirs")
    ours = run_lab(lab, home, tmp_path / "ours")
    before = snapshot(home)
    assert (home / "controller.id").read_text() != (other / "controller.id").read_text()
    assert stat.S_IMODE((home / "controller.id").stat().st_mode) == 0o600
    delete_catalog(home)
    done = cvtui(lab, home, "reindex", "--yes", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["other_controllers_runs"] == {"gpu-01": 1, "gpu-02": 3}
    assert sorted(snapshot(home)) == sorted(ours) and snapshot(home) == before
    with Catalog.open_home(other) as catalog:  # the other home is untouched
        assert sorted(r["id"] for r in catalog.list_runs()) == sorted(theirs)
    text = cvtui(lab, home, "reindex", "--yes")
    assert "gpu-02: 3 run dirs of another controller sharing its root, left out" in text.output
