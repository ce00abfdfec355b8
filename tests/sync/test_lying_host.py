"""A host that lies: every value it sends is checked at the protocol boundary, and a bad one
fails its own file alone, with a named reason, while the rest of the run syncs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cvtui.catalog import Catalog
from cvtui.engine.sync import RunSync
from remote_agent import protocol

from .sources import RUN_ID, InProcessSource

GLOBS = ["*.log", "*.csv", "*.pt"]


class LyingSource(InProcessSource):
    """The agent's real file ops, with chosen fields of chosen files' replies overwritten."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.listing_lies: dict[str, dict[str, Any]] = {}  # path -> fields in file listings
        self.reply_lies: dict[tuple[str, str], dict[str, Any]] = {}  # (op, path) -> fields

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        reply = await super().call(op, **args)
        if op in (protocol.OP_FILES_LIST, protocol.OP_FILES_WATCH):
            for entry in reply["files"]:
                entry.update(self.listing_lies.get(entry["path"], {}))
        reply.update(self.reply_lies.get((op, args.get("path", "")), {}))
        return reply


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    st = path.stat()  # aged: a file written just now is checked again (racy), not trusted
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**10))


async def test_an_absurd_size_or_mtime_in_a_listing_fails_that_file_alone(
    catalog: Catalog, home: Path, tmp_path: Path
) -> None:
    source = LyingSource(tmp_path / "host")
    run_dir = source.run_dir()
    for name in ("good.log", "negative.pt", "future.csv", "huge.pt"):
        write(run_dir / name, name.encode() * 1000)
    source.listing_lies = {
        "negative.pt": {"size": -5},
        "future.csv": {"mtime_ns": 10**30},
        "huge.pt": {"ino": "7"},
    }
    results = await RunSync(catalog, home, source, RUN_ID, GLOBS).run()
    assert [(r.path, r.status) for r in results] == [("good.log", "synced")]
    rows = {r["path"]: r for r in catalog.files_of(RUN_ID)}
    assert rows["good.log"]["sync_status"] == "synced"
    assert (home / "runs" / RUN_ID / "good.log").read_bytes() == b"good.log" * 1000
    assert rows["negative.pt"]["sync_status"] == "error"
    assert rows["negative.pt"]["reason"] == (
        "refused from the host: size -5 is out of range [0, 2^63-1]"
    )
    assert f"mtime_ns {10**30} is out of range" in rows["future.csv"]["reason"]
    assert rows["huge.pt"]["reason"] == "refused from the host: ino '7' is not an integer"
    # The host tells the truth again: those files sync on the next pass.
    source.listing_lies = {}
    await RunSync(catalog, home, source, RUN_ID, GLOBS).run()
    assert {r["sync_status"] for r in catalog.files_of(RUN_ID)} == {"synced"}


async def test_an_absurd_reply_while_a_file_is_copied_fails_that_file_alone(
    catalog: Catalog, home: Path, tmp_path: Path
) -> None:
    source = LyingSource(tmp_path / "host")
    run_dir = source.run_dir()
    write(run_dir / "model.pt", os.urandom(600_000))
    write(run_dir / "other.pt", os.urandom(600_000))
    write(run_dir / "train.log", b"line\n" * 100)
    sync = RunSync(catalog, home, source, RUN_ID, GLOBS)
    await sync.run()  # a first copy: the log is appended to from here on
    with open(run_dir / "train.log", "ab") as fh:
        fh.write(b"more\n" * 100)
    for name in ("model.pt", "other.pt"):
        with open(run_dir / name, "r+b") as fh:
            fh.write(b"changed")
    source.reply_lies = {
        (protocol.OP_FILES_SIGNATURE, "model.pt"): {"size": -5},
        (protocol.OP_FILES_HASH, "train.log"): {"mtime_ns": 10**30},
    }
    results = {r.path: r for r in await RunSync(catalog, home, source, RUN_ID, GLOBS).run()}
    assert results["other.pt"].status == "synced"
    assert (home / "runs" / RUN_ID / "other.pt").read_bytes() == (run_dir / "other.pt").read_bytes()
    assert results["model.pt"].status == "error"
    assert results["model.pt"].reason == (
        "the host sent a bad reply: size -5 is out of range [0, 2^63-1]"
    )
    assert results["train.log"].status == "error"
    assert "mtime_ns 1000000000000000000000000000000 is out of range" in (
        results["train.log"].reason or ""
    )
    source.reply_lies = {}
    results = {r.path: r for r in await RunSync(catalog, home, source, RUN_ID, GLOBS).run()}
    assert {r.status for r in results.values()} == {"synced"}
    for name in ("model.pt", "train.log"):
        assert (home / "runs" / RUN_ID / name).read_bytes() == (run_dir / name).read_bytes()
