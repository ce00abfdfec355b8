"""`cvtui reproduce`: the exact code runs again, or nothing is queued and the reason is named."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.lab import Lab, LabHostSpec, free_port
from cvtui.mirror import run_log_path
from cvtui.paths import snapshot_archive
from cvtui.repro.blobstore import BlobStore
from cvtui.repro.reproduce import (
    ARCHIVE_DIFFERS,
    ARCHIVE_MISSING,
    ARCHIVE_PRESENT,
    plan_reproduction,
    queue_reproduction,
)
from cvtui.run_config import load_run_config
from cvtui.submit import submit


def reproduces(catalog: Catalog, run_id: str) -> str | None:
    """runs.reproduces of a run, read as the dashboard and Datasette read it."""
    row = catalog.db.execute("SELECT reproduces FROM runs WHERE id = ?", [run_id]).fetchone()
    return None if row is None else row[0]


# Prints the sha256 of its own source: which version of the file ran is in the log.
HASH_SELF = """\
import hashlib
print("sha256", hashlib.sha256(open(__file__, "rb").read()).hexdigest(), flush=True)
"""


def write_project(code: Path, **document: Any) -> Path:
    code.mkdir(parents=True, exist_ok=True)
    (code / "hash_self.py").write_text(HASH_SELF)
    config = {"name": "selfhash", "command": "python3 hash_self.py", "resources": {"gpus": 1}}
    config.update(document)
    path = code / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def count_runs(home: Path) -> int:
    with Catalog.open_home(home) as catalog:
        return len(catalog.list_runs())


@pytest.fixture
def unreachable_inventory(tmp_path: Path) -> Path:
    """One host where nothing listens: refusals must happen before any engine would start."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    path = tmp_path / "inventory.yaml"
    path.write_text(
        f"hosts:\n  gpu-01: {{address: 127.0.0.1, port: {free_port()}, known_hosts: {known}}}\n"
    )
    return path


def submitted(home: Path, config: Path) -> str:
    with Catalog.open_home(home) as catalog:
        [run_id] = submit(catalog, home, load_run_config(str(config)))
    return run_id


def invoke(home: Path, inventory: Path, *args: str) -> Any:
    argv = ["--home", str(home), "--inventory", str(inventory), *args]
    return CliRunner().invoke(main, argv)


