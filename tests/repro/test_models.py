"""`cvtui models` on a real catalog, real mirror files and a real blob store; end to end on sshd."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from support import add_finished_run, catalog_intact

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.lab import Lab, LabHostSpec
from cvtui.mirror import Mirror
from cvtui.repro.blobstore import BlobStore, hash_bytes
from cvtui.repro.models import ModelError, model_path

RUN_A = "01hzzmodel0test0run000000a"
RUN_B = "01hzzmodel0test0run000000b"


def check_catalogs(root: Path) -> None:
    """Every catalog under root passes PRAGMA integrity_check."""
    for path in sorted(root.rglob("catalog.db")):
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path
        finally:
            conn.close()


@pytest.fixture(autouse=True)
def _catalogs_intact(tmp_path: Path) -> Iterator[None]:
    yield
    check_catalogs(tmp_path)


def add_run(catalog: Catalog, run_id: str, name: str) -> None:
    """A run that ran on gpu-01 and succeeded, as the engine leaves it."""
    add_finished_run(catalog, run_id, name)


def sync_file(
    catalog: Catalog, home: Path, run_id: str, path: str, data: bytes, status: str = "synced"
) -> Path:
    """Write a mirror file and its files row the way a finished sync records them."""
    local = Mirror(home, run_id).prepare(path)
    tmp = local.with_name(local.name + ".new")
    tmp.write_bytes(data)
    tmp.replace(local)  # a sync lands a new version by rename: a new inode
    st = local.stat()
    catalog.set_file(
        run_id,
        path,
        sync_status=status,
        size=len(data),
        synced_size=len(data),
        strategy="whole",
        hash=f"xxh3_128:{hash_bytes(data)}",
        local_mtime_ns=st.st_mtime_ns,
        local_ino=st.st_ino,
        synced_at=time.time(),
        reason=None if status == "synced" else "the host has a newer version",
    )
    return local


def cvtui(home: Path, *args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args], input=input)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture
def two_runs(home: Path) -> dict[str, bytes]:
    return make_two_runs(home)


def make_two_runs(home: Path) -> dict[str, bytes]:
    """Runs a (RUN_A) and b (RUN_B) with synced checkpoints; returns the files' contents."""
    contents = {
        "a/last.ckpt": os.urandom(300_000),
        "a/ckpt/best.pt": os.urandom(70_000),
        "b/last.ckpt": os.urandom(120_000),
    }
    with Catalog.open_home(home) as catalog:
        add_run(catalog, RUN_A, "a")
        add_run(catalog, RUN_B, "b")
        sync_file(catalog, home, RUN_A, "last.ckpt", contents["a/last.ckpt"])
        sync_file(catalog, home, RUN_A, "ckpt/best.pt", contents["a/ckpt/best.pt"])
        sync_file(catalog, home, RUN_B, "last.ckpt", contents["b/last.ckpt"])
        sync_file(catalog, home, RUN_B, "train.log", b"step 1\n", status="outdated")
    return contents


def test_register_list_download_delete(home: Path, two_runs: dict[str, bytes], tmp_path: Path):
    code, out = cvtui(
        home, "models", "register", "a", "ckpt/best.pt", "--name", "resnet", "--tag", "best"
    )
    assert code == 0, out
    digest = hash_bytes(two_runs["a/ckpt/best.pt"])
    assert out.startswith("registered model resnet: run 01hzzmodel0t (a) ckpt/best.pt")
    assert digest[:12] in out
    assert BlobStore.in_home(home).verify(digest)

    code, out = cvtui(home, "models", "list", "--json")
    [model] = json.loads(out)
    assert model["created"] == pytest.approx(time.time(), abs=60)
    assert {k: v for k, v in model.items() if k != "created"} == {
        "name": "resnet",
        "tags": ["best"],
        "run_id": RUN_A,
        "run_name": "a",
        "path": "ckpt/best.pt",
        "size": 70_000,
        "hash": digest,
    }
    code, out = cvtui(home, "models", "list")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "TAGS", "RUN", "PATH", "SIZE", "HASH", "CREATED"]
    assert row.split()[:6] == ["resnet", "best", RUN_A[:12], "a", "ckpt/best.pt", "68.4KiB"]
    assert digest[:12] in row.split()

    target = tmp_path / "out" / "deep"  # created on demand
    code, out = cvtui(home, "models", "download", "resnet", "--to", str(target))
    assert code == 0, out
    assert out.strip() == str(target / "best.pt")
    assert (target / "best.pt").read_bytes() == two_runs["a/ckpt/best.pt"]
    code, out = cvtui(home, "models", "download", "resnet", "--to", str(target))
    assert code == 0 and "already there, identical" in out

    (target / "best.pt").write_bytes(b"someone else's file")
    code, out = cvtui(home, "models", "download", "resnet", "--to", str(target))
    assert code == 1
    assert "exists with other content (--force overwrites it)" in out
    assert (target / "best.pt").read_bytes() == b"someone else's file"
    code, out = cvtui(home, "models", "download", "resnet", "--to", str(target), "--force")
    assert code == 0
    assert (target / "best.pt").read_bytes() == two_runs["a/ckpt/best.pt"]

    code, out = cvtui(home, "models", "delete", "resnet")
    assert code == 0 and "blob" in out and "kept" in out
    assert json.loads(cvtui(home, "models", "list", "--json")[1]) == []
    assert "no models registered" in cvtui(home, "models", "list")[1]
    assert BlobStore.in_home(home).verify(digest)  # deleting a model never deletes its blob
    with Catalog.open_home(home) as catalog:
        assert catalog.known_blobs([digest]) == {digest}


