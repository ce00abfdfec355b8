"""Pure sync planning: how to bring a local copy level with a remote file, from digests alone.

The block hash tree (leaf, group and file digests) is defined once in remote_agent/files.py
and computed by both sides. Everything here is a function over sizes and digests: which
strategy a file gets, which groups and leaves differ, and which byte ranges to fetch or keep.
Only blocks at the same offset are reused (in-place changes, appends, truncations); data
shifted by an insertion is fetched again from the insertion point on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from remote_agent.blocktree import (
    DIGEST_BYTES,
    GROUP_BLOCKS,
    group_digests,
    leaf_count,
    tree_digest,
)

APPEND = "append"  # fetch what follows the synced prefix, once a check says it is unchanged
WHOLE = "whole"  # small or structured files: fetch all of it whenever it changed
DELTA = "delta"  # block delta against the local copy

APPEND_SUFFIXES = (".log", ".jsonl", ".ndjson", ".csv", ".tsv", ".txt", ".out", ".err")
WHOLE_SUFFIXES = (".yaml", ".yml", ".json", ".toml", ".ini", ".cfg")
SMALL_BYTES = 256 << 10  # below this a whole fetch costs less than a signature round trip
HEAD_CHECK_BYTES = 4096  # the start of an append-only file (a CSV header) is checked ...
TAIL_CHECK_BYTES = 64 << 10  # ... and the end of what was synced, before fetching what follows

Range = tuple[int, int]  # (offset, length) in bytes


def strategy(path: str, remote_size: int, local_size: int | None) -> str:
    """How a file is synced, by name and size; local_size None when there is no local copy."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(APPEND_SUFFIXES) and local_size:
        return APPEND
    if remote_size <= SMALL_BYTES or (name.endswith(WHOLE_SUFFIXES) and not local_size):
        return WHOLE
    if name.endswith(WHOLE_SUFFIXES) and remote_size <= 4 * SMALL_BYTES:
        return WHOLE
    return DELTA


def append_check_ranges(synced: int) -> list[Range]:
    """The ranges of the synced prefix whose digests must match before appending to it."""
    if synced <= 0:
        return []
    head = min(synced, HEAD_CHECK_BYTES)
    tail = min(synced, TAIL_CHECK_BYTES)
    ranges = [(0, head)]
    if synced > head:
        ranges.append((synced - tail, tail))
    return ranges


def split_digests(blob: bytes) -> list[bytes]:
    return [blob[i : i + DIGEST_BYTES] for i in range(0, len(blob), DIGEST_BYTES)]


def differing_groups(local_leaves: bytes, remote_groups: bytes, algo: str) -> list[int]:
    """Indexes of remote groups whose digest the local leaves (same block size) do not match."""
    local = split_digests(group_digests(local_leaves, algo))
    remote = split_digests(remote_groups)
    return [i for i, digest in enumerate(remote) if i >= len(local) or local[i] != digest]


def needed_leaves(
    local_leaves: bytes,
    remote_leaves: Mapping[int, bytes],
    groups: Iterable[int],
    remote_size: int,
    block_size: int,
) -> list[int]:
    """Leaf indexes to fetch: in the given groups, those whose local digest differs.

    ``remote_leaves`` maps a group index to its leaf digests, concatenated.
    """
    total = leaf_count(remote_size, block_size)
    local_count = len(local_leaves) // DIGEST_BYTES
    needed: list[int] = []
    for group in sorted(set(groups)):
        digests = remote_leaves[group]
        first = group * GROUP_BLOCKS
        for j in range(len(digests) // DIGEST_BYTES):
            index = first + j
            if index >= total:
                break
            remote = digests[j * DIGEST_BYTES : (j + 1) * DIGEST_BYTES]
            if (
                index >= local_count
                or local_leaves[index * DIGEST_BYTES : (index + 1) * DIGEST_BYTES] != remote
            ):
                needed.append(index)
    return needed


def leaf_ranges(leaves: Iterable[int], size: int, block_size: int) -> list[Range]:
    """Byte ranges covering these leaves of a file of `size` bytes, adjacent leaves merged."""
    ranges: list[Range] = []
    for index in sorted(set(leaves)):
        start = index * block_size
        if start >= size:
            continue
        end = min(size, start + block_size)
        if ranges and ranges[-1][0] + ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], end - ranges[-1][0])
        else:
            ranges.append((start, end - start))
    return ranges


def chunks(ranges: Iterable[Range], chunk_bytes: int) -> list[Range]:
    """The ranges cut into reads of at most chunk_bytes."""
    out: list[Range] = []
    for offset, length in ranges:
        for start in range(offset, offset + length, chunk_bytes):
            out.append((start, min(chunk_bytes, offset + length - start)))
    return out


def total_bytes(ranges: Iterable[Range]) -> int:
    return sum(length for _, length in ranges)


def merge_leaves(local_leaves: bytes, updates: Mapping[int, bytes], count: int) -> bytes:
    """Leaf digests of a file of `count` leaves: local ones, replaced where updates say."""
    out = bytearray(local_leaves[: count * DIGEST_BYTES])
    if len(out) < count * DIGEST_BYTES:
        out += bytes(count * DIGEST_BYTES - len(out))
    for index, digest in updates.items():
        if index < count:
            out[index * DIGEST_BYTES : (index + 1) * DIGEST_BYTES] = digest
    return bytes(out)


@dataclass(frozen=True)
class Tree:
    """The block hash tree of one file version."""

    size: int  # bytes
    block_size: int  # bytes per leaf
    algo: str
    leaves: bytes  # DIGEST_BYTES per leaf, in order

    @property
    def groups(self) -> bytes:
        return group_digests(self.leaves, self.algo)

    @property
    def digest(self) -> bytes:
        return tree_digest(self.size, self.block_size, self.groups, self.algo)


def group_batches(groups: Sequence[int], per_batch: int) -> list[list[int]]:
    """Groups split into requests of at most per_batch groups each."""
    return [list(groups[i : i + per_batch]) for i in range(0, len(groups), per_batch)]
