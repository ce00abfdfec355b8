"""Block-delta planning: from digests alone, the ranges that make a local copy equal the remote."""

from __future__ import annotations

import io
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvtui.engine import delta
from remote_agent.blocktree import (
    ALGO_BLAKE2B,
    ALGO_SHA256,
    ALGO_XXH3,
    DIGEST_BYTES,
    GROUP_BLOCKS,
    MAX_BLOCK_BYTES,
    MIN_BLOCK_BYTES,
    READ_BYTES,
    block_size_for,
    hash_function,
    leaf_count,
    leaf_digests,
)

BLOCK = MIN_BLOCK_BYTES


def leaves_of(data: bytes, block: int = BLOCK, algo: str = ALGO_XXH3) -> bytes:
    return leaf_digests(io.BytesIO(data), len(data), block, algo)


def tree(data: bytes, algo: str = ALGO_XXH3) -> delta.Tree:
    block = block_size_for(len(data))
    return delta.Tree(len(data), block, algo, leaves_of(data, block, algo))


def apply_plan(local: bytes, remote: bytes) -> tuple[bytes, int]:
    """What sync does with a plan: keep local blocks, read the needed ones; (result, bytes read)."""
    mine, theirs = tree(local), tree(remote)
    block = theirs.block_size
    mine = delta.Tree(len(local), block, mine.algo, leaves_of(local, block))
    groups = delta.differing_groups(mine.leaves, theirs.groups, theirs.algo)
    step = GROUP_BLOCKS * DIGEST_BYTES
    remote_leaves = {g: theirs.leaves[g * step : (g + 1) * step] for g in groups}
    needed = delta.needed_leaves(mine.leaves, remote_leaves, groups, len(remote), block)
    ranges = delta.leaf_ranges(needed, len(remote), block)
    result = bytearray(local[: len(remote)].ljust(len(remote), b"\0"))
    for offset, length in ranges:
        result[offset : offset + length] = remote[offset : offset + length]
    return bytes(result), delta.total_bytes(ranges)


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# Edits a sync must survive, applied to a remote file (the local copy is the version before).
edits = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 200_000)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("poke"), st.floats(0, 1), st.integers(1, 70_000)),
    st.tuples(st.just("rewrite"), st.integers(0, 300_000)),
)


def edit(data: bytes, step: tuple, seed: int) -> bytes:
    kind = step[0]
    if kind == "append":
        return data + random_bytes(seed, step[1])
    if kind == "truncate":
        return data[: int(len(data) * step[1])]
    if kind == "poke":
        at = int(len(data) * step[1])
        return (
            data[:at] + random_bytes(seed, step[2])[: max(0, len(data) - at)] + data[at + step[2] :]
        )
    return random_bytes(seed, step[1])


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 600_000), st.lists(edits, min_size=1, max_size=4), st.integers(0, 2**32))
def test_applying_the_plan_gives_the_remote_bytes(size: int, steps: list, seed: int) -> None:
    local = random_bytes(seed, size)
    remote = local
    for n, step in enumerate(steps):
        remote = edit(remote, step, seed + n + 1)
    result, read = apply_plan(local, remote)
    assert result == remote
    assert read <= len(remote)


