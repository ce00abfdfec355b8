"""The workspace ops: list a host copy with content hashes, put and delete files inside it only."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import xxhash

from remote_agent import workspace
from remote_agent.agent import Agent, Options
from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_UNSAFE_PATH,
    E_WORKSPACE_CHANGED,
    OP_WORKSPACE_DELETE,
    OP_WORKSPACE_LIST,
    OP_WORKSPACE_PUT,
    RemoteError,
    WorkspaceListing,
)
from remote_agent.simulated import SimulatedBackend
from remote_agent.workspace import WorkspaceOps

SKIPS = {"skip_dirs": ["__pycache__", ".git"], "skip_suffixes": [".pyc"]}


def b2(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    top = tmp_path / "ws"
    write(top / "train.py", b"print('train')\n")
    write(top / "run.sh", b"#!/bin/sh\n", 0o755)
    write(top / "models" / "net.py", b"net = 1\n")
    write(top / "models" / "__pycache__" / "net.cpython-311.pyc", b"\0")
    write(top / "models" / "old.pyc", b"\0")
    write(top / ".git" / "HEAD", b"ref\n")
    write(top / "venv" / "pyvenv.cfg", b"home = /usr\n")
    write(top / "venv" / "lib.py", b"x\n")
    write(top / "data" / "big.bin", b"\1" * 10)
    write(top / ".cvtui-upload-0123456789abcdef", b"half an upload")
    write(tmp_path / "secret.txt", b"outside\n")
    (top / "alias.py").symlink_to("train.py")  # stays inside: followed
    (top / "leak.txt").symlink_to(tmp_path / "secret.txt")  # leaves: skipped
    (top / "models_link").symlink_to("models")  # a directory: never entered
    (top / "dangling.py").symlink_to("nowhere.py")
    write(top / os.fsdecode(b"caf\xe9.py"), b"latin\n")
    return top


def listing(ops: WorkspaceOps, top: Path, **extra: Any) -> WorkspaceListing:
    return WorkspaceListing.from_wire(ops.op_list({"dir": str(top), **SKIPS, **extra}))


def test_list_hashes_code_files_and_says_what_it_skipped(tree: Path) -> None:
    ops = WorkspaceOps()
    found = listing(ops, tree, algo="blake2b-128", exclude=["data/*"])
    assert found.exists and found.dir == str(tree) and found.algo == "blake2b-128"
    assert found.next is None
    files = {f.path: f for f in found.files}
    assert sorted(files) == ["alias.py", "models/net.py", "run.sh", "train.py"]
    assert files["train.py"].hash == b2(b"print('train')\n")
    assert files["alias.py"].hash == files["train.py"].hash and files["alias.py"].link
    assert files["run.sh"].executable and not files["train.py"].executable
    assert files["models/net.py"].size == len(b"net = 1\n")
    reasons = {s.path: s.reason for s in found.skipped}
    assert "leaves the workspace" in reasons["leak.txt"]
    assert reasons["models_link"] == "symlink to a directory"
    assert reasons["dangling.py"] == "dangling symlink"
    assert reasons["caf\\xe9.py"] == "name is not valid UTF-8"


def test_list_uses_xxh3_when_asked_and_reports_a_missing_dir(tree: Path) -> None:
    ops = WorkspaceOps()
    assert ops.algorithms[0] == "xxh3_128"  # xxhash is installed in the test environment
    found = listing(ops, tree)
    train = next(f for f in found.files if f.path == "train.py")
    assert found.algo == "xxh3_128"
    assert train.hash == xxhash.xxh3_128_hexdigest(b"print('train')\n")
    missing = listing(ops, tree / "nope")
    assert not missing.exists and missing.files == ()
    with pytest.raises(RemoteError) as refused:
        listing(ops, tree / "train.py")
    assert refused.value.code == E_BAD_REQUEST


def test_a_long_listing_comes_in_pages_that_add_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = tmp_path / "many"
    for i in range(40):
        write(top / f"d{i % 3}" / f"f{i:02}.py", f"{i}\n".encode())
    ops = WorkspaceOps()
    whole = listing(ops, top)
    monkeypatch.setattr(workspace, "PAGE_BYTES", 1000)
    pages, after = [], None
    while True:
        page = listing(ops, top, after=after)
        pages.append(page)
        if page.next is None:
            break
        after = page.next
    assert len(pages) > 3
    assert [f for p in pages for f in p.files] == list(whole.files)
    assert len(whole.files) == 40


def upload(top: Path, data: bytes, name: str = ".cvtui-upload-00112233aabbccdd") -> str:
    write(top / name, data)
    return name


def put(ops: WorkspaceOps, top: Path, path: str, data: bytes, **extra: Any) -> dict[str, Any]:
    message = {
        "dir": str(top),
        "upload": upload(top, data),
        "path": path,
        "algo": "blake2b-128",
        "hash": b2(data),
        "executable": False,
        "replaces": None,
    }
    message.update(extra)
    return ops.op_put(message)


def test_put_renames_an_upload_into_place_only_over_what_was_listed(tree: Path) -> None:
    ops = WorkspaceOps()
    put(ops, tree, "new/deep/tool.sh", b"#!/bin/sh\necho\n", executable=True)
    made = tree / "new" / "deep" / "tool.sh"
    assert made.read_bytes() == b"#!/bin/sh\necho\n" and os.access(made, os.X_OK)
    put(ops, tree, "train.py", b"v2\n", replaces=b2(b"print('train')\n"))
    assert (tree / "train.py").read_bytes() == b"v2\n"
    assert not os.access(tree / "train.py", os.X_OK)
    # The file changed since it was listed (someone edited it): refused, nothing replaced.
    with pytest.raises(RemoteError) as changed:
        put(ops, tree, "train.py", b"v3\n", replaces=b2(b"print('train')\n"))
    assert changed.value.code == E_WORKSPACE_CHANGED
    with pytest.raises(RemoteError) as exists:
        put(ops, tree, "run.sh", b"v3\n")  # replaces=None: must not exist yet
    assert exists.value.code == E_WORKSPACE_CHANGED
    with pytest.raises(RemoteError) as corrupt:
        put(ops, tree, "other.py", b"v3\n", hash=b2(b"something else"))
    assert corrupt.value.code == E_BAD_REQUEST
    assert (tree / "train.py").read_bytes() == b"v2\n" and not (tree / "other.py").exists()
    assert not list(tree.glob(".cvtui-upload-00112233*")), "a refused upload is removed"


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("../escape.py", E_UNSAFE_PATH),
        ("/etc/escape.py", E_UNSAFE_PATH),
        ("outside/escape.py", E_UNSAFE_PATH),  # through a symlinked dir that leaves
        ("leak.txt", E_UNSAFE_PATH),  # a symlink out of the workspace is never written through
    ],
)
def test_put_never_writes_outside_the_workspace(tree: Path, path: str, code: str) -> None:
    (tree / "outside").symlink_to(tree.parent)
    ops = WorkspaceOps()
    with pytest.raises(RemoteError) as refused:
        put(ops, tree, path, b"pwned\n", replaces=b2(b"outside\n"))
    assert refused.value.code == code
    assert not (tree.parent / "escape.py").exists()
    assert (tree.parent / "secret.txt").read_bytes() == b"outside\n"


def test_put_refuses_an_upload_name_that_is_not_ours(tree: Path) -> None:
    ops = WorkspaceOps()
    for name in ("train.py", "../x", ".cvtui-upload-XYZ"):
        with pytest.raises(RemoteError) as refused:
            ops.op_put({"dir": str(tree), "upload": name, "path": "a.py"})
        assert refused.value.code == E_BAD_REQUEST
    assert (tree / "train.py").exists()


def test_put_many_places_each_file_of_one_tar_on_its_own(tree: Path) -> None:
    import tarfile

    files = [
        ("pkg/a.py", b"A = 1\n", False, None),
        ("bin/run.sh", b"#!/bin/sh\necho\n", True, None),
        ("train.py", b"v2\n", False, b2(b"print('train')\n")),  # replaces what was listed
        ("run.sh", b"new\n", False, None),  # exists already: changed since listing, refused
        ("../escape.py", b"pwned\n", False, None),  # never written outside
    ]
    name = ".cvtui-upload-feedfacefeedface"
    before = set(tree.glob(".cvtui-upload-*"))
    with tarfile.open(tree / name, "w") as tar:
        for index, (_path, data, _x, _r) in enumerate(files):
            info = tarfile.TarInfo(str(index))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    items = [{"path": p, "hash": b2(d), "executable": x, "replaces": r} for p, d, x, r in files]
    items.append({"path": "ghost.py", "hash": b2(b"?"), "executable": False, "replaces": None})
    reply = WorkspaceOps().op_put_many(
        {"dir": str(tree), "upload": name, "algo": "blake2b-128", "items": items}
    )
    errors = reply["errors"]
    assert errors[:3] == [None, None, None]
    assert "changed on the host" in errors[3] and errors[4] and "no member 5" in errors[5]
    assert (tree / "pkg/a.py").read_bytes() == b"A = 1\n"
    assert os.access(tree / "bin/run.sh", os.X_OK) and (tree / "train.py").read_bytes() == b"v2\n"
    assert (tree / "run.sh").read_bytes() != b"new\n"
    assert not (tree.parent / "escape.py").exists()
    assert set(tree.glob(".cvtui-upload-*")) == before, "the tar and every part are removed"


def test_delete_removes_only_the_listed_content_and_empty_dirs(tree: Path) -> None:
    ops = WorkspaceOps()
    base = {"dir": str(tree), "algo": "blake2b-128"}
    with pytest.raises(RemoteError) as changed:
        ops.op_delete({**base, "path": "models/net.py", "hash": b2(b"older\n")})
    assert changed.value.code == E_WORKSPACE_CHANGED and (tree / "models/net.py").exists()
    write(tree / "a" / "b" / "c.py", b"c\n")
    ops.op_delete({**base, "path": "a/b/c.py", "hash": b2(b"c\n")})
    assert not (tree / "a").exists()
    ops.op_delete({**base, "path": "models/net.py", "hash": b2(b"net = 1\n")})
    assert (tree / "models").is_dir()  # still holds other files
    with pytest.raises(RemoteError) as leak:
        ops.op_delete({**base, "path": "leak.txt", "hash": b2(b"outside\n")})
    assert leak.value.code == E_UNSAFE_PATH
    assert (tree.parent / "secret.txt").exists()


def test_the_agent_serves_the_workspace_ops(tree: Path, tmp_path: Path) -> None:
    root = str(tmp_path / "root")
    agent = Agent(
        Options(root, str(tmp_path / "leases"), 1.0, {"gpus": 1}),
        SimulatedBackend.from_config({"gpus": 1}, root, "lab"),
        [],
        io.BytesIO(),
    )

    def call(op: str, **args: Any) -> dict[str, Any]:
        return agent.handle_line(json.dumps({"id": 1, "op": op, **args}).encode())

    listed = call(OP_WORKSPACE_LIST, dir=str(tree), algo="blake2b-128", **SKIPS)
    assert listed["ok"] and "train.py" in {f["path"] for f in listed["files"]}
    deleted = call(OP_WORKSPACE_DELETE, dir=str(tree), path="run.sh", hash="00" * 16)
    assert deleted["error"]["code"] == E_WORKSPACE_CHANGED
    name = upload(tree, b"x\n")
    refused = call(OP_WORKSPACE_PUT, dir=str(tree), upload=name, path="../x", hash=b2(b"x\n"))
    assert refused["error"]["code"] == E_UNSAFE_PATH
