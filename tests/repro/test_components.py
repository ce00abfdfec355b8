"""`cvtui components` on real code dirs (git work trees and plain dirs), real SQLite, real blobs."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.repro.blobstore import BlobStore, hash_bytes
from cvtui.repro.components import RACY_WINDOW_NS
from cvtui.run_config import load_run_config
from cvtui.submit import submit

LIST_KEYS = {
    "root",
    "path",
    "category",
    "name",
    "active",
    "size",
    "executable",
    "versions",
    "changed",
}
HISTORY_KEYS = {"root", "path", "hash", "created", "size", "executable", "source", "active", "runs"}
SCAN_KEYS = {
    "root",
    "files",
    "hashed",
    "new_versions",
    "reactivated",
    "removed",
    "skipped",
    "elapsed_ms",
}
FILES = {
    "train.py": "import models.resnet\nprint('train')\n",
    "models/resnet.py": "class ResNet:\n    depth = 50\n",
    "models/vit.py": "class ViT:\n    patch = 16\n",
    "configs/base.yaml": "lr: 0.1\n",
}


def git(repo: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def age(root: Path) -> None:
    """Date every file an hour back: a code dir as it is before today's edit (not racy)."""
    past = time.time() - 3600
    for path in root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            os.utime(path, (past, past))


def make_code(root: Path, *, use_git: bool, files: dict[str, str] = FILES) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    if use_git:
        (root / ".gitignore").write_text("outputs/\n")
        (root / "outputs").mkdir()
        (root / "outputs" / "ckpt.pt").write_bytes(b"ignored by git")
        git(root, "init", "-q")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "first")
    else:
        (root / "__pycache__").mkdir()
        (root / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"never shipped")
    age(root)
    return root


def edit(path: Path, text: str) -> None:
    path.write_text(text)
    past = time.time() - 1800
    os.utime(path, (past, past))


@pytest.fixture(autouse=True)
def _catalogs_intact(tmp_path: Path) -> Iterator[None]:
    yield
    for path in sorted(tmp_path.rglob("catalog.db")):
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path
        finally:
            conn.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def cli(home: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)


def ok_json(home: Path, *args: str) -> Any:
    done = cli(home, *args, "--json")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def scan(home: Path, directory: Path, *extra: str) -> dict[str, Any]:
    report = ok_json(home, "components", "scan", str(directory), *extra)
    assert set(report) == SCAN_KEYS
    return dict(report)


def new_paths(report: dict[str, Any]) -> list[str]:
    return [e["path"] for e in report["new_versions"]]


@pytest.mark.parametrize("use_git", [True, False], ids=["git", "plain"])
def test_second_scan_adds_nothing_and_hashes_nothing(
    tmp_path: Path, home: Path, use_git: bool
) -> None:
    code = make_code(tmp_path / "code", use_git=use_git)
    first = scan(home, code)
    expected = sorted([*FILES, ".gitignore"] if use_git else FILES)
    assert first["root"] == str(code.resolve())
    assert sorted(new_paths(first)) == expected  # ignored files and caches are left out
    assert first["files"] == first["hashed"] == len(expected) and first["removed"] == []
    second = scan(home, code)
    assert (second["files"], second["hashed"], second["new_versions"]) == (len(expected), 0, [])
    assert second["removed"] == [] and second["reactivated"] == []
    blobs = BlobStore.in_home(home)
    for entry in first["new_versions"]:
        assert blobs.read(entry["hash"]) == (code / entry["path"]).read_bytes()


@pytest.mark.parametrize("use_git", [True, False], ids=["git", "plain"])
def test_one_edit_is_one_new_version_and_the_old_one_stays_readable(
    tmp_path: Path, home: Path, use_git: bool
) -> None:
    code = make_code(tmp_path / "code", use_git=use_git)
    first = scan(home, code)
    old_hash = next(e["hash"] for e in first["new_versions"] if e["path"] == "models/resnet.py")
    edit(code / "models/resnet.py", "class ResNet:\n    depth = 101\n")
    after = scan(home, code)
    assert new_paths(after) == ["models/resnet.py"] and after["hashed"] == 1
    new_hash = after["new_versions"][0]["hash"]
    assert new_hash == hash_bytes(b"class ResNet:\n    depth = 101\n") != old_hash
    shown = cli(home, "components", "show", old_hash)
    assert shown.exit_code == 0 and shown.stdout_bytes == FILES["models/resnet.py"].encode()
    history = ok_json(home, "components", "history", str(code / "models/resnet.py"))
    assert [(v["hash"], v["active"], v["source"]) for v in history] == [
        (old_hash, False, "scan"),
        (new_hash, True, "scan"),
    ]


