"""A big new file streamed whole (files_send: read once on the host, hashed as sent), and the
hash both sides agree on (files_algorithms): the agent's op, the stream's parser, and sync."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvtui.catalog import Catalog
from cvtui.engine import delta
from cvtui.engine.file_stream import (
    SEGMENT_BYTES,
    PartWriter,
    SendParser,
    StreamFailed,
    StreamHeader,
    parse_header,
    pieces_leaves,
    write_pieces,
)
from cvtui.engine.host_files import HostGone, choose_algorithm, local_speeds
from cvtui.engine.sync import RunSync
from cvtui.engine.transfer import STREAM_MIN_BYTES
from remote_agent import sendfile
from remote_agent.blocktree import (
    ALGO_BLAKE2B,
    ALGO_SHA1,
    ALGO_SHA256,
    ALGO_XXH3,
    DIGEST_BYTES,
    block_size_for,
    buffer_leaves,
    hash_function,
    leaf_digests,
    new_hasher,
    rank_algorithms,
)
from remote_agent.files import FileOps
from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_NO_SUCH_FILE,
    E_SEND_BUSY,
    E_UNSAFE_PATH,
    ProtocolError,
    RemoteError,
)
from remote_agent.sendfile import SendOps

from .sources import RUN_ID, InProcessSource

GLOBS = ["*.pt"]
BIG = STREAM_MIN_BYTES + 3 * 1024 * 1024 + 777  # streamed, and not a whole number of blocks


def read_fifo(fifo: str) -> bytes:
    return subprocess.run(["cat", fifo], capture_output=True, check=True, timeout=30).stdout


def split_stream(raw: bytes) -> tuple[dict[str, Any], bytes, dict[str, Any]]:
    """(header, file bytes, trailer) of what files_send wrote into its FIFO."""
    first = raw.index(b"\n")
    header = json.loads(raw[:first])
    body = raw[first + 1 : first + 1 + header["size"]]
    trailer = json.loads(raw[first + 1 + header["size"] :])
    return header, body, trailer


@pytest.fixture
def send_ops(source: InProcessSource) -> SendOps:
    return source.send_ops


def send(ops: SendOps, path: str, algo: str = ALGO_SHA256) -> dict[str, Any]:
    return ops.op_send({"id": 1, "op": "files_send", "run_id": RUN_ID, "path": path, "algo": algo})


# -- the agent's op ------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", [ALGO_SHA256, ALGO_BLAKE2B, ALGO_SHA1])
def test_send_streams_the_file_and_the_digest_of_exactly_those_bytes(
    source: InProcessSource, send_ops: SendOps, algo: str
) -> None:
    data = os.urandom(5 * 1024 * 1024 + 12345)
    (source.run_dir() / "model.pt").write_bytes(data)
    reply = send(send_ops, "model.pt", algo)
    fifo = Path(reply["fifo"])
    assert reply["size"] == len(data)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and fifo.lstat().st_mode & 0o777 == 0o600
    header, body, trailer = split_stream(read_fifo(str(fifo)))
    assert body == data and header["algo"] == algo and header["size"] == len(data)
    block = block_size_for(len(data))
    leaves = leaf_digests(io.BytesIO(data), len(data), block, algo)
    assert trailer == {
        "digest": delta.Tree(len(data), block, algo, leaves).digest.hex(),
        "changed": False,
        "error": None,
    }
    deadline = time.monotonic() + 5
    while fifo.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not fifo.exists()  # removed once the reader had it


def test_a_file_cut_while_sent_is_padded_and_said_changed(
    source: InProcessSource, send_ops: SendOps
) -> None:
    path = source.run_dir() / "model.pt"
    path.write_bytes(os.urandom(12 * 1024 * 1024))
    reply = send(send_ops, "model.pt")
    with subprocess.Popen(["cat", reply["fifo"]], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None
        first = cat.stdout.read(1024)  # the sender is under way, holding a 4 MiB chunk at most
        os.truncate(path, 1000)
        raw = first + cat.stdout.read()
    header, body, trailer = split_stream(raw)
    assert len(body) == header["size"] == 12 * 1024 * 1024
    assert body.endswith(bytes(1024))  # what was no longer there came as zeros
    assert trailer["changed"] is True and "ended at byte" in trailer["error"]


def test_send_refusals_are_error_replies_and_leave_no_fifo(
    source: InProcessSource, send_ops: SendOps, tmp_path: Path
) -> None:
    (source.run_dir() / "model.pt").write_bytes(b"x" * 100)
    (source.run_dir() / "link.pt").symlink_to("/etc/passwd")
    cases = [
        ("missing.pt", ALGO_SHA256, E_NO_SUCH_FILE),
        ("link.pt", ALGO_SHA256, E_UNSAFE_PATH),
        ("../../x.pt", ALGO_SHA256, E_UNSAFE_PATH),
        ("model.pt", "md5", E_BAD_REQUEST),
    ]
    for path, algo, code in cases:
        with pytest.raises(RemoteError) as caught:
            send(send_ops, path, algo)
        assert caught.value.code == code, path
    fifo_dir = source.root / sendfile.FIFO_DIR
    assert not fifo_dir.exists() or not list(fifo_dir.iterdir())


def test_at_most_two_sends_at_once_and_an_unread_fifo_is_given_up(
    source: InProcessSource, send_ops: SendOps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sendfile, "READER_WAIT_S", 0.3)
    (source.run_dir() / "model.pt").write_bytes(b"x" * 100)
    first, second = send(send_ops, "model.pt"), send(send_ops, "model.pt")
    with pytest.raises(RemoteError) as caught:
        send(send_ops, "model.pt")
    assert caught.value.code == E_SEND_BUSY
    deadline = time.monotonic() + 5
    while send_ops._sending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert send_ops._sending == 0  # nobody read them: both given up, their FIFOs removed
    assert not Path(first["fifo"]).exists() and not Path(second["fifo"]).exists()
    assert split_stream(read_fifo(send(send_ops, "model.pt")["fifo"]))[1] == b"x" * 100


def test_a_killed_agents_old_fifos_are_swept_and_others_kept(
    source: InProcessSource, send_ops: SendOps
) -> None:
    (source.run_dir() / "model.pt").write_bytes(b"x")
    fifo_dir = source.root / sendfile.FIFO_DIR
    fifo_dir.mkdir(parents=True)
    old, young = fifo_dir / "0123.send", fifo_dir / "4567.send"
    for fifo in (old, young):
        os.mkfifo(fifo, 0o600)
    os.utime(old, (time.time() - 2 * sendfile.STALE_FIFO_S,) * 2)
    read_fifo(send(send_ops, "model.pt")["fifo"])
    assert not old.exists() and young.exists()


# -- the hash both sides use ---------------------------------------------------------------------


def test_files_algorithms_times_each_hash_once_and_ranks_them(tmp_path: Path) -> None:
    ops = FileOps(str(tmp_path), lambda message: True)
    reply = ops.op_algorithms({})
    assert set(reply["speeds"]) == set(ops.algorithms) >= {ALGO_SHA256, ALGO_BLAKE2B, ALGO_SHA1}
    assert sorted(reply["algorithms"]) == sorted(ops.algorithms)
    assert all(speed > 1e6 for speed in reply["speeds"].values())  # bytes per second
    assert ops.op_algorithms({})["speeds"] == reply["speeds"]  # timed once per agent


def test_ranking_keeps_the_preferred_hash_unless_another_is_clearly_faster() -> None:
    # SHA extensions: sha1 a little faster than sha256, which stays first (unbroken).
    assert rank_algorithms({ALGO_SHA256: 1.8e9, ALGO_SHA1: 1.9e9, ALGO_BLAKE2B: 0.9e9}) == [
        ALGO_SHA256,
        ALGO_SHA1,
        ALGO_BLAKE2B,
    ]
    # No SHA extensions: blake2b and sha1 close, sha256 far behind.
    assert rank_algorithms({ALGO_SHA256: 0.45e9, ALGO_SHA1: 1.0e9, ALGO_BLAKE2B: 0.9e9})[0] == (
        ALGO_BLAKE2B
    )
    # sha1 far ahead of both: it is chosen.
    assert rank_algorithms({ALGO_SHA256: 0.4e9, ALGO_SHA1: 1.2e9, ALGO_BLAKE2B: 0.5e9})[0] == (
        ALGO_SHA1
    )
    assert rank_algorithms({ALGO_XXH3: 9e9, ALGO_SHA256: 1.8e9})[0] == ALGO_XXH3
    # The controller adds its own time per byte: a slow local sha256 tips the choice.
    host = {ALGO_SHA256: 1.8e9, ALGO_BLAKE2B: 0.9e9}
    assert choose_algorithm(host, {ALGO_SHA256: 1.8e9, ALGO_BLAKE2B: 0.9e9}) == ALGO_SHA256
    assert choose_algorithm(host, {ALGO_SHA256: 0.2e9, ALGO_BLAKE2B: 0.9e9}) == ALGO_BLAKE2B
    with pytest.raises(HostGone):
        choose_algorithm({"md5-128": 1e9}, local_speeds())


@pytest.mark.parametrize("algo", [ALGO_SHA256, ALGO_SHA1])
def test_cut_shas_agree_one_shot_incremental_and_by_buffer(algo: str) -> None:
    data = os.urandom(100_000)
    full = hashlib.new(algo.split("-")[0], data).digest()[:DIGEST_BYTES]
    assert hash_function(algo)(data) == full
    hasher = new_hasher(algo)
    hasher.update(data[:33])
    hasher.update(data[33:])
    assert hasher.digest() == full and hasher.hexdigest() == full.hex()
    block = 16384
    assert buffer_leaves(data, block, algo) == leaf_digests(
        io.BytesIO(data), len(data), block, algo
    )


# -- the controller's parser -------------------------------------------------------------------


def stream_bytes(data: bytes, algo: str = ALGO_SHA256) -> bytes:
    block = block_size_for(len(data))
    leaves = buffer_leaves(data, block, algo)
    header = {"size": len(data), "mtime_ns": 5, "ino": 7, "read_ns": 9, "algo": algo}
    header["block_size"] = block
    trailer = {"digest": delta.Tree(len(data), block, algo, leaves).digest.hex(), "changed": False}
    return b"%s\n%s%s\n" % (json.dumps(header).encode(), data, json.dumps(trailer).encode())


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=3000).map(lambda b: b + b"\n{}" + b),  # newlines and braces inside
    cuts=st.lists(st.integers(0, 4000), max_size=12),
)
def test_the_parser_splits_a_stream_cut_anywhere(data: bytes, cuts: list[int]) -> None:
    raw = stream_bytes(data)
    headers: list[StreamHeader] = []
    body = bytearray()
    parser = SendParser(headers.append, body.extend)
    edges = sorted({c % (len(raw) + 1) for c in cuts} | {0, len(raw)})
    for start, end in itertools.pairwise(edges):
        parser.feed(raw[start:end])
    header, end_ = parser.finish()
    assert bytes(body) == data and headers == [header] and header.size == len(data)
    assert end_.changed is False and len(end_.digest) == DIGEST_BYTES


def test_the_parser_refuses_what_is_not_a_stream() -> None:
    with pytest.raises(RemoteError) as caught:
        parse_header(b'{"error": {"code": "no_such_file", "message": "gone"}}')
    assert caught.value.code == E_NO_SUCH_FILE
    raw = stream_bytes(b"abc")
    parser = SendParser(lambda header: None, lambda view: None)
    parser.feed(raw[:-5])
    with pytest.raises(ProtocolError, match="send stopped"):
        parser.finish()  # the trailer never came
    with pytest.raises(StreamFailed):
        SendParser(lambda header: None, lambda view: None).finish()  # nothing at all
    parser = SendParser(lambda header: None, lambda view: None)
    parser.feed(raw)
    with pytest.raises(ProtocolError, match="past its trailer"):
        parser.feed(b"more")
    for bad in (b'{"size": -1}\n', b'{"size": 3, "algo": 7}\n', b"{not json\n"):
        with pytest.raises(ProtocolError):
            SendParser(lambda header: None, lambda view: None).feed(bad)
    # Lines before the header that are no JSON object are a login shell's banner: skipped,
    # up to MAX_PREAMBLE_LINES of them, and then the stream is refused.
    got: list[bytes] = []
    parser = SendParser(lambda header: None, lambda view: got.append(bytes(view)))
    parser.feed(b"Welcome to gpu-01\n[1]\n" + raw)
    assert parser.finish()[0].size == 3 and b"".join(got) == b"abc"
    assert parser.skipped == [b"Welcome to gpu-01", b"[1]"]
    with pytest.raises(ProtocolError, match="expected a send header, got b'not json'"):
        SendParser(lambda header: None, lambda view: None).feed(b"not json\n" * 51)


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 200_000),
    cuts=st.lists(st.integers(0, 200_000), max_size=40),
    algo=st.sampled_from([ALGO_SHA256, ALGO_BLAKE2B, ALGO_XXH3]),
)
def test_pieces_are_written_and_hashed_as_one_buffer(
    tmp_path_factory: pytest.TempPathFactory, size: int, cuts: list[int], algo: str
) -> None:
    data = os.urandom(size)
    edges = sorted({c % (size + 1) for c in cuts} | {0, size})
    pieces = [memoryview(data)[a:b] for a, b in itertools.pairwise(edges)]
    block = 16384
    assert pieces_leaves(pieces, block, algo) == buffer_leaves(data, block, algo)
    path = tmp_path_factory.mktemp("pieces") / "part"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        write_pieces(fd, pieces, 5)
    finally:
        os.close(fd)
    assert path.read_bytes() == (bytes(5) + data if data else b"")


async def test_a_stream_in_odd_chunks_lands_in_aligned_segments(tmp_path: Path) -> None:
    size = 2 * SEGMENT_BYTES + 12345
    data = os.urandom(size)
    raw = stream_bytes(data)
    fd = os.open(tmp_path / "part", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        writer = PartWriter(fd, ALGO_SHA256, lambda count: None)
        parser = SendParser(writer.header, writer.data)
        at = 0
        for step in itertools.cycle((32_768 - 150, 65_536, 1, 1_000_003)):
            parser.feed(raw[at : at + step])
            at += step
            if at >= len(raw):
                break
        leaves = await writer.leaves()
        await writer.close()
    finally:
        os.close(fd)
    assert leaves == buffer_leaves(data, block_size_for(size), ALGO_SHA256)
    assert (tmp_path / "part").read_bytes() == data


# -- sync ----------------------------------------------------------------------------------------


async def test_a_big_new_file_is_streamed_read_once_and_verified(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    data = os.urandom(BIG)
    (source.run_dir() / "model.pt").write_bytes(data)
    [result] = await RunSync(catalog, home, source, RUN_ID, GLOBS).run()
    assert result.status == "synced" and result.strategy == "whole" and result.fetched == BIG
    assert (home / "runs" / RUN_ID / "model.pt").read_bytes() == data
    assert source.streamed == 1
    assert "files_signature" not in source.calls  # the host read the file once, to send it
    row = catalog.file_row(RUN_ID, "model.pt")
    assert row is not None
    algo = row["hash"].split(":")[0]
    assert algo in (ALGO_XXH3, ALGO_SHA256, ALGO_BLAKE2B, ALGO_SHA1)
    block = block_size_for(BIG)
    leaves = buffer_leaves(data, block, algo)
    assert row["hash"] == f"{algo}:{delta.Tree(BIG, block, algo, leaves).digest.hex()}"
    assert catalog.load_signature(row["hash"]) == (algo, BIG, block, leaves)
    assert not list((home / "sync-tmp" / RUN_ID).glob("*.part"))


async def test_a_file_changed_while_streamed_is_finished_by_a_verified_delta(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    path = source.run_dir() / "model.pt"
    path.write_bytes(os.urandom(BIG))
    poked = threading.Event()

    async def poke(offset: int, data: bytes) -> None:
        if offset > BIG // 2 and not poked.is_set():
            poked.set()
            with open(path, "r+b") as fh:  # a block already sent changes under the reader
                fh.seek(1000)
                fh.write(b"new bytes")

    source.on_read = poke
    [result] = await RunSync(catalog, home, source, RUN_ID, GLOBS).run()
    assert poked.is_set() and result.status == "synced"
    assert (home / "runs" / RUN_ID / "model.pt").read_bytes() == path.read_bytes()
    assert "files_signature" in source.calls  # the stream was only a seed for the delta
    assert result.fetched <= BIG + 2 * block_size_for(BIG)  # and one block came again


async def test_a_host_that_cannot_stream_is_read_over_sftp(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    data = os.urandom(BIG)
    (source.run_dir() / "model.pt").write_bytes(data)
    source.can_stream = False
    [result] = await RunSync(catalog, home, source, RUN_ID, GLOBS).run()
    assert result.status == "synced" and result.fetched == BIG and source.streamed == 0
    assert (home / "runs" / RUN_ID / "model.pt").read_bytes() == data
