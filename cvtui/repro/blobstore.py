"""The content store on disk: files named by the xxh3_128 of their content, written once."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import xxhash

from cvtui.errors import CvtuiError

CHUNK_BYTES = 1 << 20
HASH_HEX_CHARS = 32  # xxh3_128
HEX_DIGITS = frozenset("0123456789abcdef")
FSYNC_THREADS = 8  # parallel fsyncs share journal commits: a batch flushes ~5x faster


class BlobError(CvtuiError):
    """A blob is missing or its content no longer matches its name."""


def hash_bytes(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """(xxh3_128 hex, size in bytes) of a file's content."""
    hasher = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            hasher.update(chunk)
            size += len(chunk)
    return hasher.hexdigest(), size


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """``<home>/blobs/<first 2 hex>/<hash>``; a blob is never overwritten (mode 0400).

    Writes go to a temporary name in the same directory and are hard-linked into place, so a
    reader never sees half a blob and, of two writers of the same content, the second finds
    the name taken and drops its copy: a stored blob's inode is never replaced.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._pending: list[Path] | None = None  # blobs placed without fsync, inside batch()
        self._made_root = False

    @classmethod
    def in_home(cls, home: str | os.PathLike[str]) -> BlobStore:
        return cls(Path(home) / "blobs")

    def path(self, hash_: str) -> Path:
        if len(hash_) != HASH_HEX_CHARS or not HEX_DIGITS.issuperset(hash_):
            raise BlobError(f"{hash_!r} is not an xxh3_128 hex digest")
        return self.root / hash_[:2] / hash_

    def has(self, hash_: str) -> bool:
        return self.path(hash_).is_file()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Defer the fsync of each new blob to one parallel flush when the block ends.

        A cold scan stores thousands of small files; one fsync each costs seconds. Callers
        record blobs in the catalog only after the block, so no row names an unsynced blob.
        """
        outer = self._pending
        self._pending = [] if outer is None else outer
        try:
            yield
        finally:
            if outer is None:
                written, self._pending = self._pending, None
                self._flush(written)

    def put_bytes(self, data: bytes) -> str:
        """Store data; returns its hash. Known content is not written again."""
        hash_ = hash_bytes(data)
        if not self.path(hash_).exists():
            self._place(self._write(iter((data,))), hash_)
        return hash_

    def put_file(self, source: str | os.PathLike[str], expect: str | None = None) -> str:
        """Store a file's content; with expect, refuse content that does not hash to it."""
        if expect is not None and self.has(expect):
            return expect
        return self.store_file(source, expect)[0]

    def store_file(
        self, source: str | os.PathLike[str], expect: str | None = None
    ) -> tuple[str, int]:
        """Store a file's content: (hash, size in bytes) of exactly what was read.

        A file of up to CHUNK_BYTES is read once and written only when the store lacks it;
        a bigger one is streamed to a temp file while it is hashed. With expect, content
        that does not hash to it is refused and nothing is left behind.
        """
        with open(source, "rb") as fh:
            head = fh.read(CHUNK_BYTES)
            if len(head) < CHUNK_BYTES:
                hash_ = hash_bytes(head)
                self._check_expected(source, hash_, expect)
                if not self.path(hash_).exists():
                    self._place(self._write(iter((head,))), hash_)
                return hash_, len(head)
            hasher = xxhash.xxh3_128()
            size = 0

            def chunks() -> Iterator[bytes]:
                nonlocal size
                chunk = head
                while chunk:
                    hasher.update(chunk)
                    size += len(chunk)
                    yield chunk
                    chunk = fh.read(CHUNK_BYTES)

            tmp = self._write(chunks())
        hash_ = hasher.hexdigest()
        try:
            self._check_expected(source, hash_, expect)
        except BlobError:
            tmp.unlink(missing_ok=True)
            raise
        self._place(tmp, hash_)
        return hash_, size

    def read(self, hash_: str) -> bytes:
        """A blob's content, verified against its name."""
        path = self.path(hash_)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobError(f"blob {hash_} is missing from {self.root}") from None
        if hash_bytes(data) != hash_:
            raise BlobError(f"blob {hash_} in {self.root} is corrupt: its content changed")
        return data

    def verify(self, hash_: str) -> bool:
        """Whether the blob exists and still hashes to its name."""
        try:
            found, _size = hash_file(self.path(hash_))
        except FileNotFoundError:
            return False
        return found == hash_

    def copy_to(self, hash_: str, dest: str | os.PathLike[str], mode: int = 0o644) -> None:
        """Write a blob to dest atomically (temp file + fsync + rename), verifying it on the way.

        Corrupt or missing content raises BlobError and leaves dest as it was.
        """
        dest = Path(dest)
        hasher = xxhash.xxh3_128()
        tmp = dest.with_name(f".{dest.name}.{os.urandom(4).hex()}.part")
        try:
            with open(self.path(hash_), "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(CHUNK_BYTES):
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if hasher.hexdigest() != hash_:
                raise BlobError(f"blob {hash_} in {self.root} is corrupt: its content changed")
            tmp.chmod(mode)
            tmp.replace(dest)
        except FileNotFoundError as exc:
            tmp.unlink(missing_ok=True)
            if not self.has(hash_):
                raise BlobError(f"blob {hash_} is missing from {self.root}") from None
            raise CvtuiError(f"cannot write {dest}: {exc.strerror}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def remove(self, hash_: str) -> None:
        """Only `cvtui gc --unreferenced` calls this, after asking."""
        self.path(hash_).unlink(missing_ok=True)

    def hashes(self) -> Iterator[str]:
        """Every blob file present on disk."""
        if not self.root.is_dir():
            return
        for shard in sorted(self.root.iterdir()):
            if shard.is_dir() and len(shard.name) == 2:
                for item in sorted(shard.iterdir()):
                    if len(item.name) == HASH_HEX_CHARS and item.name.startswith(shard.name):
                        yield item.name

    def _check_expected(self, source: object, hash_: str, expect: str | None) -> None:
        if expect is not None and hash_ != expect:
            raise BlobError(f"{source} changed while it was stored (expected {expect[:12]})")

    def _write(self, chunks: Iterator[bytes]) -> Path:
        """Write chunks to a fresh temp file in the store (same filesystem: links are atomic)."""
        if not self._made_root:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._made_root = True
        tmp = self.root / f".tmp.{os.getpid()}.{os.urandom(6).hex()}"
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                if self._pending is None:
                    os.fsync(out.fileno())
            tmp.chmod(0o400)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _place(self, tmp: Path, hash_: str) -> None:
        """Give a finished temp file its name, unless that content is already there."""
        target = self.path(hash_)
        try:
            try:
                os.link(tmp, target)
            except FileNotFoundError:  # the shard's first blob
                target.parent.mkdir(mode=0o700, exist_ok=True)
                os.link(tmp, target)
        except FileExistsError:
            pass  # another writer stored the same content first: keep its file
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
            # No hard links on this filesystem: a rename can replace a racing twin, whose
            # content is the same by construction.
            if not target.exists():
                tmp.replace(target)
        tmp.unlink(missing_ok=True)
        if self._pending is not None:
            self._pending.append(target)
        else:
            _fsync_path(target.parent)

    def _flush(self, written: Iterable[Path]) -> None:
        """fsync the files and shard dirs of a batch, in parallel."""
        files = sorted(set(written))
        if not files:
            return
        from concurrent.futures import ThreadPoolExecutor  # only batches need it: CLI start-up

        dirs = sorted({p.parent for p in files})
        with ThreadPoolExecutor(FSYNC_THREADS) as pool:
            list(pool.map(_fsync_path, files))
            list(pool.map(_fsync_path, dirs))
