"""The content store on disk: files named by the xxh3_128 of their content, written once."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import xxhash

from cvtui.errors import CvtuiError

CHUNK_BYTES = 1 << 20
HASH_HEX_CHARS = 32  # xxh3_128


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


class BlobStore:
    """``<home>/blobs/<first 2 hex>/<hash>``; a blob is never overwritten (mode 0400).

    Writes go to a temporary name in the same directory and are renamed into place, so a
    reader never sees half a blob and two writers of the same content both succeed.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @classmethod
    def in_home(cls, home: str | os.PathLike[str]) -> BlobStore:
        return cls(Path(home) / "blobs")

    def path(self, hash_: str) -> Path:
        if len(hash_) != HASH_HEX_CHARS or not all(c in "0123456789abcdef" for c in hash_):
            raise BlobError(f"{hash_!r} is not an xxh3_128 hex digest")
        return self.root / hash_[:2] / hash_

    def has(self, hash_: str) -> bool:
        return self.path(hash_).is_file()

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
        hasher = xxhash.xxh3_128()

        def chunks() -> Iterator[bytes]:
            with open(source, "rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    hasher.update(chunk)
                    yield chunk

        tmp = self._write(chunks())
        hash_ = hasher.hexdigest()
        if expect is not None and hash_ != expect:
            tmp.unlink(missing_ok=True)
            raise BlobError(f"{source} changed while it was stored (expected {expect[:12]})")
        self._place(tmp, hash_)
        return hash_

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
        """Write a blob to dest atomically (temp file + rename), verifying it on the way."""
        dest = Path(dest)
        hasher = xxhash.xxh3_128()
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
        try:
            with open(self.path(hash_), "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(CHUNK_BYTES):
                    hasher.update(chunk)
                    out.write(chunk)
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

    def _write(self, chunks: Iterator[bytes]) -> Path:
        """Write chunks to a fresh temp file in the store (same filesystem: renames are atomic)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.root / f".tmp.{os.getpid()}.{secrets.token_hex(6)}"
        try:
            with open(tmp, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            tmp.chmod(0o400)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _place(self, tmp: Path, hash_: str) -> None:
        """Rename a finished temp file to its name, unless that content is already there."""
        target = self.path(hash_)
        if target.exists():
            tmp.unlink(missing_ok=True)
            return
        target.parent.mkdir(mode=0o700, exist_ok=True)
        tmp.replace(target)
