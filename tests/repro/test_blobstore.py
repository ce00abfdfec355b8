"""The content store on a real filesystem: write-once blobs, concurrent writers, corruption."""

from __future__ import annotations

import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cvtui.repro.blobstore import (
    CHUNK_BYTES,
    BlobError,
    BlobStore,
    hash_bytes,
    hash_file,
)


def leftovers(store: BlobStore) -> list[str]:
    """Temp files the store left behind (there must never be any after a put returns)."""
    return sorted(p.name for p in store.root.rglob(".tmp.*"))


def corrupt(store: BlobStore, hash_: str) -> None:
    """Change a blob's content in place, keeping its size, as bit rot or a stray write would."""
    path = store.path(hash_)
    path.chmod(0o600)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore.in_home(tmp_path / "home")


def test_put_bytes_is_written_once_read_only_and_named_by_content(store: BlobStore) -> None:
    data = b"print('hello')\n"
    hash_ = store.put_bytes(data)
    path = store.path(hash_)
    assert hash_ == hash_bytes(data) and len(hash_) == 32
    assert path == store.root / hash_[:2] / hash_
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    first = path.stat()
    assert store.put_bytes(data) == hash_
    again = path.stat()
    # Same inode and mtime: the second put did not write or replace anything.
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    assert store.read(hash_) == data and store.verify(hash_)
    assert list(store.hashes()) == [hash_] and leftovers(store) == []


def test_put_file_small_and_streamed_match_hash_file(store: BlobStore, tmp_path: Path) -> None:
    small = tmp_path / "small.py"
    small.write_bytes(b"x = 1\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(CHUNK_BYTES) * 2 + b"tail")  # several chunks plus a partial one
    for source in (small, big):
        hash_, size = store.store_file(source)
        assert (hash_, size) == hash_file(source) and size == source.stat().st_size
        assert store.put_file(source) == hash_
        assert store.read(hash_) == source.read_bytes()
    inode = store.path(hash_file(big)[0]).stat().st_ino
    assert store.put_file(big) == hash_file(big)[0]
    assert store.path(hash_file(big)[0]).stat().st_ino == inode
    assert sorted(store.hashes()) == sorted([hash_file(small)[0], hash_file(big)[0]])
    assert leftovers(store) == []


@pytest.mark.parametrize("size", [100, 3 * CHUNK_BYTES], ids=["small", "streamed"])
def test_put_file_with_wrong_expect_refuses_and_leaves_nothing(
    store: BlobStore, tmp_path: Path, size: int
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(b"a" * size)
    wrong = hash_bytes(b"what the caller hashed before the file changed")
    with pytest.raises(BlobError, match="changed while it was stored"):
        store.put_file(source, expect=wrong)
    assert not store.has(wrong) and not store.has(hash_file(source)[0])
    assert list(store.hashes()) == [] and leftovers(store) == []
    right = hash_file(source)[0]
    assert store.put_file(source, expect=right) == right and store.verify(right)


def test_concurrent_puts_from_threads_store_each_content_once(store: BlobStore) -> None:
    shared = b"the same file, stored by every thread\n" * 100
    distinct = [f"file {i}\n".encode() * 50 for i in range(40)]
    start = threading.Barrier(8)

    def put(index: int) -> list[str]:
        start.wait()  # all threads race for the same names at once
        found = [store.put_bytes(shared)]
        found += [store.put_bytes(distinct[(index + k) % 40]) for k in range(40)]
        return found

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(put, range(8)))
    assert {r[0] for r in results} == {hash_bytes(shared)}
    expected = {hash_bytes(shared), *(hash_bytes(d) for d in distinct)}
    assert set(store.hashes()) == expected
    for hash_ in expected:
        assert store.verify(hash_)
        assert stat.S_IMODE(store.path(hash_).stat().st_mode) == 0o400
    assert leftovers(store) == []


def test_batch_defers_fsync_but_blobs_are_complete_inside_and_after(store: BlobStore) -> None:
    with store.batch():
        first = store.put_bytes(b"one")
        with store.batch():  # nested: flushed once, by the outer block
            second = store.put_bytes(b"two")
        assert store.read(first) == b"one" and store.read(second) == b"two"
    third = store.put_bytes(b"three")  # after the batch: synced on its own again
    assert {first, second, third} == set(store.hashes()) and leftovers(store) == []


def test_corrupt_blob_is_detected_by_read_verify_and_copy_to(
    store: BlobStore, tmp_path: Path
) -> None:
    hash_ = store.put_bytes(b"weights = [1, 2, 3]\n")
    corrupt(store, hash_)
    with pytest.raises(BlobError, match="corrupt"):
        store.read(hash_)
    assert store.verify(hash_) is False
    dest_dir = tmp_path / "work"
    dest_dir.mkdir()
    dest = dest_dir / "model.py"
    dest.write_text("my edit\n")
    with pytest.raises(BlobError, match="corrupt"):
        store.copy_to(hash_, dest)
    assert dest.read_text() == "my edit\n"  # untouched
    assert sorted(p.name for p in dest_dir.iterdir()) == ["model.py"]  # no .part left


def test_missing_blob_is_an_error_not_an_empty_file(store: BlobStore, tmp_path: Path) -> None:
    hash_ = store.put_bytes(b"gone soon")
    store.remove(hash_)
    assert not store.has(hash_) and store.verify(hash_) is False
    with pytest.raises(BlobError, match="missing"):
        store.read(hash_)
    dest = tmp_path / "out.py"
    with pytest.raises(BlobError, match="missing"):
        store.copy_to(hash_, dest)
    assert not dest.exists() and list(tmp_path.glob(".out.py.*")) == []


def test_copy_to_writes_atomically_with_the_mode_given(store: BlobStore, tmp_path: Path) -> None:
    hash_ = store.put_bytes(b"#!/bin/sh\necho hi\n")
    dest = tmp_path / "run.sh"
    dest.write_text("old\n")
    old_inode = dest.stat().st_ino
    store.copy_to(hash_, dest, mode=0o755)
    assert dest.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert dest.stat().st_ino != old_inode  # renamed into place, not rewritten in place
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("name", ["", "abc", "G" * 32, "0" * 31, "0" * 33, "../" + "0" * 29])
def test_names_that_are_not_hashes_are_refused(store: BlobStore, name: str) -> None:
    with pytest.raises(BlobError, match="not an xxh3_128 hex digest"):
        store.path(name)
