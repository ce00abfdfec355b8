"""The block hash tree both sides of a sync compute: leaf, group and whole-file digests.

This module runs on the GPU hosts (Python 3.8+, standard library, xxhash when installed) and
in the controller (cvtui/engine/delta.py), so a digest always means the same thing: leaf
digests of fixed-size blocks, a digest per group of GROUP_BLOCKS leaves, and a file digest
over the size, the block size and the group digests. Which hash a sync uses is chosen per
host from measured speeds (measure_speeds, rank_algorithms): xxh3 where installed, else the
fastest real hash of the standard library.
"""

from __future__ import annotations

import time
from typing import Any, Callable

DIGEST_BYTES = 16  # every algorithm gives (or is cut to) 128-bit digests
ALGO_XXH3 = "xxh3_128"  # only where the xxhash module is installed; ~10x the others
ALGO_BLAKE2B = "blake2b-128"
ALGO_SHA256 = "sha256-128"  # SHA-256 cut to 128 bits: ~2x blake2b on CPUs with SHA extensions
ALGO_SHA1 = "sha1-128"  # SHA-1 cut to 128 bits: chosen only when clearly the fastest
# Block-sync algorithms in order of preference where their speeds are close: the standard
# library's are all real cryptographic hashes; SHA-1 last since its collisions are known.
BLOCK_ALGORITHMS = (ALGO_XXH3, ALGO_SHA256, ALGO_BLAKE2B, ALGO_SHA1)
SPEED_MARGIN = 1.25  # a preferred algorithm is kept unless another is this much faster
MIN_BLOCK_BYTES = 16 << 10  # small enough that a scattered 64 KiB change costs ~80 KiB
MAX_BLOCK_BYTES = 1 << 20
TARGET_BLOCKS = 1 << 16  # the block size doubles until a file has at most this many blocks
GROUP_BLOCKS = 64  # leaf digests per group digest, the first level a sync compares
TREE_TAG = b"cvtui-tree-1"
READ_BYTES = 4 << 20  # a multiple of every block size
SPEED_SAMPLE_BYTES = 1 << 20  # hashed per algorithm (in MIN_BLOCK_BYTES leaves) to time it
SPEED_REPEATS = 3  # the best of this many timings counts: a busy host slows some of them

Hasher = Callable[[Any], bytes]  # bytes-like -> digest


def _blake2b() -> Any:
    """blake2b without importing hashlib: hashlib loads OpenSSL, ~4 MB of the agent's RSS."""
    try:
        from _blake2 import blake2b
    except ImportError:  # an interpreter built without the _blake2 module
        from hashlib import blake2b
    return blake2b


def _sha(algo: str) -> Any:
    """hashlib's SHA constructor (OpenSSL's, which uses the CPU's SHA instructions); loaded
    only when asked for, so an agent that never syncs a file never maps OpenSSL."""
    import hashlib

    return hashlib.sha256 if algo == ALGO_SHA256 else hashlib.sha1


def hash_function(algo: str) -> Hasher:
    """One-shot 16-byte digest of a bytes-like object with the named algorithm."""
    if algo == ALGO_BLAKE2B:
        blake2b = _blake2b()

        def blake(data: Any) -> bytes:
            return bytes(blake2b(data, digest_size=DIGEST_BYTES).digest())

        return blake
    if algo in (ALGO_SHA256, ALGO_SHA1):
        sha = _sha(algo)

        def cut_sha(data: Any) -> bytes:
            return bytes(sha(data).digest()[:DIGEST_BYTES])

        return cut_sha
    if algo == ALGO_XXH3:
        import xxhash  # optional on hosts: hello lists it only when importable

        def xxh3(data: Any) -> bytes:
            return bytes(xxhash.xxh3_128(data).digest())

        return xxh3
    raise ValueError(f"unknown hash algorithm {algo!r}")


