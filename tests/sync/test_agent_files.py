"""The agent's file ops on real files: listing with safe names, block signatures, ranges, watch."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cvtui.engine import delta
from remote_agent.blocktree import (
    ALGO_BLAKE2B,
    ALGO_SHA1,
    ALGO_SHA256,
    ALGO_XXH3,
    DIGEST_BYTES,
    GROUP_BLOCKS,
    block_size_for,
    leaf_digests,
)
from remote_agent.files import FileOps
from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_NO_SUCH_FILE,
    E_UNSAFE_PATH,
    EVENT_FILES,
    RUN_LOG,
    SIGNATURE_CHANGED,
    SIGNATURE_READY,
    WORK_DIR,
    FileListing,
    RemoteError,
)

RUN = "01hzzfilesops000000000000a"
GLOBS = ["*.csv", "*.log", "*.pt", "*.txt", "data/*.bin"]
REPO = Path(__file__).resolve().parents[2]


class Sent:
    """The agent's send(): events land here, from the watch thread."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, message: dict[str, Any]) -> bool:
        with self.lock:
            self.events.append(message)
        return True

    def wait(self, accept: Any, timeout_s: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                for message in self.events:
                    if accept(message):
                        self.events.remove(message)
                        return message
            time.sleep(0.02)
        raise AssertionError(f"no matching event within {timeout_s} s: {self.events}")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root" / "runs" / RUN / WORK_DIR).mkdir(parents=True)
    return tmp_path / "root"


@pytest.fixture
def run_dir(root: Path) -> Path:
    """The run's work dir: output paths are relative to it."""
    return root / "runs" / RUN / WORK_DIR


@pytest.fixture
def sent() -> Sent:
    return Sent()


@pytest.fixture
def ops(root: Path, sent: Sent) -> FileOps:
    return FileOps(str(root), sent)


def call(ops: FileOps, op: str, **args: Any) -> dict[str, Any]:
    return ops.ops[op]({"id": 1, "op": op, "run_id": RUN, **args})


def listing(ops: FileOps, globs: list[str] = GLOBS) -> FileListing:
    return FileListing.from_wire(call(ops, "files_list", globs=globs))


def test_listing_matches_globs_at_any_depth_and_reports_what_it_skips(
    ops: FileOps, run_dir: Path, tmp_path: Path
) -> None:
    (run_dir / "metrics.csv").write_text("step,loss\n")
    (run_dir / "sub" / "deep").mkdir(parents=True)
    (run_dir / "sub" / "deep" / "eval.csv").write_text("x\n")
    (run_dir / "empty.log").write_bytes(b"")
    (run_dir / "line\nbreak.txt").write_text("odd name")
    (run_dir / "code.py").write_text("not an output")
    (run_dir / "data").mkdir()
    (run_dir / "data" / "a.bin").write_bytes(b"1")
    (run_dir / "inner.log").symlink_to("metrics.csv")
    (run_dir / "passwd.txt").symlink_to("/etc/passwd")
    (run_dir / "dangling.log").symlink_to("nowhere.log")
    (run_dir / "outside").symlink_to(tmp_path)  # a directory link: never walked into
    os.mkfifo(run_dir / "pipe.log")
    (run_dir / os.fsdecode(b"caf\xe9.csv")).write_text("latin-1 name")

    found = listing(ops)
    files = {f.path: f for f in found.files}
    assert sorted(files) == [
        "data/a.bin",
        "empty.log",
        "inner.log",
        "line\nbreak.txt",
        "metrics.csv",
        "sub/deep/eval.csv",
    ]
    assert files["empty.log"].size == 0
    assert files["inner.log"].link and files["inner.log"].size == len("step,loss\n")
    skipped = {s.path: s.reason for s in found.skipped}
    assert skipped == {
        "passwd.txt": "symlink to /etc/passwd leaves the run dir",
        "dangling.log": "dangling symlink",
        "pipe.log": "not a regular file",
        "caf\\xe9.csv": "name is not valid UTF-8",
    }
    assert not found.truncated
    # The whole listing crosses the wire as JSON.
    assert FileListing.from_wire(json.loads(json.dumps(found.to_wire()))) == found


def test_listing_stops_at_its_limit_and_says_so(ops: FileOps, run_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr("remote_agent.outputs.MAX_LISTED_FILES", 5)
    for n in range(9):
        (run_dir / f"{n}.log").write_text("x")
    found = listing(ops)
    assert len(found.files) == 5 and found.truncated


@pytest.mark.parametrize("algo", [ALGO_XXH3, ALGO_BLAKE2B, ALGO_SHA256, ALGO_SHA1])
def test_signature_matches_what_the_controller_computes(
    ops: FileOps, run_dir: Path, algo: str
) -> None:
    data = os.urandom(3 * GROUP_BLOCKS * block_size_for(0) + 12345)
    (run_dir / "model.pt").write_bytes(data)
    reply = call(ops, "files_signature", path="model.pt", algo=algo, wait=5)
    assert reply["state"] == SIGNATURE_READY
    block = block_size_for(len(data))
    leaves = leaf_digests(io.BytesIO(data), len(data), block, algo)
    mine = delta.Tree(len(data), block, algo, leaves)
    assert reply["digest"] == mine.digest.hex()
    assert base64.b64decode(reply["groups"]) == mine.groups
    assert reply["group_count"] == 4 and reply["size"] == len(data)

    page = call(
        ops,
        "files_signature",
        path="model.pt",
        algo=algo,
        groups_from=1,
        groups_count=2,
        leaves_of=[3, 1],
    )
    assert base64.b64decode(page["groups"]) == mine.groups[DIGEST_BYTES : 3 * DIGEST_BYTES]
    step = GROUP_BLOCKS * DIGEST_BYTES
    assert base64.b64decode(page["leaves"]["1"]) == leaves[step : 2 * step]
    assert base64.b64decode(page["leaves"]["3"]) == leaves[3 * step :]


def test_signature_of_an_empty_file(ops: FileOps, run_dir: Path) -> None:
    (run_dir / "empty.pt").write_bytes(b"")
    reply = call(ops, "files_signature", path="empty.pt", algo=ALGO_BLAKE2B)
    assert reply["state"] == SIGNATURE_READY and reply["group_count"] == 0
    assert reply["digest"] == delta.Tree(0, block_size_for(0), ALGO_BLAKE2B, b"").digest.hex()


def test_a_file_changing_while_hashed_is_reported_changed(ops: FileOps, run_dir: Path) -> None:
    path = run_dir / "growing.pt"
    path.write_bytes(os.urandom(96 << 20))

    def touch() -> None:
        time.sleep(0.02)
        with open(path, "ab") as fh:
            fh.write(b"more")

    toucher = threading.Thread(target=touch)
    toucher.start()
    reply = call(ops, "files_signature", path="growing.pt", algo=ALGO_BLAKE2B, wait=2)
    toucher.join()
    assert reply["state"] == SIGNATURE_CHANGED
    again = call(ops, "files_signature", path="growing.pt", algo=ALGO_BLAKE2B, wait=2)
    assert again["state"] == SIGNATURE_READY and again["size"] == (96 << 20) + 4


def test_hash_ranges_and_past_the_end(ops: FileOps, run_dir: Path) -> None:
    (run_dir / "a.log").write_bytes(b"0123456789")
    reply = call(
        ops, "files_hash", path="a.log", algo=ALGO_BLAKE2B, ranges=[[0, 4], [8, 2], [8, 3]]
    )
    expect = [hashlib.blake2b(b, digest_size=16).hexdigest() for b in (b"0123", b"89")]
    assert reply["digests"] == [*expect, None]
    assert reply["size"] == 10


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("../../../etc/passwd", E_UNSAFE_PATH),
        ("/etc/passwd", E_UNSAFE_PATH),
        ("a/./b.log", E_UNSAFE_PATH),
        ("link.log", E_UNSAFE_PATH),
        ("missing.log", E_NO_SUCH_FILE),
        ("", E_BAD_REQUEST),
    ],
)
def test_paths_that_leave_the_run_dir_are_refused(
    ops: FileOps, run_dir: Path, path: str, code: str
) -> None:
    (run_dir / "link.log").symlink_to("/etc/hostname")
    with pytest.raises(RemoteError) as raised:
        call(ops, "files_hash", path=path, algo=ALGO_BLAKE2B, ranges=[[0, 1]])
    assert raised.value.code == code