@settings(max_examples=40, deadline=None)
@given(st.integers(BLOCK * 4, 2_000_000), st.integers(1, 8), st.integers(0, 2**32))
def test_scattered_changes_cost_only_the_blocks_they_touch(
    size: int, changes: int, seed: int
) -> None:
    rng = random.Random(seed)
    local = random_bytes(seed, size)
    remote = bytearray(local)
    touched: set[int] = set()
    for _ in range(changes):
        at = rng.randrange(size)
        length = min(rng.randint(1, 20_000), size - at)
        remote[at : at + length] = rng.randbytes(length)
        touched.update(range(at // BLOCK, (at + length - 1) // BLOCK + 1))
    _, read = apply_plan(local, bytes(remote))
    assert read <= len(touched) * BLOCK


def test_identical_files_need_nothing_and_match_digests() -> None:
    data = random_bytes(1, 1_000_003)
    assert apply_plan(data, data) == (data, 0)
    assert tree(data).digest == tree(bytes(data)).digest
    assert tree(data).digest != tree(data[:-1]).digest
    assert tree(data, ALGO_BLAKE2B).digest != tree(data, ALGO_XXH3).digest


def test_empty_files_have_a_digest_and_no_blocks() -> None:
    empty = tree(b"")
    assert empty.leaves == b"" and len(empty.digest) == DIGEST_BYTES
    assert apply_plan(b"abc", b"") == (b"", 0)
    assert apply_plan(b"", b"abc") == (b"abc", 3)


def test_block_size_grows_with_the_file_within_bounds() -> None:
    assert block_size_for(0) == MIN_BLOCK_BYTES
    assert block_size_for(1 << 30) == MIN_BLOCK_BYTES  # 65536 blocks of 16 KiB
    assert block_size_for((1 << 30) + 1) == 2 * MIN_BLOCK_BYTES
    assert block_size_for(1 << 40) == MAX_BLOCK_BYTES
    for size in (0, 1, 10**6, 10**9, 10**11):
        assert leaf_count(size, block_size_for(size)) <= max(1 << 16, size // MAX_BLOCK_BYTES + 1)


@pytest.mark.parametrize(
    ("path", "remote", "local", "expected"),
    [
        ("output.log", 10, 5, delta.APPEND),
        ("sub/metrics.csv", 10**9, 10**6, delta.APPEND),
        ("metrics.csv", 100, None, delta.WHOLE),
        ("config.yaml", 10**6, None, delta.WHOLE),
        ("config.yaml", 10**6, 10**6, delta.WHOLE),
        ("big.json", 10**8, 10**8, delta.DELTA),
        ("model.pt", 100, 50, delta.WHOLE),
        ("model.pt", 10**8, None, delta.DELTA),
        ("model.pt", 10**8, 10**8, delta.DELTA),
    ],
)
def test_strategy_by_name_and_size(
    path: str, remote: int, local: int | None, expected: str
) -> None:
    assert delta.strategy(path, remote, local) == expected


def test_append_checks_cover_the_head_and_the_synced_tail() -> None:
    assert delta.append_check_ranges(0) == []
    assert delta.append_check_ranges(100) == [(0, 100)]
    assert delta.append_check_ranges(10**6) == [(0, 4096), (10**6 - 65536, 65536)]


def test_ranges_merge_adjacent_leaves_and_chunks_split_them() -> None:
    ranges = delta.leaf_ranges([5, 0, 1, 3, 1], 5 * BLOCK + 10, BLOCK)
    assert ranges == [(0, 2 * BLOCK), (3 * BLOCK, BLOCK), (5 * BLOCK, 10)]
    assert delta.chunks([(0, 10), (20, 25)], 10) == [(0, 10), (20, 10), (30, 10), (40, 5)]


def test_merge_leaves_pads_unknown_and_cuts_extra() -> None:
    one, two = b"a" * DIGEST_BYTES, b"b" * DIGEST_BYTES
    assert delta.merge_leaves(one + one + one, {1: two}, 2) == one + two
    assert delta.merge_leaves(b"", {2: two}, 3) == bytes(2 * DIGEST_BYTES) + two


@pytest.mark.parametrize("workers", [0, 1, 2, 4])
def test_leaves_hashed_in_threads_are_each_blocks_digest_in_order(workers: int) -> None:
    chunk = READ_BYTES
    data = os.urandom(3 * chunk + 5 * BLOCK + 123)
    digest = hash_function(ALGO_SHA256)
    for size in (0, 1, BLOCK - 1, chunk, chunk + 1, 2 * chunk + BLOCK, len(data)):
        expected = b"".join(digest(data[i : min(i + BLOCK, size)]) for i in range(0, size, BLOCK))
        seen: list[int] = []
        got = leaf_digests(
            io.BytesIO(data), size, BLOCK, ALGO_SHA256, progress=seen.append, workers=workers
        )
        assert got == expected, (size, workers)
        assert seen == sorted(seen) and (seen[-1] if seen else 0) == size
    # The file shrank after its stat (reads end at `stop`): the leaves of what was there.
    stop = chunk + 3 * BLOCK + 7
    short = leaf_digests(io.BytesIO(data[:stop]), len(data), BLOCK, ALGO_SHA256, workers=workers)
    assert short == b"".join(digest(data[i : min(i + BLOCK, stop)]) for i in range(0, stop, BLOCK))