class _CutHasher:
    """An incremental SHA whose digests are cut to DIGEST_BYTES, like hash_function's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def update(self, data: Any) -> None:
        self._inner.update(data)

    def digest(self) -> bytes:
        return bytes(self._inner.digest()[:DIGEST_BYTES])

    def hexdigest(self) -> str:
        return self.digest().hex()


def new_hasher(algo: str) -> Any:
    """An incremental hasher (update/digest/hexdigest) giving the same digests as hash_function."""
    if algo == ALGO_BLAKE2B:
        return _blake2b()(digest_size=DIGEST_BYTES)
    if algo in (ALGO_SHA256, ALGO_SHA1):
        return _CutHasher(_sha(algo)())
    if algo == ALGO_XXH3:
        import xxhash

        return xxhash.xxh3_128()
    raise ValueError(f"unknown hash algorithm {algo!r}")


def xxhash_available() -> bool:
    try:
        import xxhash
    except Exception:  # absent, or broken in a way that would fail later anyway
        return False
    return hasattr(xxhash, "xxh3_128")


def measure_speeds(algorithms: list[str]) -> dict[str, float]:
    """Bytes per second each algorithm hashes here, leaf by leaf as a sync hashes files.

    About 10 ms in all: SPEED_REPEATS timings of SPEED_SAMPLE_BYTES per algorithm.
    """
    sample = memoryview(bytes(range(256)) * (SPEED_SAMPLE_BYTES // 256))
    speeds: dict[str, float] = {}
    for algo in algorithms:
        digest = hash_function(algo)
        digest(sample[:MIN_BLOCK_BYTES])  # the first call pays for loading the module
        best = float("inf")
        for _ in range(SPEED_REPEATS):
            start = time.perf_counter()
            for offset in range(0, len(sample), MIN_BLOCK_BYTES):
                digest(sample[offset : offset + MIN_BLOCK_BYTES])
            best = min(best, time.perf_counter() - start)
        speeds[algo] = len(sample) / max(best, 1e-9)
    return speeds


def rank_algorithms(speeds: dict[str, float]) -> list[str]:
    """Algorithms fastest first, except that a preferred one (BLOCK_ALGORITHMS order) within
    SPEED_MARGIN of the fastest goes first: the choice stays put when two are about as fast."""
    if not speeds:
        return []
    by_speed = sorted(speeds, key=lambda algo: -speeds[algo])
    fastest = speeds[by_speed[0]]
    preferred = [a for a in BLOCK_ALGORITHMS if a in speeds]
    preferred += [a for a in by_speed if a not in preferred]
    first = next(a for a in preferred if speeds[a] * SPEED_MARGIN >= fastest)
    return [first] + [a for a in by_speed if a != first]


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


def buffer_leaves(data: Any, block_size: int, algo: str) -> bytes:
    """Leaf digests of a bytes-like buffer that starts on a block boundary."""
    digest = hash_function(algo)
    view = memoryview(data)
    return b"".join(
        digest(view[start : start + block_size]) for start in range(0, len(view), block_size)
    )


def hash_workers() -> int:
    """Threads that hash a big file's leaves at once: a quarter of the CPUs, at most 4 (a GPU
    host's cores feed its training jobs). Even one overlaps reading with hashing."""
    import os

    return max(1, min(4, (os.cpu_count() or 1) // 4))


def leaf_digests(
    fh: Any,
    size: int,
    block_size: int,
    algo: str,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> bytes:
    """Leaf digests of the first `size` bytes read from fh (fewer if the file is shorter).

    Chunks of READ_BYTES are hashed by `workers` threads while the next ones are read
    (hashlib and xxhash release the GIL on buffers this big): 1 GiB of SHA-256 leaves took
    0.78 s read-then-hash and 0.60 s with 2 workers on this 2-core machine.
    """
    chunk = max(READ_BYTES, block_size)
    if size <= chunk:
        workers = 0  # one read: nothing to overlap
    from collections import deque

    pool = None
    if workers > 0:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="leaves")
    # Each chunk's buffer is reused once its digests are in: at most workers + 1 exist.
    buffers = [bytearray(chunk) for _ in range(workers + 1)]
    pending: Any = deque()  # (future of a chunk's digests, bytes read up to its end)
    out = bytearray()
    done = 0
    try:
        index = 0
        while done < size:
            view = memoryview(buffers[index % len(buffers)])
            index += 1
            want = min(chunk, size - done)
            got = _read_full(fh, view[:want])
            done += got
            if got:
                if pool is None:
                    out += buffer_leaves(view[:got], block_size, algo)
                    if progress is not None:
                        progress(done)
                else:
                    pending.append((pool.submit(buffer_leaves, view[:got], block_size, algo), done))
            while pending and (len(pending) >= len(buffers) or got < want or done >= size):
                future, hashed = pending.popleft()
                out += future.result()
                if progress is not None:
                    progress(hashed)
            if got < want:
                break  # the file shrank while read: the caller's stat check sees it
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return bytes(out)


def _read_full(fh: Any, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got