def test_deleted_file_has_no_active_version_but_keeps_its_history(
    tmp_path: Path, home: Path
) -> None:
    code = make_code(tmp_path / "code", use_git=True)
    scan(home, code)
    (code / "models/vit.py").unlink()
    new_text = b"untracked but not ignored: shipped\n"
    (code / "models/new.py").write_bytes(new_text)
    text = cli(home, "components", "scan", str(code)).stdout.splitlines()
    assert ", 1 new version, 1 removed, " in text[0]
    assert text[1:] == [
        f"  new {hash_bytes(new_text)[:12]}  models/new.py",
        f"  gone {'-' * 12}  models/vit.py",
    ]
    rows = {r["path"]: r for r in ok_json(home, "components", "list", "--dir", str(code))}
    assert rows["models/vit.py"]["active"] is None and rows["models/vit.py"]["versions"] == 1
    assert rows["models/new.py"]["active"] is not None
    history = ok_json(home, "components", "history", str(code / "models/vit.py"))
    assert [v["active"] for v in history] == [False]
    assert scan(home, code)["removed"] == []  # reported once


def test_edit_within_the_same_mtime_tick_is_not_missed(tmp_path: Path, home: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    target = code / "train.py"
    target.write_text("lr = 0.1\n")
    stamp = target.stat().st_mtime_ns  # fresh: within the racy window of the scan
    assert time.time_ns() - stamp < RACY_WINDOW_NS
    first = scan(home, code)
    target.write_text("lr = 0.2\n")  # same size; a coarse clock would give the same mtime
    os.utime(target, ns=(stamp, stamp))
    second = scan(home, code)
    assert new_paths(second) == ["train.py"]
    assert second["new_versions"][0]["hash"] != first["new_versions"][0]["hash"]


def test_going_back_to_known_content_reactivates_without_a_new_version(
    tmp_path: Path, home: Path
) -> None:
    code = make_code(tmp_path / "code", use_git=False)
    scan(home, code)
    edit(code / "train.py", "print('experiment')\n")
    scan(home, code)
    edit(code / "train.py", FILES["train.py"])
    (code / "configs/base.yaml").touch()  # a new mtime, the same content: no change at all
    report = scan(home, code)
    assert report["hashed"] == 2
    assert report["new_versions"] == [] and [e["path"] for e in report["reactivated"]] == [
        "train.py"
    ]
    history = ok_json(home, "components", "history", str(code / "train.py"))
    assert [v["active"] for v in history] == [True, False]


def test_activate_rolls_back_and_keeps_the_unsaved_edit(tmp_path: Path, home: Path) -> None:
    code = make_code(tmp_path / "code", use_git=True)
    script = code / "models/resnet.py"
    script.chmod(0o755)
    first = scan(home, code)
    v1 = next(e["hash"] for e in first["new_versions"] if e["path"] == "models/resnet.py")
    edit(script, "class ResNet:\n    depth = 152\n")
    script.chmod(0o644)
    v2 = scan(home, code)["new_versions"][0]["hash"]
    script.write_text("class ResNet:\n    depth = 18  # not scanned yet\n")
    unsaved = hash_bytes(script.read_bytes())
    done = cli(home, "components", "activate", str(script), v1[:8])
    assert done.exit_code == 0, done.output
    assert "saved first" in done.stdout and v1[:12] in done.stdout
    assert script.read_text() == FILES["models/resnet.py"]
    assert stat.S_IMODE(script.stat().st_mode) & 0o111 == 0o111  # v1 was executable
    history = ok_json(home, "components", "history", str(script))
    assert [(v["hash"], v["source"], v["active"]) for v in history] == [
        (v1, "scan", True),
        (v2, "scan", False),
        (unsaved, "activate", False),
    ]
    shown = cli(home, "components", "show", unsaved)
    assert shown.stdout_bytes == b"class ResNet:\n    depth = 18  # not scanned yet\n"
    after = scan(home, code)
    assert after["new_versions"] == [] and after["reactivated"] == [] and after["removed"] == []
    assert cli(home, "components", "activate", str(script), v2).exit_code == 0
    assert script.read_text() == "class ResNet:\n    depth = 152\n"
    assert stat.S_IMODE(script.stat().st_mode) & 0o111 == 0  # v2 was not
    assert [e for e in code.rglob(".*.part")] == []


def test_activate_refuses_a_hash_that_is_not_a_version_of_the_path(
    tmp_path: Path, home: Path
) -> None:
    code = make_code(tmp_path / "code", use_git=False)
    report = scan(home, code)
    other = next(e["hash"] for e in report["new_versions"] if e["path"] == "train.py")
    mine = next(e["hash"] for e in report["new_versions"] if e["path"] == "models/vit.py")
    done = cli(home, "components", "activate", str(code / "models/vit.py"), other)
    assert done.exit_code == 1
    assert f"is not a version of models/vit.py; its versions: {mine[:12]}" in done.stderr
    assert (code / "models/vit.py").read_text() == FILES["models/vit.py"]
    outside = cli(home, "components", "activate", str(tmp_path / "elsewhere.py"), other)
    assert outside.exit_code == 1 and "not in a scanned code dir" in outside.stderr


def test_activate_brings_back_a_deleted_file_and_its_dir(tmp_path: Path, home: Path) -> None:
    code = make_code(tmp_path / "code", use_git=False)
    report = scan(home, code)
    base = next(e["hash"] for e in report["new_versions"] if e["path"] == "configs/base.yaml")
    (code / "configs/base.yaml").unlink()
    (code / "configs").rmdir()
    assert scan(home, code)["removed"] == ["configs/base.yaml"]
    done = cli(home, "components", "activate", str(code / "configs/base.yaml"), base)
    assert done.exit_code == 0 and "no file" in done.stdout
    assert (code / "configs/base.yaml").read_text() == FILES["configs/base.yaml"]
    rows = {r["path"]: r for r in ok_json(home, "components", "list", "--dir", str(code))}
    assert rows["configs/base.yaml"]["active"] == base
    assert scan(home, code)["new_versions"] == []


def two_hashes_sharing_a_prefix() -> tuple[bytes, bytes, str]:
    """Two contents whose hashes start with the same 6 hex digits (a birthday search)."""
    seen: dict[str, bytes] = {}
    for index in range(200_000):
        data = f"content {index}\n".encode()
        prefix = hash_bytes(data)[:6]
        if prefix in seen:
            return seen[prefix], data, prefix
        seen[prefix] = data
    raise AssertionError("no shared prefix found")


def test_show_takes_unique_prefixes_and_names_ambiguous_or_unknown_ones(
    tmp_path: Path, home: Path
) -> None:
    first, second, prefix = two_hashes_sharing_a_prefix()
    blobs = BlobStore.in_home(home)
    with Catalog.open_home(home) as catalog:
        rows = [(blobs.put_bytes(d), len(d)) for d in (first, second)]
        catalog.record_blobs(rows, "component")
    full = hash_bytes(first)
    unique = full[: next(n for n in range(7, 33) if hash_bytes(second)[:n] != full[:n])]
    for given in (full, unique, unique.upper()):
        done = cli(home, "components", "show", given)
        assert done.exit_code == 0 and done.stdout_bytes == first
    ambiguous = cli(home, "components", "show", prefix)
    assert ambiguous.exit_code == 1 and "is ambiguous" in ambiguous.stderr
    assert (
        hash_bytes(first)[:16] in ambiguous.stderr and hash_bytes(second)[:16] in ambiguous.stderr
    )
    unknown_prefix = f"{(int(prefix[0], 16) + 1) % 16:x}{prefix[1:]}"
    unknown = cli(home, "components", "show", unknown_prefix)
    assert unknown.exit_code == 1 and "no blob in the store" in unknown.stderr
    for bad in ("abc12", "xyzxyz", ""):
        refused = cli(home, "components", "show", bad)
        assert refused.exit_code == 1 and "6 to 32 hex digits" in refused.stderr


def test_show_refuses_a_corrupt_blob_and_prints_nothing(tmp_path: Path, home: Path) -> None:
    code = make_code(tmp_path / "code", use_git=False)
    report = scan(home, code)
    hash_ = report["new_versions"][0]["hash"]
    path = BlobStore.in_home(home).path(hash_)
    path.chmod(0o600)
    path.write_bytes(b"X" + path.read_bytes()[1:])
    done = cli(home, "components", "show", hash_)
    assert done.exit_code == 1 and "corrupt" in done.stderr and done.stdout_bytes == b""


def test_list_json_shape_categories_and_roots(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = make_code(tmp_path / "code", use_git=False)
    other = make_code(tmp_path / "other", use_git=True, files={"main.py": "print(1)\n"})
    scan(home, code)
    scan(home, other)
    monkeypatch.chdir(code / "models")  # inside a scanned code dir: that one only
    rows = ok_json(home, "components", "list")
    assert all(set(r) == LIST_KEYS for r in rows)
    assert [(r["path"], r["category"], r["name"]) for r in rows] == [
        ("configs/base.yaml", "configs", "base"),
        ("models/resnet.py", "models", "resnet"),
        ("models/vit.py", "models", "vit"),
        ("train.py", ".", "train"),
    ]
    resnet = rows[1]
    assert resnet["root"] == str(code.resolve()) and resnet["versions"] == 1
    assert resnet["active"] == hash_bytes(FILES["models/resnet.py"].encode())
    assert resnet["size"] == len(FILES["models/resnet.py"]) and resnet["executable"] is False
    assert abs(resnet["changed"] - time.time()) < 60
    models = ok_json(home, "components", "list", "--category", "models")
    assert [r["path"] for r in models] == ["models/resnet.py", "models/vit.py"]
    monkeypatch.chdir(tmp_path)  # outside every code dir: all of them, grouped by root
    everything = ok_json(home, "components", "list")
    assert sorted({r["root"] for r in everything}) == sorted(
        [str(code.resolve()), str(other.resolve())]
    )
    table = cli(home, "components", "list")
    assert table.exit_code == 0
    assert f"{code.resolve()}:" in table.stdout and f"{other.resolve()}:" in table.stdout
    assert resnet["active"][:12] in table.stdout and resnet["active"] not in table.stdout
    empty = cli(home, "components", "list", "--dir", str(code), "--category", "nope")
    assert "no files in category 'nope' (categories: ., configs, models)" in empty.stdout
    never = cli(home, "components", "list", "--dir", str(tmp_path))
    assert never.exit_code == 1 and "was never scanned" in never.stderr


def test_history_names_the_runs_that_used_each_version(tmp_path: Path, home: Path) -> None:
    code = make_code(tmp_path / "code", use_git=True)
    (code / "models/copy_of_vit.py").write_text(FILES["models/vit.py"])  # same content
    age(code)
    scan(home, code)
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"name": "vit-sweep", "command": "python3 train.py", "code": str(code)})
    )
    with Catalog.open_home(home) as catalog:
        [run_id] = submit(catalog, home, load_run_config(config))
        run = catalog.get_run(run_id)
        assert run is not None
        assert catalog.write_run_manifest(run_id, run["code_hash"]) > 0
    edit(code / "models/vit.py", "class ViT:\n    patch = 14\n")
    scan(home, code)
    history = ok_json(home, "components", "history", str(code / "models/vit.py"))
    assert all(set(v) == HISTORY_KEYS for v in history)
    assert [v["source"] for v in history] == ["scan", "scan"]
    assert history[0]["runs"] == [{"id": run_id, "name": run["name"], "state": "queued"}]
    assert history[1]["runs"] == [] and history[1]["active"] is True
    assert history[0]["size"] == len(FILES["models/vit.py"])
    # The same bytes under another path are that path's version, used by the run under it.
    copy = ok_json(home, "components", "history", str(code / "models/copy_of_vit.py"))
    assert [r["id"] for r in copy[0]["runs"]] == [run_id]
    text = cli(home, "components", "history", str(code / "models/vit.py"))
    assert f"runs: {run_id[:12]} ({run['name']})" in text.stdout
    assert text.stdout.splitlines()[-1].startswith("*")  # the active version is marked


