"""RunSync against the agent's real file ops on this machine: every strategy, every odd file."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import catalog_intact, metric_count

from cvtui.catalog import Catalog
from cvtui.engine.host_files import HostGone
from cvtui.engine.ingest import ingest_file
from cvtui.engine.sync import RunSync
from cvtui.metrics_parse import CSV, ParseState, parse_new

from .sources import RUN_ID, InProcessSource

GLOBS = ["*.log", "*.csv", "*.jsonl", "*.pt", "*.yaml", "*.txt"]


def mirror(home: Path, name: str = "") -> Path:
    return home / "runs" / RUN_ID / name


def new_sync(catalog: Catalog, home: Path, source: InProcessSource) -> RunSync:
    return RunSync(catalog, home, source, RUN_ID, GLOBS)


def age(path: Path, seconds: float = 10.0) -> None:
    """Move a file's mtime into the past: a file written just now is re-checked (racy)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def tree_snapshot(root: Path, skip: Path) -> dict[str, bytes | str]:
    """Every file and link under root except under skip, with its content or target."""
    found: dict[str, bytes | str] = {}
    for path in root.rglob("*"):
        if path == skip or skip in path.parents:
            continue
        if path.is_symlink():
            found[str(path)] = str(path.readlink())
        elif path.is_file():
            found[str(path)] = path.read_bytes()
    return found


# -- the property: any sequence of edits, synced after each, leaves identical bytes ----------

ops = st.one_of(
    st.tuples(st.just("append"), st.integers(0, 300_000)),
    st.tuples(st.just("rewrite"), st.integers(0, 1_500_000)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("poke"), st.floats(0, 1), st.integers(1, 100_000)),
    st.tuples(st.just("grow"), st.integers(1, 700_000)),
    st.tuples(st.just("shrink"), st.integers(1, 700_000)),
)


def apply(path: Path, op: tuple, rng: random.Random) -> None:
    data = path.read_bytes() if path.exists() else b""
    kind = op[0]
    if kind == "append":
        with open(path, "ab") as fh:  # in place, as a logger appends
            fh.write(rng.randbytes(op[1]))
        return
    if kind == "rewrite":
        data = rng.randbytes(op[1])
    elif kind == "truncate":
        data = data[: int(len(data) * op[1])]
    elif kind == "poke":
        at = int(len(data) * op[1])
        patch = rng.randbytes(min(op[2], max(0, len(data) - at)))
        with open(path, "r+b") as fh:  # an in-place block change keeps the inode
            fh.seek(at)
            fh.write(patch)
        return
    elif kind == "grow":
        data = data + rng.randbytes(op[1])
    else:
        data = data[: max(0, len(data) - op[1])]
    path.write_bytes(data)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(["train.log", "model.pt", "config.yaml", "metrics.txt"]),
    steps=st.lists(ops, min_size=1, max_size=6),
    seed=st.integers(0, 2**32),
)
def test_any_edit_sequence_syncs_byte_identical(
    tmp_path_factory: pytest.TempPathFactory, name: str, steps: list, seed: int
) -> None:
    base = tmp_path_factory.mktemp("prop")
    home = base / "home"
    source = InProcessSource(base / "host")
    remote = source.run_dir() / name
    rng = random.Random(seed)

    async def scenario() -> None:
        with Catalog.open_home(home) as catalog:
            sync = new_sync(catalog, home, source)
            remote.write_bytes(rng.randbytes(rng.randint(0, 400_000)))
            for step in [("append", 0), *steps]:
                apply(remote, step, rng)
                before = source.bytes_read
                results = await sync.run()  # none when the step changed nothing
                assert all(r.status == "synced" for r in results), results
                assert mirror(home, name).read_bytes() == remote.read_bytes(), step
                assert source.bytes_read - before <= remote.stat().st_size
                row = catalog.file_row(RUN_ID, name)
                assert row is not None and row["sync_status"] == "synced"
            assert catalog_intact(catalog)

    asyncio.run(scenario())


# -- strategies ------------------------------------------------------------------------------