def test_refuses_when_a_blob_is_missing_or_corrupt(
    home: Path, tmp_path: Path, unreachable_inventory: Path
) -> None:
    config = write_project(tmp_path / "project")
    run_id = submitted(home, config)
    with Catalog.open_home(home) as catalog:
        run = catalog.get_run(run_id)
        assert run is not None
        files = {e.path: e.hash for e in catalog.snapshot_manifest(run["code_hash"]) or []}
    blobs = BlobStore.in_home(home)
    script_blob = blobs.path(files["hash_self.py"])

    script_blob.unlink()
    for extra in ([], ["--dry-run"]):
        result = invoke(home, unreachable_inventory, "reproduce", run_id, *extra)
        assert result.exit_code != 0
        assert (
            f"cannot reproduce {run_id[:12]}: hash_self.py (blob {files['hash_self.py']}) "
            f"is missing from {blobs.root}" in result.stderr
        )
    assert count_runs(home) == 1

    script_blob.write_text(HASH_SELF + "# changed on disk\n")  # same name, other content
    result = invoke(home, unreachable_inventory, "reproduce", run_id)
    assert result.exit_code != 0
    assert f"hash_self.py (blob {files['hash_self.py']}) is corrupt" in result.stderr
    assert count_runs(home) == 1

    script_blob.chmod(0o600)
    script_blob.write_text(HASH_SELF)  # the right content again: now it is accepted
    result = invoke(home, unreachable_inventory, "reproduce", run_id, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "every blob verified" in result.stdout and "(dry run: nothing queued)" in result.stdout
    assert count_runs(home) == 1

    unknown = invoke(home, unreachable_inventory, "reproduce", run_id, "--host", "gpu-09")
    assert unknown.exit_code == 2 and "unknown host 'gpu-09'" in unknown.stderr
    assert count_runs(home) == 1


def test_missing_or_altered_code_tar_is_rebuilt_byte_identical(home: Path, tmp_path: Path) -> None:
    code = tmp_path / "project"
    config = write_project(code)
    (code / "run.sh").write_text("#!/bin/sh\nexec python3 hash_self.py\n")
    (code / "run.sh").chmod(0o755)
    deep = code / "models" / ("very_long_directory_name_" * 4) / "backbone_ünïcode.py"
    deep.parent.mkdir(parents=True)  # over 100 characters: the tar needs a PAX header
    deep.write_text("LAYERS = 50\n")
    run_id = submitted(home, config)
    with Catalog.open_home(home) as catalog:
        source = catalog.get_run(run_id)
        assert source is not None
        archive = snapshot_archive(home, source["code_hash"])
        original = archive.read_bytes()

        archive.unlink()
        plan = plan_reproduction(catalog, home, source)
        assert plan.archive_state == ARCHIVE_MISSING
        assert plan.manifest_from == "snapshot manifest" and len(plan.files) == 4
        new_id = queue_reproduction(catalog, home, plan)
        assert archive.read_bytes() == original

        archive.write_bytes(original[:-512] + b"x" * 512)  # altered in place
        assert plan_reproduction(catalog, home, source).archive_state == ARCHIVE_DIFFERS
        queue_reproduction(catalog, home, plan_reproduction(catalog, home, source))
        assert archive.read_bytes() == original
        assert plan_reproduction(catalog, home, source).archive_state == ARCHIVE_PRESENT

        copy = catalog.get_run(new_id)
        assert copy is not None and copy["state"] == "queued"
        assert reproduces(catalog, new_id) == run_id
        for key in ("code_hash", "command", "params", "config", "spec", "resources", "priority"):
            assert copy[key] == source[key], key
        kept = catalog.run_provenance(new_id)
        first = catalog.run_provenance(run_id)
        assert kept is not None and first is not None
        assert kept["code_hash"] == first["code_hash"] and kept["code_root"] == str(code)


def run_id_of(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout.splitlines()[0].split()[0]


def cvtui(lab: Lab, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, env=env)


@pytest.mark.sshd
def test_reproduce_runs_the_first_version_after_an_edit(
    lab_factory: Any, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1), LabHostSpec("gpu-02", gpus=1))
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["policy"]["interval"] = "0.5s"
    lab.inventory_path.write_text(yaml.safe_dump(document, sort_keys=False))
    code = tmp_path / "project"
    config = write_project(code)
    script = code / "hash_self.py"
    first_hash = sha256_of(script)

    done = cvtui(lab, home, "run", str(config), "--host", "gpu-01", "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    first = run_id_of(done)
    assert f"sha256 {first_hash}" in done.stdout

    script.write_text(HASH_SELF + "# tuned after the first run\n")
    second_hash = sha256_of(script)
    done = cvtui(lab, home, "run", str(config), "--host", "gpu-01", "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"sha256 {second_hash}" in done.stdout

    dry = cvtui(lab, home, "reproduce", first, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    with Catalog.open_home(home) as catalog:
        source = catalog.get_run(first)
        assert source is not None
    assert f"code      {source['code_hash']}" in dry.stdout
    assert "from the run manifest; every blob verified" in dry.stdout
    assert "ran on    gpu-01 GPUs [0]" in dry.stdout and "[simulated]" in dry.stdout
    assert "would queue selfhash (priority normal) on gpu-01" in dry.stdout
    assert count_runs(home) == 2

    again = cvtui(lab, home, "reproduce", first, "--follow")
    assert again.returncode == 0, again.stdout + again.stderr
    copy = run_id_of(again)
    assert f"sha256 {first_hash}" in again.stdout and second_hash not in again.stdout
    assert run_log_path(home, copy).read_text() == f"sha256 {first_hash}\n"

    # gpu-02 never received this code, and the local tar is gone: it is rebuilt from the
    # content store, byte for byte, and shipped.
    archive = snapshot_archive(home, source["code_hash"])
    original = archive.read_bytes()
    archive.unlink()
    elsewhere = cvtui(lab, home, "reproduce", first, "--host", "gpu-02", "--follow")
    assert elsewhere.returncode == 0, elsewhere.stdout + elsewhere.stderr
    assert f"sha256 {first_hash}" in elsewhere.stdout
    assert archive.read_bytes() == original
    moved = run_id_of(elsewhere)

    with Catalog.open_home(home) as catalog:
        for run_id, host in ((copy, "gpu-01"), (moved, "gpu-02")):
            row = catalog.get_run(run_id)
            assert row is not None and row["state"] == "succeeded" and row["host"] == host
            assert row["code_hash"] == source["code_hash"]
            assert reproduces(catalog, run_id) == first
            assert catalog.run_manifest(run_id) == catalog.run_manifest(first)
            kept = catalog.run_provenance(run_id)
            assert kept is not None and kept["host"] == host
            assert kept["code_hash"] == source["code_hash"] and kept["code_root"] == str(code)
        assert len(catalog.list_runs()) == 4