def test_scan_text_lists_at_most_twenty_paths(tmp_path: Path, home: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    for index in range(25):
        (code / f"f{index:02d}.py").write_text(f"n = {index}\n")
    done = cli(home, "components", "scan", str(code), "--exclude", "f24.py")
    assert done.exit_code == 0
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"{code.resolve()}: 24 files, 24 hashed, 24 new versions, 0 removed")
    assert sum(line.startswith("  new ") for line in lines) == 20
    assert lines[-1] == "  ... and 4 more"
    missing = cli(home, "components", "scan", str(tmp_path / "nowhere"))
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


@pytest.mark.parametrize("use_git", [True, False], ids=["git", "plain"])
def test_a_name_that_is_not_utf8_is_left_out_with_a_warning_not_a_crash(
    tmp_path: Path, home: Path, use_git: bool, caplog: pytest.LogCaptureFixture
) -> None:
    code = make_code(tmp_path / "code", use_git=use_git)
    odd = os.fsencode(code) + b"/caf\xe9.txt"
    with open(odd, "wb") as fh:
        fh.write(b"latin-1 name\n")
    age(code)
    report = scan(home, code)
    assert report["skipped"] == ["caf\\xe9.txt"]
    assert set(FILES) <= set(new_paths(report))
    assert not [p for p in new_paths(report) if "caf" in p]
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "odd", "command": "true", "code": str(code)}))
    with Catalog.open_home(home) as catalog:
        [run_id] = submit(catalog, home, load_run_config(config))
        run = catalog.get_run(run_id)
        assert run is not None
        manifest = catalog.snapshot_manifest(run["code_hash"])
        assert manifest is not None and {e.path for e in manifest} == set(new_paths(report))
    assert "caf\\xe9.txt is left out: its name is not UTF-8" in caplog.text
