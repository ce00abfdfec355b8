"""`cvtui components sync`: the plan (pure), then every strategy over real sshd hosts."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.engine.lock import lock_holder
from cvtui.lab import Lab, LabHostSpec, start_lab
from cvtui.repro.blobstore import BlobStore, hash_bytes
from cvtui.repro.components import scan
from cvtui.repro.sync_plan import (
    DELETE_HOST,
    HOST_NEWER,
    HOST_ONLY,
    NOTHING,
    REMOVE_LOCAL,
    REPORT,
    SAME,
    SKIP,
    STORE_NEWER,
    STORE_ONLY,
    USE_HOST,
    WRITE_HOST,
    HostFile,
    KnownVersion,
    StoreFile,
    plan,
)

# -- the plan, without SSH ---------------------------------------------------------------------


def host_file(path: str, content: str | None, digest: str = "") -> HostFile:
    hash_ = None if content is None else hash_bytes(content.encode())
    return HostFile(path, 1, False, digest or (hash_ or "d" * 32), hash_)


def store_file(content: str, created: float = 10.0) -> StoreFile:
    return StoreFile(hash_bytes(content.encode()), 1, False, created)


def h(content: str) -> str:
    return hash_bytes(content.encode())


def seen(*contents: str, created: float = 10.0, from_host: bool = False) -> dict[str, KnownVersion]:
    return {h(c): KnownVersion(created, from_host) for c in contents}


HOST = {
    "same.py": host_file("same.py", "s"),
    "old.py": host_file("old.py", "v1"),  # the store has v2 active
    "edited.py": host_file("edited.py", "host edit"),
    "new.txt": host_file("new.txt", "only here"),
    "removed.py": host_file("removed.py", "r1"),  # deleted locally, still on the host
    "unknown.py": host_file("unknown.py", None),  # blake2b digest the store cannot name
    "kept.py": host_file("kept.py", "k host"),  # a host edit imported earlier, not adopted
    "kept.txt": host_file("kept.txt", "only here"),  # a host_only file imported earlier
    "adopted.py": host_file("adopted.py", "a host"),  # adopted once, then edited locally
}
ACTIVE = {
    "same.py": store_file("s"),
    "old.py": store_file("v2"),
    "edited.py": store_file("e1"),
    "missing.py": store_file("m"),
    "unknown.py": store_file("u"),
    "kept.py": store_file("k1"),
    "adopted.py": store_file("a local", created=30.0),
}
KNOWN = {
    "same.py": seen("s"),
    "old.py": seen("v1", "v2"),
    "edited.py": seen("e1"),
    "missing.py": seen("m"),
    "removed.py": seen("r1"),
    "unknown.py": seen("u"),
    "kept.py": seen("k1") | seen("k host", created=20.0, from_host=True),
    "kept.txt": seen("only here", created=20.0, from_host=True),
    "adopted.py": seen("a host", created=20.0, from_host=True) | seen("a local", created=30.0),
}


def by_path(strategy: str, decisions: dict[str, str] | None = None) -> dict[str, tuple[str, str]]:
    return {i.path: (i.conflict, i.action) for i in plan(HOST, ACTIVE, KNOWN, strategy, decisions)}


def test_plan_classifies_every_conflict_type() -> None:
    assert by_path("dry-run") == {
        "adopted.py": (STORE_NEWER, REPORT),  # the store moved on since it took the host's
        "edited.py": (HOST_NEWER, REPORT),
        "kept.py": (HOST_NEWER, REPORT),  # imported, but still the host's edit
        "kept.txt": (HOST_ONLY, REPORT),
        "missing.py": (STORE_ONLY, REPORT),
        "new.txt": (HOST_ONLY, REPORT),
        "old.py": (STORE_NEWER, REPORT),
        "removed.py": (STORE_NEWER, REPORT),
        "same.py": (SAME, NOTHING),
        "unknown.py": (HOST_NEWER, REPORT),
    }
    assert not any(i.import_first for i in plan(HOST, ACTIVE, KNOWN, "dry-run"))


def test_server_authoritative_makes_the_host_the_active_set_after_importing() -> None:
    items = {i.path: i for i in plan(HOST, ACTIVE, KNOWN, "server-authoritative")}
    assert {p: i.action for p, i in items.items()} == {
        "adopted.py": WRITE_HOST,
        "edited.py": WRITE_HOST,
        "kept.py": WRITE_HOST,
        "kept.txt": DELETE_HOST,
        "missing.py": WRITE_HOST,
        "new.txt": DELETE_HOST,
        "old.py": WRITE_HOST,
        "removed.py": DELETE_HOST,
        "same.py": NOTHING,
        "unknown.py": WRITE_HOST,
    }
    imports = sorted(p for p, i in items.items() if i.import_first)
    assert imports == ["edited.py", "new.txt", "unknown.py"]  # host edits are never lost
    assert not items["kept.py"].import_first  # the store already holds it


def test_local_priority_takes_host_edits_and_still_updates_the_host() -> None:
    assert by_path("local-priority") == {
        "adopted.py": (STORE_NEWER, WRITE_HOST),
        "edited.py": (HOST_NEWER, USE_HOST),
        "kept.py": (HOST_NEWER, USE_HOST),
        "kept.txt": (HOST_ONLY, USE_HOST),
        "missing.py": (STORE_ONLY, WRITE_HOST),
        "new.txt": (HOST_ONLY, USE_HOST),
        "old.py": (STORE_NEWER, WRITE_HOST),
        "removed.py": (STORE_NEWER, DELETE_HOST),
        "same.py": (SAME, NOTHING),
        "unknown.py": (HOST_NEWER, USE_HOST),
    }


def test_interactive_follows_each_decision_and_skips_the_rest() -> None:
    decisions = {"old.py": "host", "missing.py": "host", "edited.py": "store", "new.txt": "skip"}
    assert by_path("interactive", decisions) == {
        "adopted.py": (STORE_NEWER, SKIP),
        "edited.py": (HOST_NEWER, WRITE_HOST),
        "kept.py": (HOST_NEWER, SKIP),
        "kept.txt": (HOST_ONLY, SKIP),
        "missing.py": (STORE_ONLY, REMOVE_LOCAL),
        "new.txt": (HOST_ONLY, SKIP),
        "old.py": (STORE_NEWER, USE_HOST),
        "removed.py": (STORE_NEWER, SKIP),  # no decision given
        "same.py": (SAME, NOTHING),
        "unknown.py": (HOST_NEWER, SKIP),
    }
    skipped = {i.path: i for i in plan(HOST, ACTIVE, KNOWN, "interactive", {})}
    assert skipped["new.txt"].import_first  # imported even when left alone


def test_plan_rejects_an_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        plan({}, {}, {}, "newest-wins")


# -- over real sshd ------------------------------------------------------------------------------

BLAKE_HOST = "gpu-01"  # the system python3: no xxhash, the agent hashes with blake2b
XXH3_HOST = "gpu-02"  # this interpreter, which has xxhash
DOWN_HOST = "gpu-03"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One lab for the module: each test syncs its own code dir into its own workspace."""
    specs = tuple(LabHostSpec(name, gpus=1) for name in (BLAKE_HOST, XXH3_HOST, DOWN_HOST))
    lab = start_lab(tmp_path_factory.mktemp("lab"), specs)
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["hosts"][XXH3_HOST]["python"] = sys.executable
    lab.inventory_path.write_text(yaml.safe_dump(document, sort_keys=False))
    yield lab
    for server in lab.servers.values():
        server.kill()


