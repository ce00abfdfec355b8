"""Code snapshots: OP_UNPACK_CODE refuses hostile tarballs; each run works on its own copy."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from remote_agent_harness import AgentProcess
from run_harness import kill_runs, start, wait_state

from remote_agent.protocol import E_BAD_REQUEST, E_CODE_CHANGED, OP_UNPACK_CODE, RUN_SUCCEEDED

HASH = "0123456789abcdef0123456789abcdef"
Member = Callable[[tarfile.TarFile], None]


@pytest.fixture
def agent(root: Path) -> Iterator[AgentProcess]:
    with AgentProcess(root, simulate={"gpus": 0}, interval_s=0.05) as proc:
        proc.hello()
        yield proc


def _file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        tar.addfile(info, io.BytesIO(data))

    return add


def _special(name: str, kind: bytes, target: str = "") -> Member:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, target
        tar.addfile(info)

    return add


def _upload(root: Path, *members: Member, code_hash: str = HASH) -> str:
    """Write a tarball where the controller would upload it; its path relative to root."""
    (root / "code").mkdir(parents=True, exist_ok=True)
    relative = f"code/{code_hash}.tar.part"
    with tarfile.open(root / relative, "w:gz") as tar:
        for add in members:
            add(tar)
    return relative


def test_unpack_makes_a_read_only_snapshot_once(agent: AgentProcess, root: Path) -> None:
    archive = _upload(
        root,
        _file("train.py", b"print('v1')\n"),
        _file("run.sh", b"#!/bin/sh\ncat train.py\n", 0o755),
        _file("data/labels.txt", b"cat\ndog\n"),
        _special("latest", tarfile.SYMTYPE, "data/labels.txt"),
    )
    reply = agent.request(OP_UNPACK_CODE, hash=HASH, archive=archive)
    snapshot = root / "code" / HASH
    assert reply["path"] == str(snapshot)
    assert not (root / archive).exists()
    modes = {
        name: stat.S_IMODE((snapshot / name).lstat().st_mode)
        for name in ("train.py", "run.sh", "data", "data/labels.txt", ".")
    }
    assert modes == {  # read-only, and for the owner alone: a lab's unpublished code
        "train.py": 0o400,
        "run.sh": 0o500,
        "data": 0o500,
        "data/labels.txt": 0o400,
        ".": 0o500,
    }
    assert stat.S_IMODE((root / "code").stat().st_mode) == 0o700
    assert (snapshot / "latest").read_text() == "cat\ndog\n"
    # Another controller uploads the same snapshot: the first one stands, the upload goes.
    again = _upload(root, _file("train.py", b"print('other')\n"))
    assert agent.request(OP_UNPACK_CODE, hash=HASH, archive=again)["path"] == str(snapshot)
    assert not (root / again).exists()
    assert (snapshot / "train.py").read_text() == "print('v1')\n"
    assert sorted(p.name for p in (root / "code").iterdir()) == [HASH, HASH + ".sealed"]


NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another uid needs root")
def test_other_users_cannot_read_a_snapshot_even_under_an_open_root() -> None:
    """The worst case: a root that SFTP made 0755 under a directory anyone can enter."""
    top = Path(tempfile.mkdtemp(prefix="cvtui-uid-"))
    try:
        top.chmod(0o755)
        root = top / "root"
        root.mkdir(mode=0o755)
        root.chmod(0o755)
        (root / "public.txt").write_text("anyone\n")
        (root / "public.txt").chmod(0o644)
        archive = _upload(root, _file("secret.py", b"W = 'unpublished'\n"))
        (root / "code").chmod(0o755)
        with AgentProcess(root, simulate={"gpus": 0}, interval_s=0.05) as proc:
            proc.hello()
            proc.request(OP_UNPACK_CODE, hash=HASH, archive=archive)

        def read_as_nobody(path: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["cat", str(path)], user=NOBODY, group=NOBODY, capture_output=True, text=True
            )

        assert read_as_nobody(root / "public.txt").stdout == "anyone\n"  # the setup is fair
        denied = read_as_nobody(root / "code" / HASH / "secret.py")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    finally:
        kill_runs(top / "root")
        shutil.rmtree(top, ignore_errors=True)


def test_a_run_works_on_its_own_writable_copy_of_the_code(agent: AgentProcess, root: Path) -> None:
    archive = _upload(
        root,
        _file("train.py", b"print('v1')\n"),
        _file("run.sh", b"#!/bin/sh\necho ran\n", 0o755),
        _file("pkg/model.py", b"W = 1\n"),
        _special("link.py", tarfile.SYMTYPE, "train.py"),
    )
    agent.request(OP_UNPACK_CODE, hash=HASH, archive=archive)
    reply = start(
        agent, "cat train.py; echo 'W = 2' >> pkg/model.py; cat link.py; ./run.sh", code_hash=HASH
    )
    status = wait_state(agent, reply["run_id"])
    run_dir = Path(reply["run_dir"])
    work = Path(reply["work_dir"])
    assert status["state"] == RUN_SUCCEEDED, (run_dir / "output.log").read_text()
    assert (run_dir / "output.log").read_text() == "print('v1')\nprint('v1')\nran\n"
    assert (work / "pkg/model.py").read_text() == "W = 1\nW = 2\n"
    assert (root / "code" / HASH / "pkg/model.py").read_text() == "W = 1\n"  # snapshot as it was
    assert stat.S_IMODE((work / "train.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((work / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((work / "pkg").stat().st_mode) == 0o755
    assert (work / "link.py").is_symlink()
    # cvtui's own files sit beside the work dir, never in it.
    assert not (work / "output.log").exists() and not (work / "status.json").exists()


def test_a_start_needing_code_that_is_not_unpacked_is_refused(
    agent: AgentProcess, root: Path
) -> None:
    reply = start(agent, "true", code_hash="feedfeedfeedfeed")
    assert reply["error"]["code"] == E_BAD_REQUEST
    assert "code snapshot feedfeedfeedfeed is not unpacked" in reply["error"]["message"]
    assert not (root / "runs" / reply["run_id"]).exists()


@pytest.mark.parametrize("change", ["edit", "new file"])
def test_a_snapshot_edited_on_the_host_is_set_aside_not_run(
    agent: AgentProcess, root: Path, change: str
) -> None:
    archive = _upload(root, _file("train.py", b"print('v1')\n"), _file("pkg/model.py", b"W = 1\n"))
    agent.request(OP_UNPACK_CODE, hash=HASH, archive=archive)
    snapshot = root / "code" / HASH
    first = start(agent, "cat train.py", code_hash=HASH)
    assert wait_state(agent, first["run_id"])["state"] == RUN_SUCCEEDED
    # Someone fixes a bug in place: it takes a chmod first, which is what gives it away.
    if change == "edit":
        (snapshot / "pkg/model.py").chmod(0o644)
        (snapshot / "pkg/model.py").write_text("W = 2\n")
    else:
        (snapshot / "pkg").chmod(0o755)
        (snapshot / "pkg/extra.py").write_text("X = 1\n")
    refused = start(agent, "cat train.py", code_hash=HASH)
    assert refused["error"]["code"] == E_CODE_CHANGED
    assert "was changed on the host after it was unpacked" in refused["error"]["message"]
    assert not (root / "runs" / refused["run_id"]).exists()
    assert not snapshot.exists()
    [aside] = (root / "code").glob(f"{HASH}.changed-*")
    edited = "pkg/model.py" if change == "edit" else "pkg/extra.py"
    assert (aside / edited).exists()  # the edit is kept for whoever made it
    # The controller uploads again; the run gets exactly the code of its hash.
    again = _upload(root, _file("train.py", b"print('v1')\n"), _file("pkg/model.py", b"W = 1\n"))
    agent.request(OP_UNPACK_CODE, hash=HASH, archive=again)
    second = start(agent, "cat pkg/model.py; ls pkg", code_hash=HASH)
    assert wait_state(agent, second["run_id"])["state"] == RUN_SUCCEEDED
    assert Path(second["run_dir"], "output.log").read_text() == "W = 1\nmodel.py\n"


HOSTILE: dict[str, list[Member]] = {
    "parent": [_file("../evil")],
    "deep parent": [_file("ok/../../evil")],
    "absolute": [_file("/tmp/cvtui-test-evil")],
    "absolute link": [_special("etc", tarfile.SYMTYPE, "/etc")],
    "link up": [_special("up", tarfile.SYMTYPE, "../..")],
    "write through a link": [
        _special("a", tarfile.SYMTYPE, "x/.."),  # inside while x does not exist
        _special("x", tarfile.SYMTYPE, "."),  # inside, but now a leads out
        _file("a/evil"),
    ],
    "link turned outward later": [
        _special("a", tarfile.SYMTYPE, "x/.."),
        _special("x", tarfile.SYMTYPE, "."),
    ],
    "hard link out": [_special("h", tarfile.LNKTYPE, "../evil")],
    "device": [_special("dev", tarfile.CHRTYPE)],
    "fifo": [_special("pipe", tarfile.FIFOTYPE)],
    "twice": [_file("same"), _special("same", tarfile.SYMTYPE, "/etc/passwd")],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_unpack_refuses_hostile_archives(agent: AgentProcess, root: Path, name: str) -> None:
    archive = _upload(root, _file("fine.py"), *HOSTILE[name])
    reply = agent.request(OP_UNPACK_CODE, hash=HASH, archive=archive)
    assert reply["error"]["code"] == E_BAD_REQUEST, reply
    assert not (root / "code" / HASH).exists()
    assert [p.name for p in (root / "code").iterdir()] == [f"{HASH}.tar.part"]  # no leftovers
    assert not (root / "evil").exists() and not (root.parent / "evil").exists()
    assert not Path("/tmp/cvtui-test-evil").exists()


def test_unpack_checks_its_arguments(agent: AgentProcess, root: Path) -> None:
    archive = _upload(root, _file("fine.py"))
    for bad in (
        {"hash": "NOT-HEX", "archive": archive},
        {"hash": "../../x", "archive": archive},
        {"hash": HASH, "archive": "../../etc/passwd"},
        {"hash": HASH, "archive": "/etc/passwd"},
        {"hash": HASH, "archive": "code/missing.tar.part"},
        {"hash": HASH},
    ):
        reply = agent.request(OP_UNPACK_CODE, **bad)
        assert reply["error"]["code"] == E_BAD_REQUEST, bad
    (root / archive).write_bytes(b"this is not a tarball")
    assert agent.request(OP_UNPACK_CODE, hash=HASH, archive=archive)["error"]["code"] == (
        E_BAD_REQUEST
    )