async def test_appends_read_only_the_new_bytes_and_a_second_sync_reads_nothing(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    log = source.run_dir() / "train.log"
    log.write_bytes(b"x" * 1_000_000)
    sync = new_sync(catalog, home, source)
    await sync.run()
    with open(log, "ab") as fh:
        fh.write(b"y" * 1000)
    before = source.bytes_read
    [result] = await sync.run()
    assert result.strategy == "append" and source.bytes_read - before == 1000 == result.fetched
    assert mirror(home, "train.log").read_bytes() == log.read_bytes()
    [again] = await sync.run()  # just written: its stat proves nothing yet, digests are checked
    assert again.fetched == 0 and source.calls[-1] == "files_signature"
    age(log)
    await sync.run()
    source.calls.clear()
    before = source.bytes_read
    assert await sync.run() == []
    assert source.bytes_read == before and source.calls == ["files_list"]


async def test_a_rewritten_prefix_falls_back_to_a_block_delta(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    log = source.run_dir() / "metrics.csv"
    data = bytearray(os.urandom(2_000_000))
    log.write_bytes(data)
    sync = new_sync(catalog, home, source)
    await sync.run()
    data[10:20] = b"0123456789"  # pandas rewrote the file: same inode, new bytes at the start
    with open(log, "r+b") as fh:
        fh.write(data)
        fh.write(b"appended")
    before = source.bytes_read
    [result] = await sync.run()
    assert result.strategy == "delta"
    assert mirror(home, "metrics.csv").read_bytes() == log.read_bytes()
    assert source.bytes_read - before <= 2 * 16384


async def test_a_block_change_in_a_checkpoint_costs_one_block(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    ckpt = source.run_dir() / "model.pt"
    ckpt.write_bytes(os.urandom(8_000_000))
    sync = new_sync(catalog, home, source)
    [first] = await sync.run()
    assert first.strategy == "whole" and first.fetched == 8_000_000
    with open(ckpt, "r+b") as fh:
        fh.seek(5_000_000)
        fh.write(b"changed")
    [second] = await sync.run()
    assert second.strategy == "delta" and second.fetched == 16384
    assert mirror(home, "model.pt").read_bytes() == ckpt.read_bytes()
    row = catalog.file_row(RUN_ID, "model.pt")
    assert row is not None and row["hash"].startswith(source.algorithms[0] + ":")
    assert catalog.load_signature(row["hash"]) is not None  # local signatures are kept


async def test_a_local_copy_changed_behind_our_back_is_repaired(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    ckpt = source.run_dir() / "model.pt"
    ckpt.write_bytes(os.urandom(1_000_000))
    age(ckpt)
    sync = new_sync(catalog, home, source)
    await sync.run()
    local = mirror(home, "model.pt")
    st = local.stat()
    with open(local, "r+b") as fh:
        fh.seek(300_000)
        fh.write(b"rot")
    os.utime(local, ns=(st.st_atime_ns, st.st_mtime_ns))  # even its mtime looks untouched
    assert await sync.run() == []  # stat says synced: only --verify looks at the bytes
    [result] = await sync.run(verify=True)
    assert result.fetched == 16384 and local.read_bytes() == ckpt.read_bytes()

    with open(local, "ab") as fh:  # a visible change (size, mtime) is noticed without --verify
        fh.write(b"junk")
    [again] = await sync.run()
    assert again.status == "synced" and local.read_bytes() == ckpt.read_bytes()


async def test_an_interrupted_transfer_resumes_from_the_part_file(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    size = 20_000_000
    ckpt = source.run_dir() / "model.pt"
    ckpt.write_bytes(os.urandom(size))
    sync = new_sync(catalog, home, source)

    delivered = 0

    async def cut(offset: int, data: bytes) -> None:
        nonlocal delivered
        if delivered > size // 2:
            raise HostGone("link dropped")
        delivered += len(data)

    source.on_read = cut
    with pytest.raises(HostGone):
        await sync.run()
    assert catalog.file_row(RUN_ID, "model.pt")["sync_status"] == "outdated"
    source.on_read = None
    [result] = await new_sync(catalog, home, source).run()
    assert result.status == "synced" and mirror(home, "model.pt").read_bytes() == ckpt.read_bytes()
    assert result.fetched <= (size - delivered) * 1.05
    assert not list((home / "sync-tmp" / RUN_ID).glob("*.part"))


async def test_a_file_changing_faster_than_it_syncs_stays_outdated(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    ckpt = source.run_dir() / "model.pt"
    ckpt.write_bytes(os.urandom(4_000_000))
    rng = random.Random(1)

    async def scribble(offset: int, *_: object) -> None:
        with open(ckpt, "r+b") as fh:  # a writer rewriting each block as it is being read
            fh.seek(offset)
            fh.write(rng.randbytes(4))

    source.before_read = source.on_read = scribble
    [result] = await new_sync(catalog, home, source).run()
    assert result.status == "outdated" and "kept changing" in (result.reason or "")
    assert not mirror(home, "model.pt").exists()  # never a half-verified copy
    source.before_read = source.on_read = None
    [result] = await new_sync(catalog, home, source).run()
    assert result.status == "synced" and mirror(home, "model.pt").read_bytes() == ckpt.read_bytes()


# -- odd files -----------------------------------------------------------------------------


async def test_odd_files_get_clear_states_and_nothing_outside_the_mirror_is_touched(
    catalog: Catalog, home: Path, source: InProcessSource, tmp_path: Path
) -> None:
    run_dir = source.run_dir()
    (run_dir / "passwd.txt").symlink_to("/etc/passwd")
    (run_dir / os.fsdecode(b"bad\xff.log")).write_text("latin")
    (run_dir / "new\nline.log").write_text("odd but fine\n")
    (run_dir / "empty.log").write_bytes(b"")
    (run_dir / "gone.pt").write_bytes(os.urandom(500_000))
    (run_dir / "latin.csv").write_bytes(b"step,name\n1,caf\xe9\n2,ok\n")
    sync = new_sync(catalog, home, source)
    listing = await sync.listing()
    (run_dir / "gone.pt").unlink()  # disappears between the listing and its transfer
    outside = tree_snapshot(tmp_path, mirror(home))
    results = {r.path: r for r in await sync.run(listing=listing)}

    assert results["gone.pt"].status == "vanished"
    assert results["new\nline.log"].status == "synced", results
    assert mirror(home, "new\nline.log").read_text() == "odd but fine\n"
    assert results["empty.log"].status == "synced" and mirror(home, "empty.log").read_bytes() == b""
    assert results["latin.csv"].status == "synced"
    states = {r["path"]: (r["sync_status"], r["reason"]) for r in catalog.files_of(RUN_ID)}
    assert states["passwd.txt"] == ("skipped", "symlink to /etc/passwd leaves the run dir")
    assert states["bad\\xff.log"] == ("skipped", "name is not valid UTF-8")
    assert states["gone.pt"][0] == "vanished"
    assert not mirror(home, "passwd.txt").exists()
    rows = catalog.metric_rows(RUN_ID)
    assert [(r[0], r[1], r[4]) for r in rows] == [(1, "name", "caf\ufffd"), (2, "name", "ok")]
    after = tree_snapshot(tmp_path, mirror(home))
    changed = {p for p in after.keys() | outside.keys() if after.get(p) != outside.get(p)}
    # Only the mirror (left out of the snapshot) and the catalog may change.
    assert all(p.startswith(str(home / "catalog.db")) for p in changed), changed

    await sync.run()  # a later complete listing confirms: still vanished, local copy kept
    assert catalog.file_row(RUN_ID, "gone.pt")["sync_status"] == "vanished"


async def test_a_symlink_planted_in_the_mirror_is_never_followed(
    catalog: Catalog, home: Path, source: InProcessSource, tmp_path: Path
) -> None:
    (source.run_dir() / "sub").mkdir()
    (source.run_dir() / "sub" / "train.log").write_text("data\n")
    victim = tmp_path / "victim"
    victim.mkdir()
    mirror(home).mkdir(parents=True)
    (mirror(home) / "sub").symlink_to(victim)
    [result] = await new_sync(catalog, home, source).run()
    assert result.status == "skipped" and "symlink is never followed" in (result.reason or "")
    assert list(victim.iterdir()) == []


# -- metrics -------------------------------------------------------------------------------


def csv_rows(text: str) -> list[tuple[float, str, float]]:
    out = []
    for record in csv.DictReader(io.StringIO(text)):
        step = float(record.pop("step"))
        out += [(step, key, float(value)) for key, value in record.items() if value]
    return sorted(out)


def stored(catalog: Catalog, path: str = "metrics.csv") -> list[tuple[float, str, float]]:
    return sorted((float(s), k, v) for s, k, f, v, _ in catalog.metric_rows(RUN_ID) if f == path)


async def test_a_growing_csv_becomes_metric_rows_once_each(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    path = source.run_dir() / "metrics.csv"
    text = "step,loss,acc\n"
    path.write_text(text)
    sync = new_sync(catalog, home, source)
    for step in range(40):
        line = f"{step},{1 / (step + 1):.5f},{step / 40:.3f}\n"
        with open(path, "a") as fh:  # sometimes half a line is flushed first
            fh.write(line[:5])
            if step % 3:
                await sync.run()
            fh.write(line[5:])
        text += line
        await sync.run()
    assert stored(catalog) == csv_rows(text)
    assert metric_count(catalog, RUN_ID) == 80


async def test_a_rewritten_csv_replaces_its_rows_and_handles_a_new_column(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    path = source.run_dir() / "metrics.csv"
    sync = new_sync(catalog, home, source)
    rows = []
    for step in range(30):
        rows.append((step, 1 / (step + 1)))
        if step < 15:
            text = "step,loss\n" + "".join(f"{s},{v:.4f}\n" for s, v in rows)
        else:  # pandas writes the whole frame again, now with an extra column
            text = "step,loss,acc\n" + "".join(f"{s},{v:.4f},{s / 30:.3f}\n" for s, v in rows)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        await sync.run()
        assert stored(catalog) == csv_rows(text)


def test_ingest_is_exactly_once_whatever_the_order(catalog: Catalog, tmp_path: Path) -> None:
    local = tmp_path / "metrics.csv"
    local.write_text("step,loss\n1,0.5\n")
    catalog.set_file(RUN_ID, "metrics.csv", sync_status="synced")
    assert ingest_file(catalog, RUN_ID, "metrics.csv", local) == 1
    assert ingest_file(catalog, RUN_ID, "metrics.csv", local) == 0  # a replay adds nothing
    with open(local, "a") as fh:
        fh.write("2,0.25\n3,0.1")
    assert ingest_file(catalog, RUN_ID, "metrics.csv", local) == 1
    assert ingest_file(catalog, RUN_ID, "metrics.csv", local, final=True) == 1
    assert ingest_file(catalog, RUN_ID, "metrics.csv", local, final=True) == 0
    # A stale writer that read the old position loses the compare-and-set.
    _, state = parse_new(ParseState(CSV), b"step,loss\n1,0.5\n")
    assert not catalog.store_metrics(
        RUN_ID, "metrics.csv", [], expect_offset=state.offset, offset=99, state_json="{}"
    )
    assert [r[0] for r in catalog.metric_rows(RUN_ID)] == [1, 2, 3]


def test_unreadable_parse_state_means_parse_again(catalog: Catalog, tmp_path: Path) -> None:
    local = tmp_path / "m.jsonl"
    local.write_text('{"step": 1, "loss": 2}\n')
    catalog.set_file(RUN_ID, "m.jsonl", sync_status="synced")
    ingest_file(catalog, RUN_ID, "m.jsonl", local)
    with catalog._write() as conn:
        conn.execute("UPDATE files SET parse_state = 'garbage'")
    ingest_file(catalog, RUN_ID, "m.jsonl", local)
    assert metric_count(catalog, RUN_ID) == 1


async def test_verify_of_identical_files_reads_no_file_data(
    catalog: Catalog, home: Path, source: InProcessSource
) -> None:
    run_dir = source.run_dir()
    (run_dir / "config.yaml").write_text("lr: 0.1\n")
    (run_dir / "train.log").write_text("epoch 1\n" * 30)
    (run_dir / "metrics.csv").write_text("step,loss\n1,0.5\n")
    (run_dir / "model.pt").write_bytes(os.urandom(3_000_000))
    for path in run_dir.iterdir():
        age(path)
    await new_sync(catalog, home, source).run(final=True)
    for _ in range(2):
        before = source.bytes_read
        results = await new_sync(catalog, home, source).run(verify=True)
        assert {r.status for r in results} == {"synced"} and len(results) == 4
        assert source.bytes_read == before, [r for r in results if r.fetched]
        assert sum(r.fetched for r in results) == 0