def test_download_defaults_to_the_current_dir(
    home: Path, two_runs: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cvtui(home, "models", "register", RUN_B, "last.ckpt", "--name", "b")[0] == 0
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, out = cvtui(home, "models", "download", "b")
    assert code == 0, out
    assert (here / "last.ckpt").read_bytes() == two_runs["b/last.ckpt"]


def test_a_name_is_unique_unless_force_re_points_it(home: Path, two_runs: dict[str, bytes]):
    assert cvtui(home, "models", "register", "a", "last.ckpt", "--name", "m")[0] == 0
    code, out = cvtui(home, "models", "register", "b", "last.ckpt", "--name", "m")
    assert code == 1
    assert out.strip() == "cvtui: model 'm' already exists (--force re-points it)"
    code, out = cvtui(home, "models", "register", "b", "last.ckpt", "--name", "m", "--force")
    assert code == 0, out
    old, new = hash_bytes(two_runs["a/last.ckpt"]), hash_bytes(two_runs["b/last.ckpt"])
    assert out.startswith(f"re-pointed model m from {old[:12]} to run {RUN_B[:12]} (b)")
    [model] = json.loads(cvtui(home, "models", "list", "--json")[1])
    assert (model["run_id"], model["hash"], model["size"]) == (RUN_B, new, 120_000)
    store = BlobStore.in_home(home)
    assert store.verify(old) and store.verify(new)  # the old blob stays for gc to judge


def test_only_a_synced_intact_file_can_be_registered(home: Path, two_runs: dict[str, bytes]):
    code, out = cvtui(home, "models", "register", "b", "train.log", "--name", "x")
    assert code == 1
    assert out.strip() == (
        f"cvtui: train.log of run {RUN_B[:12]} is outdated (the host has a newer version), "
        f"not synced; run: cvtui sync {RUN_B[:12]}"
    )
    code, out = cvtui(home, "models", "register", "b", "nope.pt", "--name", "x")
    assert code == 1
    assert f"run {RUN_B[:12]} (b) has no synced file 'nope.pt'" in out
    assert f"run: cvtui sync {RUN_B[:12]}" in out

    mirror_file = Mirror(home, RUN_A).path("last.ckpt")
    mirror_file.write_bytes(b"edited in the mirror by hand")
    code, out = cvtui(home, "models", "register", "a", "last.ckpt", "--name", "x")
    assert code == 1
    assert "changed since it was synced; run: cvtui sync" in out
    mirror_file.unlink()
    code, out = cvtui(home, "models", "register", "a", "last.ckpt", "--name", "x")
    assert code == 1 and "is missing; run: cvtui sync" in out

    code, out = cvtui(home, "models", "register", "nobody", "last.ckpt", "--name", "x")
    assert code == 1 and "no run matches 'nobody'" in out
    assert not list(BlobStore.in_home(home).hashes())
    assert json.loads(cvtui(home, "models", "list", "--json")[1]) == []


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ("../a/last.ckpt", "leaves the run dir"),
        ("ckpt/../../x", "leaves the run dir"),
        ("/etc/passwd", "is absolute"),
        ("./", "names the run dir"),
        ("", "is empty"),
    ],
)
def test_paths_that_leave_the_run_dir_are_refused(
    home: Path, two_runs: dict[str, bytes], given: str, problem: str
) -> None:
    code, out = cvtui(home, "models", "register", "a", given, "--name", "x")
    assert code == 1
    assert problem in out
    assert not list(BlobStore.in_home(home).hashes())


def test_model_path_normalises_dot_and_empty_parts() -> None:
    assert model_path("./ckpt//best.pt") == "ckpt/best.pt"
    assert model_path("last.ckpt") == "last.ckpt"
    with pytest.raises(ModelError, match="leaves the run dir"):
        model_path("a/../../b")


def test_names_and_tags_are_checked(home: Path, two_runs: dict[str, bytes]) -> None:
    code, out = cvtui(home, "models", "register", "a", "last.ckpt", "--name", " padded")
    assert code == 1 and "model name ' padded' must be printable" in out
    code, out = cvtui(home, "models", "register", "a", "last.ckpt", "--name", "m", "--tag", "a\nb")
    assert code == 1 and "tag 'a\\nb'" in out
    code, out = cvtui(
        home, "models", "register", "a", "last.ckpt", "--name", "m", "--tag", "x", "--tag", "x"
    )
    assert code == 0
    assert json.loads(cvtui(home, "models", "list", "--json")[1])[0]["tags"] == ["x"]


