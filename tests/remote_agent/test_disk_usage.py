"""Disk usage per top-level dir and owner: the real agent, its real scan child, a real tree."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from remote_agent_harness import AgentProcess, python38

from remote_agent.disk_usage import (
    NOT_REACHED,
    DirUsage,
    PathUsage,
    TreeWalk,
    owner_name,
    path_usage_from_wire,
    read_cache,
    scan_path,
)

SETPRIV = shutil.which("setpriv")


@pytest.fixture(params=["current", "3.8"])
def python(request: pytest.FixtureRequest) -> str:
    return sys.executable if request.param == "current" else python38()


def write(path: Path, size: int, uid: int) -> None:
    path.write_bytes(os.urandom(size))  # random: no filesystem stores it sparse or compressed
    os.chown(path, uid, uid)


def allocated(*paths: Path) -> int:
    return sum(os.lstat(p).st_blocks * 512 for p in paths)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """/top/alice (uid 1000) with a hard link and a symlink out; /top/bob (uid 1001)."""
    top = tmp_path / "top"
    alice, bob = top / "alice", top / "bob"
    (alice / "sub").mkdir(parents=True)
    bob.mkdir()
    write(alice / "sub" / "weights.pt", 96 * 1024, 1000)
    os.link(alice / "sub" / "weights.pt", alice / "weights-again.pt")  # counted once
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside / "big.bin", 512 * 1024, 0)
    (alice / "outside").symlink_to(outside)  # never followed
    write(bob / "log.txt", 20 * 1024, 1001)
    for path in (alice, alice / "sub", alice / "outside"):
        os.chown(path, 1000, 1000, follow_symlinks=False)
    os.chown(bob, 1001, 1001)
    yield top


def ask(agent: AgentProcess, paths: list[str], **args: Any) -> dict[str, Any]:
    reply = agent.request("disk_usage", paths=paths, **args)
    assert reply.get("ok") is True, reply
    return reply


def wait_scanned(agent: AgentProcess, paths: list[str], **args: Any) -> list[PathUsage]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reply = ask(agent, paths, **args)
        if not reply["scanning"] and len(reply["paths"]) == len(paths):
            return [path_usage_from_wire(item) for item in reply["paths"]]
        time.sleep(0.05)
    raise AssertionError(f"no scan result: {reply}")


def test_usage_per_top_level_dir_and_owner(tmp_path: Path, tree: Path, python: str) -> None:
    root = tmp_path / "root"
    with AgentProcess(root, python=python) as agent:
        agent.hello()
        first = ask(agent, [str(tree)], budget_s=30)
        assert first["paths"] == [] and first["scanning"] is True  # answered before any scan
        (usage,) = wait_scanned(agent, [str(tree)])
    assert usage.path == str(tree) and not usage.partial and usage.error == ""
    alice, bob = usage.entries
    assert (alice.name, alice.uid, alice.owner) == ("alice", 1000, owner_name(1000))
    assert (bob.name, bob.uid, bob.owner) == ("bob", 1001, owner_name(1001))
    sub = tree / "alice" / "sub"
    # The dirs, the file once (its hard link adds nothing), the symlink itself, not its target.
    expected = allocated(tree / "alice", sub, sub / "weights.pt", tree / "alice" / "outside")
    assert alice.bytes == expected >= 96 * 1024
    assert alice.bytes < 512 * 1024  # the big file behind the symlink is not counted
    assert alice.files == 3  # weights.pt, weights-again.pt, the symlink
    assert bob.bytes == allocated(tree / "bob", tree / "bob" / "log.txt") and bob.files == 1
    assert not alice.partial and alice.reason == "" and alice.scanned_at <= usage.scanned_at
    assert read_cache(str(root))[str(tree)] == usage

    # A restarted agent answers from the cache and does not scan again within the hour.
    with AgentProcess(root, python=python) as agent:
        agent.hello()
        again = ask(agent, [str(tree)])
    assert again["scanning"] is False
    assert [path_usage_from_wire(item) for item in again["paths"]] == [usage]


def test_a_budget_of_zero_gives_partial_results(tmp_path: Path, tree: Path) -> None:
    root = tmp_path / "root"
    with AgentProcess(root) as agent:
        agent.hello()
        ask(agent, [str(tree), "/no/such/dir"], budget_s=0)
        usage, missing = wait_scanned(agent, [str(tree), "/no/such/dir"])
        assert usage.partial and [e.name for e in usage.entries] == ["alice", "bob"]
        assert all(e.partial and e.reason == NOT_REACHED and e.bytes == 0 for e in usage.entries)
        assert missing.error.startswith("cannot read /no/such/dir") and missing.partial

        ask(agent, [str(tree)], rescan_after_s=0, budget_s=30)  # due at once: scans again
        (full,) = wait_scanned(agent, [str(tree)])
        assert not full.partial
        # Over budget again: the figures of the last full scan are kept, each with its own age.
        ask(agent, [str(tree)], rescan_after_s=0, budget_s=0)
        time.sleep(0.5)
        (kept,) = wait_scanned(agent, [str(tree)])
    assert kept.scanned_at > full.scanned_at and kept.partial
    for old, new in zip(full.entries, kept.entries, strict=True):
        assert (new.bytes, new.files, new.scanned_at) == (old.bytes, old.files, old.scanned_at)
        assert new.partial and "earlier scan" in new.reason


@pytest.mark.skipif(SETPRIV is None, reason="needs setpriv to drop root's capabilities")
def test_an_unreadable_dir_is_partial_with_its_reason(
    tmp_path: Path, tree: Path, python: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to own the tree as other uids")
    locked = tree / "alice" / "private"
    locked.mkdir(mode=0o700)
    os.chown(locked, 1000, 1000)
    root = tmp_path / "root"
    # Root without its capabilities reads like any user: uid 1000's 0700 dir is closed to it.
    argv = [str(SETPRIV), "--bounding-set=-all", "--inh-caps=-all", python, "-m", "remote_agent"]
    argv += ["serve", "--root", str(root), "--leases-dir", str(tmp_path / "leases")]
    with AgentProcess(root, argv=argv) as agent:
        agent.hello()
        ask(agent, [str(tree)], budget_s=30)
        (usage,) = wait_scanned(agent, [str(tree)])
        agent.request("ping")  # still serving
    alice, bob = usage.entries
    assert alice.partial and alice.reason == f"permission denied: {locked}"
    assert alice.bytes > 0 and not bob.partial and usage.partial


def test_telemetry_keeps_flowing_while_a_big_tree_is_scanned(tmp_path: Path) -> None:
    top = tmp_path / "big"
    for index in range(6000):
        leaf = top / f"user{index % 3}" / f"d{index // 50}" / f"e{index}"
        leaf.mkdir(parents=True)
        for name in ("a", "b", "c", "d"):
            (leaf / name).write_bytes(b"x")
    with AgentProcess(tmp_path / "root", interval_s=0.05) as agent:
        agent.hello()
        agent.drain_events()
        asked = time.monotonic()
        first = ask(agent, [str(top)], budget_s=0.01)
        answered_s = time.monotonic() - asked
        (usage,) = wait_scanned(agent, [str(top)])
        # Watch at least half a second (ten intervals), however quickly the budget ended it.
        time.sleep(max(0.0, asked + 0.5 - time.monotonic()))
        scanned = time.monotonic()
        times = []
        while not agent.events.empty():
            message = agent.events.get_nowait()
            if message.get("event") == "telemetry":
                times.append(message["time"])
    assert first["scanning"] is True and answered_s < 1.0
    assert usage.partial  # 24,000 files and 6,000 dirs do not fit 10 ms
    assert any("time budget ran out" in e.reason or e.reason == NOT_REACHED for e in usage.entries)
    # Samples every 50 ms all through the scan: no gap longer than a few intervals.
    assert len(times) >= max(3, (scanned - asked) / 0.05 * 0.5)
    assert max(b - a for a, b in itertools.pairwise(times)) < 0.5


def test_scan_visits_entries_oldest_first_and_keeps_the_rest(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_bytes(b"x" * 5000)
    ticks = iter(range(10_000))
    before = PathUsage(
        str(tmp_path),
        100.0,
        (
            DirUsage("a", 0, "root", 11, 1, 50.0),  # the oldest figure of the two known
            DirUsage("b", 0, "root", 22, 1, 90.0),
        ),
    )
    # A clock read twice per entry that runs out after 4: `c` (never scanned), `a` (oldest) fit.
    walk = TreeWalk(deadline=4, clock=lambda: next(ticks))
    usage = scan_path(str(tmp_path), before, walk)
    a, b, c = usage.entries
    assert not c.partial and c.bytes > 0
    assert not a.partial and a.bytes > 11 and a.scanned_at > 50.0
    assert (b.bytes, b.scanned_at, b.partial) == (22, 90.0, True)
    assert usage.partial


def test_wire_form_is_checked() -> None:
    good = PathUsage("/home", 1.0, (DirUsage("x", 1, "x", 2, 3, 4.0),)).to_wire()
    assert path_usage_from_wire(good).entries[0].files == 3
    bad = {**good, "entries": [{**good["entries"][0], "bytes": "many"}]}
    with pytest.raises(ValueError, match="'bytes' is str"):
        path_usage_from_wire(bad)
    with pytest.raises(ValueError, match="not an object"):
        path_usage_from_wire([])


def test_a_name_that_is_not_utf8_is_shown_with_a_replacement(tmp_path: Path) -> None:
    (tmp_path / os.fsdecode(b"caf\xe9")).mkdir()  # Latin-1, from another locale
    usage = scan_path(str(tmp_path), None, TreeWalk(time.monotonic() + 30))
    assert [e.name for e in usage.entries] == ["caf\ufffd"]
    assert path_usage_from_wire(json.loads(json.dumps(usage.to_wire()))) == usage


def test_bad_arguments_are_refused_and_the_agent_serves_on(tmp_path: Path) -> None:
    with AgentProcess(tmp_path / "root") as agent:
        agent.hello()
        for args in ({"paths": "/home"}, {"paths": ["home"]}, {"paths": ["/h"], "budget_s": -1}):
            reply = agent.request("disk_usage", **args)
            assert reply["error"]["code"] == "bad_request", reply
        assert agent.request("ping").get("ok") is True
        assert not (tmp_path / "root" / "disk_usage.json").exists()  # nothing was scanned