def test_bad_arguments_are_bad_requests(ops: FileOps, run_dir: Path) -> None:
    (run_dir / "a.log").write_bytes(b"x")
    bad = [
        ("files_list", {"globs": "*.log"}),
        ("files_list", {"globs": ["*.log"], "run_id": "../x"}),
        ("files_hash", {"path": "a.log", "algo": "md5", "ranges": [[0, 1]]}),
        ("files_hash", {"path": "a.log", "algo": ALGO_BLAKE2B, "ranges": [[0, -1]]}),
        ("files_signature", {"path": "a.log", "algo": ALGO_BLAKE2B, "block_size": 1000}),
        ("files_signature", {"path": "a.log", "algo": ALGO_BLAKE2B, "leaves_of": [5]}),
    ]
    for op, args in bad:
        with pytest.raises(RemoteError) as raised:
            ops.ops[op]({"id": 1, "op": op, "run_id": RUN, **args})
        assert raised.value.code == E_BAD_REQUEST, (op, args)
    with pytest.raises(RemoteError) as raised:
        ops.ops["files_list"]({"id": 1, "op": "files_list", "run_id": "0123456789abc", "globs": []})
    assert raised.value.code == E_NO_SUCH_FILE


def test_watch_pushes_growth_new_files_and_removals(
    ops: FileOps, run_dir: Path, sent: Sent
) -> None:
    (run_dir / "metrics.csv").write_text("step,loss\n")
    first = call(ops, "files_watch", globs=GLOBS)
    assert [f["path"] for f in first["files"]] == ["metrics.csv"]
    with open(run_dir / "metrics.csv", "a") as fh:
        fh.write("1,0.5\n")
    grew = sent.wait(lambda m: m["event"] == EVENT_FILES and m["files"])
    assert grew["run_id"] == RUN and grew["files"][0]["size"] == len("step,loss\n1,0.5\n")
    (run_dir / "new.log").write_text("hi")
    sent.wait(lambda m: [f["path"] for f in m["files"]] == ["new.log"], timeout_s=3)
    (run_dir / "new.log").unlink()
    sent.wait(lambda m: m["removed"] == ["new.log"], timeout_s=3)
    assert call(ops, "files_watch", globs=GLOBS, watch=False) == {}
    time.sleep(0.3)
    with sent.lock:
        sent.events.clear()
    (run_dir / "after.log").write_text("unwatched")
    time.sleep(1.5)
    assert sent.events == []


