"""The block hash tree both sides of a sync compute: leaf, group and whole-file digests.

This module runs on the GPU hosts (Python 3.8+, standard library, xxhash when installed) and
in the controller (cvtui/engine/delta.py), so a digest always means the same thing: leaf
digests of fixed-size blocks, a digest per group of GROUP_BLOCKS leaves, and a file digest
over the size, the block size and the group digests.
"""

from __future__ import annotations

from typing import Any, Callable

DIGEST_BYTES = 16  # both algorithms give 128-bit digests
ALGO_XXH3 = "xxh3_128"
ALGO_BLAKE2B = "blake2b-128"
MIN_BLOCK_BYTES = 16 << 10  # small enough that a scattered 64 KiB change costs ~80 KiB
MAX_BLOCK_BYTES = 1 << 20
TARGET_BLOCKS = 1 << 16  # the block size doubles until a file has at most this many blocks
GROUP_BLOCKS = 64  # leaf digests per group digest, the first level a sync compares
TREE_TAG = b"cvtui-tree-1"
READ_BYTES = 4 << 20  # a multiple of every block size

Hasher = Callable[[Any], bytes]  # bytes-like -> digest


def _blake2b() -> Any:
    """blake2b without importing hashlib: hashlib loads OpenSSL, ~4 MB of the agent's RSS."""
    try:
        from _blake2 import blake2b
    except ImportError:  # an interpreter built without the _blake2 module
        from hashlib import blake2b
    return blake2b


def hash_function(algo: str) -> Hasher:
    """One-shot 16-byte digest of a bytes-like object with the named algorithm."""
    if algo == ALGO_BLAKE2B:
        blake2b = _blake2b()

        def blake(data: Any) -> bytes:
            return bytes(blake2b(data, digest_size=DIGEST_BYTES).digest())

        return blake
    if algo == ALGO_XXH3:
        import xxhash  # optional on hosts: hello lists it only when importable

        def xxh3(data: Any) -> bytes:
            return bytes(xxhash.xxh3_128(data).digest())

        return xxh3
    raise ValueError(f"unknown hash algorithm {algo!r}")


def new_hasher(algo: str) -> Any:
    """An incremental hasher (update/digest) giving the same digests as hash_function."""
    if algo == ALGO_BLAKE2B:
        return _blake2b()(digest_size=DIGEST_BYTES)
    if algo == ALGO_XXH3:
        import xxhash

        return xxhash.xxh3_128()
    raise ValueError(f"unknown hash algorithm {algo!r}")


def block_size_for(size: int) -> int:
    """Leaf block size (bytes) for a file of this size: a power of two, 16 KiB to 1 MiB."""
    block = MIN_BLOCK_BYTES
    while block < MAX_BLOCK_BYTES and size > block * TARGET_BLOCKS:
        block *= 2
    return block


def valid_block_size(block_size: Any) -> bool:
    return (
        isinstance(block_size, int)
        and not isinstance(block_size, bool)
        and MIN_BLOCK_BYTES <= block_size <= MAX_BLOCK_BYTES
        and block_size & (block_size - 1) == 0
    )


def leaf_count(size: int, block_size: int) -> int:
    return (size + block_size - 1) // block_size


def group_digests(leaves: bytes, algo: str) -> bytes:
    """The digest of every run of GROUP_BLOCKS leaf digests, concatenated."""
    digest = hash_function(algo)
    step = GROUP_BLOCKS * DIGEST_BYTES
    return b"".join(digest(leaves[i : i + step]) for i in range(0, len(leaves), step))


def tree_digest(size: int, block_size: int, groups: bytes, algo: str) -> bytes:
    """The whole-file digest: size, block size and group digests, hashed together."""
    header = TREE_TAG + size.to_bytes(8, "little") + block_size.to_bytes(4, "little")
    return hash_function(algo)(header + groups)


def leaf_digests(
    fh: Any,
    size: int,
    block_size: int,
    algo: str,
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """Leaf digests of the first `size` bytes read from fh (fewer if the file is shorter)."""
    digest = hash_function(algo)
    out = bytearray()
    buffer = bytearray(max(READ_BYTES, block_size))
    view = memoryview(buffer)
    done = 0
    while done < size:
        want = min(len(buffer), size - done)
        got = _read_full(fh, view[:want])
        for start in range(0, got, block_size):
            out += digest(view[start : min(start + block_size, got)])
        done += got
        if progress is not None:
            progress(done)
        if got < want:
            break  # the file shrank while read: the caller's stat check sees it
    return bytes(out)


def _read_full(fh: Any, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got
