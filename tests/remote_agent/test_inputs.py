"""The agent's input store: an upload is kept under its content hash only when it hashes to
the digest the controller sent; staged into a work dir as a link or a private copy."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import xxhash

from remote_agent.inputs import InputOps, stage_inputs
from remote_agent.protocol import (
    E_BAD_INPUT,
    E_BAD_REQUEST,
    E_INPUT_CORRUPT,
    E_NO_SUCH_FILE,
    INPUTS_DIR,
    RemoteError,
)

DATA = os.urandom(70_000)
NAME = xxhash.xxh3_128_hexdigest(DATA)
B2 = hashlib.blake2b(DATA, digest_size=16).hexdigest()


def upload(root: Path, data: bytes, suffix: str = "0123abcd") -> str:
    folder = root / INPUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{NAME}.{suffix}.part"
    (folder / name).write_bytes(data)
    return name


def test_an_upload_is_kept_only_when_it_hashes_to_the_digest(tmp_path: Path) -> None:
    ops = InputOps(str(tmp_path))
    stored = tmp_path / INPUTS_DIR / NAME
    ask = {"hash": NAME, "size": len(DATA)}
    assert ops.op_stage(ask) == {"path": str(stored), "present": False}

    # One flipped byte in transit: refused, named, and nothing kept.
    bad = bytearray(DATA)
    bad[1000] ^= 0xFF
    name = upload(tmp_path, bytes(bad))
    with pytest.raises(RemoteError) as refused:
        ops.op_stage({**ask, "algo": "blake2b-128", "digest": B2, "upload": name})
    assert refused.value.code == E_INPUT_CORRUPT
    assert f"not {B2}" in refused.value.message
    assert list((tmp_path / INPUTS_DIR).iterdir()) == []

    # A short upload is refused before it is even hashed.
    name = upload(tmp_path, DATA[:-1])
    with pytest.raises(RemoteError) as short:
        ops.op_stage({**ask, "algo": "blake2b-128", "digest": B2, "upload": name})
    assert short.value.code == E_INPUT_CORRUPT and "69999 bytes, not 70000" in short.value.message

    name = upload(tmp_path, DATA)
    reply = ops.op_stage({**ask, "algo": "blake2b-128", "digest": B2, "upload": name})
    assert reply == {"path": str(stored), "present": True}
    assert stored.read_bytes() == DATA
    assert stat.S_IMODE(stored.stat().st_mode) == 0o400
    assert [p.name for p in (tmp_path / INPUTS_DIR).iterdir()] == [NAME]  # the upload, renamed
    assert ops.op_stage(ask)["present"] is True  # known now: no upload asked again


@pytest.mark.parametrize(
    "bad",
    [
        {"hash": "../etc", "size": 1},
        {"hash": NAME, "size": -1},
        {"hash": NAME, "size": 1, "upload": "../x.0123abcd.part"},
        {"hash": NAME, "size": 1, "upload": f"{NAME}.0123abcd.part", "algo": "md5"},
    ],
)
def test_malformed_stage_requests_are_refused(tmp_path: Path, bad: dict[str, object]) -> None:
    upload(tmp_path, b"x")
    with pytest.raises(RemoteError) as refused:
        InputOps(str(tmp_path)).op_stage(bad)
    assert refused.value.code == E_BAD_REQUEST


def test_inputs_are_linked_or_copied_into_the_work_dir(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / INPUTS_DIR).mkdir(parents=True)
    (root / INPUTS_DIR / NAME).write_bytes(DATA)
    work = tmp_path / "work"
    (work / "checkpoints").mkdir(parents=True)
    copied, linked = stage_inputs(
        str(work),
        str(root),
        [
            {"path": "inputs/ckpt/best.pt", "hash": NAME, "copy": False},
            {"path": "checkpoints/step_0008.pt", "hash": NAME, "copy": True},
        ],
    )
    link = work / "inputs" / "ckpt" / "best.pt"
    assert link.is_symlink() and link.readlink() == root / INPUTS_DIR / NAME
    copy = work / "checkpoints" / "step_0008.pt"
    assert not copy.is_symlink() and copy.read_bytes() == DATA
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600  # the run may rewrite its checkpoint
    st = copy.stat()
    assert copied == {"checkpoints/step_0008.pt": [st.st_size, st.st_mtime_ns]}
    assert linked == ["inputs/ckpt/best.pt"]


def test_an_input_missing_on_the_host_or_colliding_with_the_code_refuses_the_start(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(RemoteError) as missing:
        stage_inputs(str(work), str(root), [{"path": "w.pt", "hash": NAME, "copy": False}])
    assert missing.value.code == E_NO_SUCH_FILE and "is not on this host" in missing.value.message
    (root / INPUTS_DIR).mkdir(parents=True)
    (root / INPUTS_DIR / NAME).write_bytes(DATA)
    (work / "w.pt").write_bytes(b"the code's own")
    with pytest.raises(RemoteError) as collides:
        stage_inputs(str(work), str(root), [{"path": "w.pt", "hash": NAME, "copy": True}])
    assert collides.value.code == E_BAD_INPUT
    assert (work / "w.pt").read_bytes() == b"the code's own"
    for unsafe in ("../w.pt", "/etc/passwd", ".cvtui/output.log"):
        with pytest.raises(RemoteError):
            stage_inputs(str(work), str(root), [{"path": unsafe, "hash": NAME, "copy": True}])