def test_unknown_names_are_one_line_errors(home: Path, two_runs: dict[str, bytes]) -> None:
    assert cvtui(home, "models", "register", "a", "last.ckpt", "--name", "m")[0] == 0
    for command in ("download", "delete"):
        code, out = cvtui(home, "models", command, "other")
        assert code == 1
        assert out.strip() == "cvtui: no model named 'other' (models: m)"


def test_a_missing_or_corrupt_blob_is_not_downloaded(
    home: Path, two_runs: dict[str, bytes], tmp_path: Path
) -> None:
    assert cvtui(home, "models", "register", "a", "last.ckpt", "--name", "m")[0] == 0
    blob = BlobStore.in_home(home).path(hash_bytes(two_runs["a/last.ckpt"]))
    blob.chmod(0o600)
    blob.write_bytes(b"bit rot")
    code, out = cvtui(home, "models", "download", "m", "--to", str(tmp_path / "d"))
    assert code == 1 and "is corrupt" in out
    assert not (tmp_path / "d" / "last.ckpt").exists()
    blob.unlink()
    code, out = cvtui(home, "models", "download", "m", "--to", str(tmp_path / "d"))
    assert code == 1 and "is missing" in out
    assert list((tmp_path / "d").iterdir()) == []  # no part file left behind


# -- end to end over real sshd -------------------------------------------------------------

CHECKPOINTS = r"""
import os, sys, time
def save(data):
    with open("last.tmp", "wb") as fh:
        fh.write(data)
    os.rename("last.tmp", "last.ckpt")  # a sync never sees half a checkpoint
save(os.urandom(400_000))
deadline = time.time() + 60
while not os.path.exists("go") and time.time() < deadline:
    time.sleep(0.05)
save(os.urandom(400_000))
print("done", flush=True)
"""


def cli(
    lab: Lab, home: Path, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, input=input)


def wait_until(predicate: Callable[[], object], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.sshd
def test_a_synced_checkpoint_registered_downloaded_then_collected(
    lab_factory, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    code_dir = tmp_path / "project"
    code_dir.mkdir()
    (code_dir / "train.py").write_text(CHECKPOINTS)
    config = code_dir / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "ckpt", "command": "python3 train.py"}))
    started = cli(lab, home, "run", str(config))
    assert started.returncode == 0, started.stderr
    run_id = started.stdout.split()[0]
    remote = lab.host_dir("gpu-01") / "root" / "runs" / run_id / "work"
    wait_until(lambda: (remote / "last.ckpt").exists())
    first = (remote / "last.ckpt").read_bytes()

    synced = cli(lab, home, "sync", run_id)
    assert synced.returncode == 0, synced.stderr
    done = cli(
        lab, home, "models", "register", "ckpt", "last.ckpt", "--name", "m1", "--tag", "best"
    )
    assert done.returncode == 0, done.stderr
    done = cli(lab, home, "models", "download", "m1", "--to", str(tmp_path / "dl"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "dl" / "last.ckpt").read_bytes() == first

    (remote / "go").write_text("")  # the run saves its next checkpoint over last.ckpt and ends
    wait_until(lambda: b"done" in (remote.parent / "output.log").read_bytes())
    synced = cli(lab, home, "sync", run_id)
    assert synced.returncode == 0, synced.stderr
    second = (remote / "last.ckpt").read_bytes()
    assert second != first
    assert (home / "runs" / run_id / "last.ckpt").read_bytes() == second

    assert cli(lab, home, "models", "delete", "m1").returncode == 0
    store = BlobStore.in_home(home)
    old = hash_bytes(first)
    assert store.verify(old)  # delete keeps the blob
    declined = cli(lab, home, "gc", "--unreferenced", input="n\n")
    assert declined.returncode == 1
    assert old in declined.stdout and "cvtui: nothing removed" in declined.stderr
    assert store.verify(old)
    listed = cli(lab, home, "gc", "--unreferenced", "--json", input="y\n")
    assert listed.returncode == 0, listed.stderr
    outcome = json.loads(listed.stdout)
    assert [b["hash"] for b in outcome["blobs"]] == [old] and outcome["removed"] == [old]
    assert outcome["blobs"][0]["kind"] == "model"
    assert not store.has(old)
    with Catalog.open_home(home) as catalog:
        assert catalog.known_blobs([old]) == set()
        left = list(store.hashes())
        assert left  # the code snapshot's files (train.py, run.yaml) stay
        assert all(store.verify(h) for h in left)
        assert catalog.known_blobs(left) == set(left)
        assert catalog_intact(catalog)
    again = cli(lab, home, "gc", "--unreferenced")
    assert again.returncode == 0 and "nothing to remove" in again.stdout
