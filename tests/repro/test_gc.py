"""`cvtui gc --unreferenced` on a real catalog, real mirror files and a real blob store."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import catalog_intact

from cvtui.catalog import Catalog
from cvtui.catalog.blobs import BLOB_REFERENCES
from cvtui.catalog.components import VersionEntry
from cvtui.catalog.run_inputs import RunInput
from cvtui.repro.blobstore import BlobStore, hash_bytes
from cvtui.repro.gc import WRITER_GRACE_S, collect_garbage, plan_gc

from .test_models import RUN_A, RUN_B, add_run, check_catalogs, cvtui, make_two_runs, sync_file

HOUR_S = 3600.0


@pytest.fixture(autouse=True)
def _catalogs_intact(tmp_path: Path) -> Iterator[None]:
    yield
    check_catalogs(tmp_path)


@pytest.fixture
def two_runs(home: Path) -> dict[str, bytes]:
    return make_two_runs(home)


def test_without_unreferenced_gc_explains_and_fails(home: Path) -> None:
    code, out = cvtui(home, "gc")
    assert code == 2
    assert "nothing references" in out and "Run: cvtui gc --unreferenced" in out


def test_a_model_deleted_while_its_run_still_has_the_file_keeps_its_blob(
    home: Path, two_runs: dict[str, bytes]
) -> None:
    assert cvtui(home, "models", "register", "a", "last.ckpt", "--name", "m")[0] == 0
    assert cvtui(home, "models", "delete", "m")[0] == 0
    digest = hash_bytes(two_runs["a/last.ckpt"])
    code, out = cvtui(home, "gc", "--unreferenced", input="y\n")
    assert code == 0, out
    assert f"kept {digest[:12]}: run {RUN_A[:12]} still has it as last.ckpt" in out
    assert "nothing to remove" in out and "Delete them?" not in out
    assert BlobStore.in_home(home).verify(digest)


def test_an_overwritten_checkpoint_is_collected_only_after_confirmation(
    home: Path, two_runs: dict[str, bytes]
) -> None:
    store = BlobStore.in_home(home)
    assert cvtui(home, "models", "register", "a", "last.ckpt", "--name", "m1")[0] == 0
    assert cvtui(home, "models", "register", "b", "last.ckpt", "--name", "m2")[0] == 0
    first = two_runs["a/last.ckpt"]
    later = os.urandom(len(first))  # same size: only the hash tells them apart
    with Catalog.open_home(home) as catalog:
        sync_file(catalog, home, RUN_A, "last.ckpt", later)  # the run saved over last.ckpt
    assert cvtui(home, "models", "delete", "m1")[0] == 0
    old = hash_bytes(first)

    code, out = cvtui(home, "gc", "--unreferenced", input="n\n")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "unreferenced blobs:"
    [listed] = [line for line in lines if old in line]
    assert listed.split()[:3] == [old, "model", "293.0KiB"]
    assert sum(len(line.split()) > 0 and len(line.split()[0]) == 32 for line in lines) == 1
    assert "total: 1 blob(s), 0 temp file(s), 293.0KiB" in out
    assert "Delete them? [y/N]: n" in out
    assert lines[-1] == "cvtui: nothing removed"
    assert store.verify(old)

    code, out = cvtui(home, "gc", "--unreferenced", input="y\n")
    assert code == 0, out
    assert "removed 1 blob(s) and 0 temp file(s), 293.0KiB freed" in out
    assert not store.has(old)
    with Catalog.open_home(home) as catalog:
        assert catalog.known_blobs([old]) == set()
        left = list(store.hashes())
        assert left == [hash_bytes(two_runs["b/last.ckpt"])]  # m2 is still registered
        assert all(store.verify(h) for h in left)
        assert catalog_intact(catalog)
    code, out = cvtui(home, "gc", "--unreferenced")
    assert code == 0 and "nothing to remove (1 blob(s) in the store)" in out


def test_json_and_yes_skip_the_question(home: Path, two_runs: dict[str, bytes]) -> None:
    assert cvtui(home, "models", "register", "b", "last.ckpt", "--name", "m")[0] == 0
    with Catalog.open_home(home) as catalog:
        sync_file(catalog, home, RUN_B, "last.ckpt", b"a new version")
    assert cvtui(home, "models", "delete", "m")[0] == 0
    code, out = cvtui(home, "gc", "--unreferenced", "--json", "--yes")
    assert code == 0
    outcome = json.loads(out)
    old = hash_bytes(two_runs["b/last.ckpt"])
    assert outcome["blobs"] == [
        {"hash": old, "size": 120_000, "kind": "model", "on_disk": True, "indexed": True}
    ]
    assert outcome["removed"] == [old]
    assert outcome["freed_bytes"] == outcome["total_bytes"] == 120_000
    assert not BlobStore.in_home(home).has(old)


def store_blob(store: BlobStore, data: bytes, *, age_s: float = 0.0) -> str:
    """Put data in the store, its file dated age_s in the past."""
    hash_ = store.put_bytes(data)
    then = time.time() - age_s
    os.utime(store.path(hash_), (then, then))
    return hash_


def record(catalog: Catalog, hash_: str, size: int, kind: str, *, age_s: float = 0.0) -> None:
    with catalog._write() as conn:
        conn.execute(
            "INSERT INTO blobs (hash, size, kind, created) VALUES (?, ?, ?, ?)",
            (hash_, size, kind, time.time() - age_s),
        )


def test_every_reference_kind_protects_its_blob(home: Path) -> None:
    """One blob per referencing column, plus each sort of garbage the store can hold."""
    store = BlobStore.in_home(home)
    old = 2 * HOUR_S
    with Catalog.open_home(home) as catalog:
        add_run(catalog, RUN_A, "a")
        named = {}
        for table, column in BLOB_REFERENCES:
            data = f"named by {table}.{column}".encode()
            named[(table, column)] = store_blob(store, data, age_s=old)
            record(catalog, named[(table, column)], len(data), "component", age_s=old)
        entry = VersionEntry("train.py", named[("components", "hash")], 27)
        catalog.record_versions("/code", [entry], "scan", activate=True)
        snap = VersionEntry("cfg.yaml", named[("snapshot_files", "hash")], 31)
        catalog.record_snapshot("s" * 32, "/code", [snap])
        with catalog._write() as conn:
            conn.execute(
                "INSERT INTO run_manifests (run_id, path, hash) VALUES (?, 'x.py', ?)",
                (RUN_A, named[("run_manifests", "hash")]),
            )
            conn.execute(
                "INSERT INTO models (name, run_id, path, hash, size, created)"
                " VALUES ('m', ?, 'last.ckpt', ?, 1, 0)",
                (RUN_A, named[("models", "hash")]),
            )
            conn.execute(
                "INSERT INTO run_provenance (run_id, git_diff_hash, pip_freeze_hash)"
                " VALUES (?, ?, ?)",
                (
                    RUN_A,
                    named[("run_provenance", "git_diff_hash")],
                    named[("run_provenance", "pip_freeze_hash")],
                ),
            )
            conn.execute(
                "INSERT INTO host_environments (host, pip_freeze_hash, taken) VALUES ('g', ?, 0)",
                (named[("host_environments", "pip_freeze_hash")],),
            )
        given = named[("run_inputs", "hash")]
        catalog.record_run_inputs(
            [RunInput(RUN_A, "w", "model", "model:m", "inputs/w/w.pt", given, 1)]
        )
        stale_component = store_blob(store, b"an old freeze nobody names", age_s=old)
        record(catalog, stale_component, 26, "pip_freeze", age_s=old)  # 26 bytes
        unindexed = store_blob(store, b"written by a writer that died", age_s=old)
        recent = store_blob(store, b"just written by a running scan")
        row_only = hash_bytes(b"a file someone deleted by hand")
        record(catalog, row_only, 30, "component", age_s=old)
        missing = hash_bytes(b"named but lost")
        with catalog._write() as conn:
            conn.execute(
                "INSERT INTO run_manifests (run_id, path, hash) VALUES (?, 'lost.py', ?)",
                (RUN_A, missing),
            )
        store.root.mkdir(exist_ok=True)
        dead_tmp = store.root / ".tmp.123.abc"
        dead_tmp.write_bytes(b"half a blob")
        os.utime(dead_tmp, (time.time() - old, time.time() - old))
        live_tmp = store.root / ".tmp.456.def"
        live_tmp.write_bytes(b"being written")

        plan = plan_gc(catalog, home)
        by_hash = {b.hash: b for b in plan.blobs}
        assert set(by_hash) == {stale_component, unindexed, row_only}
        assert (by_hash[stale_component].kind, by_hash[stale_component].on_disk) == (
            "pip_freeze",
            True,
        )
        assert (by_hash[unindexed].kind, by_hash[unindexed].indexed) == ("unindexed", False)
        assert (by_hash[row_only].on_disk, by_hash[row_only].indexed) == (False, True)
        assert [b.hash for b in plan.kept_recent] == [recent]
        assert [t.name for t in plan.temp_files] == [dead_tmp.name]
        assert plan.missing == (missing,)
        sizes = (b"an old freeze nobody names", b"written by a writer that died", b"half a blob")
        assert plan.total_bytes == sum(len(s) for s in sizes)

        code, out = cvtui(home, "gc", "--unreferenced", input="y\n")
        assert code == 0, out
        assert "1 referenced blob(s) not in the store" in out
        assert "kept 1 unreferenced blob(s) younger than 1 h" in out
        assert "row only: the file is already gone" in out
        assert "removed 3 blob(s) and 1 temp file(s)" in out
        assert not dead_tmp.exists() and live_tmp.exists()
        assert set(store.hashes()) == {*named.values(), recent}
        assert all(store.verify(h) for h in named.values())
        assert catalog.known_blobs([stale_component, row_only]) == set()
        assert catalog.known_blobs(named.values()) == set(named.values())

        later = plan_gc(catalog, home, now=time.time() + WRITER_GRACE_S + 1)
        assert [b.hash for b in later.blobs] == [recent]  # the grace has passed


def test_a_blob_named_between_listing_and_deleting_is_kept(home: Path) -> None:
    store = BlobStore.in_home(home)
    with Catalog.open_home(home) as catalog:
        add_run(catalog, RUN_A, "a")
        hash_ = store_blob(store, b"about to be used", age_s=2 * HOUR_S)
        record(catalog, hash_, 16, "snapshot", age_s=2 * HOUR_S)
        plan = plan_gc(catalog, home)
        assert [b.hash for b in plan.blobs] == [hash_]
        with catalog._write() as conn:  # a submit names it while the user reads the list
            conn.execute(
                "INSERT INTO run_manifests (run_id, path, hash) VALUES (?, 'a.py', ?)",
                (RUN_A, hash_),
            )
        result = collect_garbage(catalog, home, plan)
        assert [b.hash for b in result.kept] == [hash_] and result.removed == ()
        assert store.verify(hash_) and catalog.known_blobs([hash_]) == {hash_}


def test_an_unindexed_blob_indexed_since_listing_is_kept(home: Path) -> None:
    store = BlobStore.in_home(home)
    with Catalog.open_home(home) as catalog:
        hash_ = store_blob(store, b"a scan is recording it", age_s=2 * HOUR_S)
        plan = plan_gc(catalog, home)
        assert [(b.hash, b.indexed) for b in plan.blobs] == [(hash_, False)]
        catalog.record_blobs([(hash_, 22)], "component")
        result = collect_garbage(catalog, home, plan)
        assert result.removed == () and store.verify(hash_)


def test_a_mirror_file_of_the_same_size_but_other_content_protects_nothing(home: Path) -> None:
    store = BlobStore.in_home(home)
    data = os.urandom(50_000)
    with Catalog.open_home(home) as catalog:
        add_run(catalog, RUN_B, "b")
        sync_file(catalog, home, RUN_B, "w.pt", os.urandom(50_000))
        hash_ = store_blob(store, data)
        record(catalog, hash_, len(data), "model")
        plan = plan_gc(catalog, home)
        assert [b.hash for b in plan.blobs] == [hash_] and plan.kept_by_runs == ()
        sync_file(catalog, home, RUN_B, "copy/w2.pt", data)
        plan = plan_gc(catalog, home)
        assert plan.blobs == ()
        assert [(k.run_id, k.path) for k in plan.kept_by_runs] == [(RUN_B, "copy/w2.pt")]


@pytest.mark.parametrize("answer", ["n\n", "\n", ""])
def test_anything_but_yes_removes_nothing(
    home: Path, two_runs: dict[str, bytes], answer: str
) -> None:
    assert cvtui(home, "models", "register", "b", "last.ckpt", "--name", "m")[0] == 0
    with Catalog.open_home(home) as catalog:
        sync_file(catalog, home, RUN_B, "last.ckpt", b"newer")
    assert cvtui(home, "models", "delete", "m")[0] == 0
    code, _out = cvtui(home, "gc", "--unreferenced", input=answer)
    assert code == 1
    assert BlobStore.in_home(home).verify(hash_bytes(two_runs["b/last.ckpt"]))