@pytest.fixture(scope="module")
def daemon_home(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home whose engine is a `cvtui daemon`: the CLI hands it commands through the catalog.

    It stays connected, so the many syncs of these tests pay for SSH and the agent once.
    """
    home = tmp_path_factory.mktemp("daemon-home")
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
    argv += [str(lab.inventory_path), "daemon"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    with open(home / "daemon.log", "wb") as log:
        daemon = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 30
        while lock_holder(home) != daemon.pid:
            assert daemon.poll() is None, (home / "daemon.log").read_text()
            assert time.monotonic() < deadline, "the daemon did not take the engine lock"
            time.sleep(0.05)
        yield home
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


@dataclass
class Project:
    lab: Lab
    home: Path
    code: Path
    host: str

    @property
    def workspace(self) -> Path:
        return self.lab.host_dir(self.host) / "root" / "workspace" / self.code.name

    def sync(self, *args: str, input: str | None = None) -> Result:
        argv = ["--home", str(self.home), "--inventory", str(self.lab.inventory_path)]
        argv += ["components", "sync", "--host", self.host, "--dir", str(self.code), *args]
        return CliRunner().invoke(main, argv, input=input, catch_exceptions=False)

    def sync_json(self, *args: str, input: str | None = None) -> dict[str, Any]:
        done = self.sync(*args, "--json", input=input)
        assert done.exit_code == 0, done.output
        result: dict[str, Any] = json.loads(done.output[done.output.index("{") :])
        return result

    def scan(self) -> None:
        with Catalog.open_home(self.home) as catalog:
            scan(catalog, BlobStore.in_home(self.home), self.code)

    def versions(self) -> list[tuple[str, str, str, int]]:
        """(path, hash, source, active) of every version of the code dir."""
        with sqlite3.connect(self.home / "catalog.db") as conn:
            return conn.execute(
                "SELECT path, hash, source, active FROM components WHERE root = ?"
                " ORDER BY path, hash",
                (str(self.code),),
            ).fetchall()

    def active(self) -> dict[str, str]:
        return {path: hash_ for path, hash_, _, active in self.versions() if active}


def tree(top: Path) -> dict[str, tuple[bytes, bool]]:
    """rel path -> (content, executable) of every file under top."""
    return {
        p.relative_to(top).as_posix(): (p.read_bytes(), os.access(p, os.X_OK))
        for p in sorted(top.rglob("*"))
        if p.is_file()
    }


FILES = {
    "a.py": "a = 1\n",
    "b.py": "b = 1\n",
    "c.py": "c = 1\n",
    "d.py": "d = 1\n",
    "e.py": "e = 1\n",
    "tools/run.sh": "#!/bin/sh\necho run\n",
}


def project(lab: Lab, home: Path, tmp_path: Path, host: str) -> Project:
    """A scanned code dir already pushed to the host, then one file of each conflict type."""
    code = tmp_path / f"code-{tmp_path.name}"
    for rel, text in FILES.items():
        path = code / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (code / "tools/run.sh").chmod(0o755)
    proj = Project(lab, home, code, host)
    proj.scan()
    first = proj.sync_json()
    assert [i["conflict"] for i in first["items"]] == [STORE_ONLY] * len(FILES)
    assert tree(proj.workspace) == tree(code)
    assert tree(proj.workspace)["tools/run.sh"][1]  # the exec bit travels
    (proj.workspace / "a.py").unlink()  # store_only
    (code / "b.py").write_text("b = 2  # newer in the store\n")  # store_newer
    (code / "e.py").unlink()  # store_newer too: the store removed it
    proj.scan()
    (proj.workspace / "c.py").write_text("c = 'edited on the host'\n")  # host_newer
    (proj.workspace / "notes.txt").write_text("written on the host\n")  # host_only
    (proj.workspace / "__pycache__").mkdir()
    (proj.workspace / "__pycache__" / "c.cpython-38.pyc").write_bytes(b"\0")  # not code
    return proj


CONFLICTS = {
    "a.py": STORE_ONLY,
    "b.py": STORE_NEWER,
    "c.py": HOST_NEWER,
    "e.py": STORE_NEWER,
    "notes.txt": HOST_ONLY,
}
HOST_C = hash_bytes(b"c = 'edited on the host'\n")
HOST_NOTES = hash_bytes(b"written on the host\n")


@pytest.mark.sshd
@pytest.mark.parametrize("host", [BLAKE_HOST, XXH3_HOST])
def test_dry_run_changes_nothing_then_server_authoritative_imports_and_overwrites(
    lab: Lab, daemon_home: Path, tmp_path: Path, host: str
) -> None:
    proj = project(lab, daemon_home, tmp_path, host)
    before = (tree(proj.workspace), tree(proj.code), proj.versions())

    dry = proj.sync_json("--strategy", "dry-run")
    assert {i["path"]: i["conflict"] for i in dry["items"]} == CONFLICTS
    assert dry["same"] == 2  # d.py and tools/run.sh
    assert dry["algo"] == ("blake2b-128" if host == BLAKE_HOST else "xxh3_128")
    assert (tree(proj.workspace), tree(proj.code), proj.versions()) == before
    table = proj.sync("--strategy", "dry-run").output
    assert "c.py" in table and "host_newer" in table and "d.py" not in table

    done = proj.sync_json("--strategy", "server-authoritative")
    assert {i["path"]: i["action"] for i in done["items"]} == {
        "a.py": WRITE_HOST,
        "b.py": WRITE_HOST,
        "c.py": WRITE_HOST,
        "e.py": DELETE_HOST,
        "notes.txt": DELETE_HOST,
    }
    assert done["imported"] == 2
    # The host is now exactly the store's active set (= the local dir), minus what is not code.
    host_files = tree(proj.workspace)
    assert host_files.pop("__pycache__/c.cpython-38.pyc") == (b"\0", False)
    assert host_files == tree(proj.code)
    assert tree(proj.code) == before[1]  # the local dir is untouched
    # ... and the host's edits were imported first, as inactive versions from the host.
    versions = proj.versions()
    assert ("c.py", HOST_C, f"host:{host}", 0) in versions
    assert ("notes.txt", HOST_NOTES, f"host:{host}", 0) in versions
    assert BlobStore.in_home(proj.home).read(HOST_C) == b"c = 'edited on the host'\n"
    assert proj.active() == {p: h for p, h, _, a in before[2] if a}

    again = proj.sync_json()
    assert again["items"] == [] and again["same"] == len(FILES) - 1  # e.py is gone
    assert again["imported"] == 0


@pytest.mark.sshd
def test_local_priority_makes_host_edits_active_and_writes_them_locally(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own home, without a daemon: the CLI runs an engine in-process for each sync.
    proj = project(lab, tmp_path / "home", tmp_path, BLAKE_HOST)
    (proj.code / "c.py").write_text("c = 'unsaved local edit'\n")  # never scanned
    unsaved = hash_bytes(b"c = 'unsaved local edit'\n")
    monkeypatch.chdir(proj.code / "tools")  # no --dir: the scanned dir holding the cwd
    argv = ["--home", str(proj.home), "--inventory", str(lab.inventory_path), "components"]
    argv += ["sync", "--host", BLAKE_HOST, "--strategy", "local-priority", "--json"]
    done = CliRunner().invoke(main, argv, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert {i["path"]: i["action"] for i in result["items"]} == {
        "a.py": WRITE_HOST,
        "b.py": WRITE_HOST,
        "c.py": USE_HOST,
        "e.py": DELETE_HOST,
        "notes.txt": USE_HOST,
    }
    assert (proj.code / "c.py").read_text() == "c = 'edited on the host'\n"
    assert (proj.code / "notes.txt").read_text() == "written on the host\n"
    assert (proj.workspace / "a.py").read_text() == FILES["a.py"]
    assert (proj.workspace / "b.py").read_text() == "b = 2  # newer in the store\n"
    assert not (proj.workspace / "e.py").exists()
    active = proj.active()
    assert active["c.py"] == HOST_C and active["notes.txt"] == HOST_NOTES
    assert ("c.py", unsaved, "local", 0) in proj.versions()  # the local edit is kept
    host_files = tree(proj.workspace)
    host_files.pop("__pycache__/c.cpython-38.pyc")
    assert host_files == tree(proj.code)
    proj.scan()  # a scan afterwards agrees: the local dir is what the store says is active
    assert proj.active() == active


@pytest.mark.sshd
def test_interactive_asks_per_conflict_and_does_what_was_answered(
    lab: Lab, daemon_home: Path, tmp_path: Path
) -> None:
    proj = project(lab, daemon_home, tmp_path, XXH3_HOST)
    b_v1 = hash_bytes(FILES["b.py"].encode())
    # In path order: a.py, b.py, c.py, e.py, notes.txt; e.py takes the default (skip).
    done = proj.sync("--strategy", "interactive", input="store\nhost\nskip\n\nhost\n")
    assert done.exit_code == 0, done.output
    assert "c.py (host_newer: edited on the host)" in done.output
    assert (proj.workspace / "a.py").read_text() == FILES["a.py"]  # the store's version
    assert (proj.code / "b.py").read_text() == FILES["b.py"]  # the host's older version won
    assert proj.active()["b.py"] == b_v1
    assert (proj.workspace / "c.py").read_text() == "c = 'edited on the host'\n"  # skipped ...
    assert ("c.py", HOST_C, f"host:{XXH3_HOST}", 0) in proj.versions()  # ... but imported
    assert (proj.workspace / "e.py").exists() and not (proj.code / "e.py").exists()
    assert (proj.code / "notes.txt").read_text() == "written on the host\n"
    assert proj.active()["notes.txt"] == HOST_NOTES
    # A skipped host edit is still the host's edit next time, not an old store version.
    left = proj.sync_json("--strategy", "dry-run")
    assert {i["path"]: i["conflict"] for i in left["items"]} == {
        "c.py": HOST_NEWER,
        "e.py": STORE_NEWER,
    }


@pytest.mark.sshd
def test_a_remote_dir_is_synced_and_a_failed_file_fails_the_command(
    lab: Lab, daemon_home: Path, tmp_path: Path
) -> None:
    proj = project(lab, daemon_home, tmp_path, BLAKE_HOST)
    elsewhere = tmp_path / "elsewhere"
    result = proj.sync_json("--remote-dir", str(elsewhere))
    assert result["remote_dir"] == str(elsewhere)
    assert tree(elsewhere) == tree(proj.code)
    (elsewhere / "d.py").write_text("d = 'edited in the other copy'\n")
    dry = proj.sync_json("--remote-dir", str(elsewhere), "--strategy", "dry-run")
    assert [(i["path"], i["conflict"]) for i in dry["items"]] == [("d.py", HOST_NEWER)]
    assert (proj.workspace / "c.py").read_text() == "c = 'edited on the host'\n"  # untouched
    # A store version whose blob is gone cannot be written: that path fails, the rest go on.
    (proj.code / "z.py").write_text(f"z = {str(tmp_path)!r}\n")
    proj.scan()
    BlobStore.in_home(proj.home).remove(proj.active()["z.py"])
    done = proj.sync("--remote-dir", str(elsewhere))
    assert done.exit_code == 1
    assert "z.py" in done.output and "failed: blob" in done.output
    assert (elsewhere / "d.py").read_text() == FILES["d.py"]


@pytest.mark.sshd
def test_unknown_and_unreachable_hosts_are_named(lab: Lab, tmp_path: Path) -> None:
    proj = Project(lab, tmp_path / "home", tmp_path / "code", "nope")
    proj.code.mkdir()
    (proj.code / "x.py").write_text("x\n")
    proj.scan()
    unknown = proj.sync()
    assert unknown.exit_code == 2
    assert "unknown host 'nope'" in unknown.output and BLAKE_HOST in unknown.output
    lab.servers[DOWN_HOST].stop()
    proj.host = DOWN_HOST
    down = proj.sync()
    assert down.exit_code == 3, down.output
    assert down.output.startswith(f"cvtui: {DOWN_HOST}: "), down.output
    unscanned = tmp_path / "other"
    unscanned.mkdir()
    proj.host, proj.code = BLAKE_HOST, unscanned
    refused = proj.sync()
    assert refused.exit_code == 1 and "components scan" in refused.output


@pytest.mark.parametrize("host", [BLAKE_HOST, XXH3_HOST])
def test_many_files_travel_in_tars_and_arrive_whole(
    lab: Lab, daemon_home: Path, tmp_path: Path, host: str
) -> None:
    code = tmp_path / f"many-{host}"
    for index in range(300):  # over BATCH_MIN_FILES: sent as tars, checked one by one there
        path = code / f"pkg{index % 7}" / f"mod{index}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"VALUE = {index}\n" * (1 + index % 50))
    (code / "pkg0" / "mod0.py").chmod(0o755)
    proj = Project(lab, daemon_home, code, host)
    proj.scan()
    result = proj.sync_json()
    assert len(result["items"]) == 300 and not [i for i in result["items"] if i.get("error")]
    assert tree(proj.workspace) == tree(code)
    again = proj.sync_json()
    assert again["same"] == 300 and again["items"] == []
    assert not list(proj.workspace.glob(".cvtui-upload-*"))