def test_the_served_agent_answers_file_ops(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "runs" / RUN / WORK_DIR).mkdir(parents=True)
    (root / "runs" / RUN / "output.log").write_text("hello\n")
    (root / "runs" / RUN / WORK_DIR / "output.log").write_text("the script's own\n")
    agent = subprocess.Popen(
        [sys.executable, "-m", "remote_agent", "serve", "--root", str(root), "--leases-dir",
         str(tmp_path / "leases"), "--simulate", '{"gpus": 1}', "--interval", "60"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert agent.stdin is not None and agent.stdout is not None
        hello = json.loads(agent.stdout.readline())
        assert ALGO_BLAKE2B in hello["hash_algorithms"]
        globs = ["*.log", RUN_LOG]
        request = {"id": 7, "op": "files_list", "run_id": RUN, "globs": globs}
        agent.stdin.write(json.dumps(request).encode() + b"\n")
        agent.stdin.flush()
        while True:
            reply = json.loads(agent.stdout.readline())
            if reply.get("id") == 7:
                break
        # cvtui's log and the script's own output.log, apart.
        assert reply["ok"] and reply["base"] == WORK_DIR
        assert sorted((f["path"], f["size"]) for f in reply["files"]) == [
            (RUN_LOG, 6),
            ("output.log", 17),
        ]
    finally:
        agent.kill()
        agent.wait()


def test_a_run_dir_from_before_work_dirs_lists_its_outputs_not_cvtuis_files(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    old = root / "runs" / RUN
    old.mkdir(parents=True)
    for name in ("status.json", "config.yaml", "supervisor.log", "output.log", "metrics.csv"):
        (old / name).write_text(name)
    ops = FileOps(str(root), lambda message: True)
    listing = call(ops, "files_list", globs=["*.csv", "*.yaml", "*.log", RUN_LOG])
    assert listing["base"] == ""
    assert sorted(f["path"] for f in listing["files"]) == [RUN_LOG, "metrics.csv"]
    digests = call(ops, "files_hash", path=RUN_LOG, algo=ALGO_BLAKE2B, ranges=[[0, 10]])
    assert digests["size"] == len("output.log")
    with pytest.raises(RemoteError, match="not a file of cvtui's"):
        call(ops, "files_hash", path=".cvtui/status.json", algo=ALGO_BLAKE2B, ranges=[])
