"""Sync against OpenSSH tools on one lab host: fresh copy, a 1% change, CSV appends, metrics.

Every baseline runs in the same process run, on the same sshd and the same files:
`ssh host cat f > local` (and scp, rsync) for a fresh copy, `rsync` for a scattered change.
Wire bytes are TCP payload bytes (SSH framing included): `ss` reads cvtui's connection, and
OpenSSH's own "Transferred: received N bytes" (ssh -v) counts rsync's.
"""

from __future__ import annotations

import asyncio
import filecmp
import getpass
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import yaml

from benchmarks import Options
from benchmarks.sandbox import ssh_command, temporary_lab
from benchmarks.table import Row, Target
from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine, HostSession
from cvtui.engine.ssh_files import SshSource
from cvtui.engine.sync import RunSync
from cvtui.inventory import load_inventory
from cvtui.lab import Lab, LabHostSpec
from cvtui.metrics_parse import CSV, MetricRow, ParseState, parse_new
from cvtui.submit import prepare_runs, submit

HOST = "bench-sync"
RUN_ID = "0benchsync000000000000000a"
MIB = 1 << 20
BIG, QUICK_BIG = 1024 * MIB, 256 * MIB
CHANGE_BLOCK = 64 << 10
APPENDS = (1000, 1_000_000)  # bytes appended to a CSV per sync, small and large
APPEND_REPEATS = 5
LATENCY_ROWS, QUICK_LATENCY_ROWS = 100, 40
INGEST_ROWS, QUICK_INGEST_ROWS = 1_000_000, 300_000
INGEST_TARGET_S = 2.0  # seconds per million rows: 500,000 rows/s


def write_random(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        for start in range(0, size, 16 * MIB):
            fh.write(os.urandom(min(16 * MIB, size - start)))


def scatter_changes(path: Path, count: int, seed: int) -> None:
    """Overwrite `count` random 64 KiB stretches (not block aligned) in place."""
    rng = random.Random(seed)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        for _ in range(count):
            fh.seek(rng.randrange(size - CHANGE_BLOCK))
            fh.write(rng.randbytes(CHANGE_BLOCK))


def settle(work_dir: Path, size: int) -> None:
    """The same start for every contender: no dirty pages, and `size` bytes of page cache
    freed just now.

    On a VM whose balloon reports free pages to the hypervisor (this machine's does), the
    first write to a page that was free for a few seconds faults on the host: writing a new
    1 GiB file then costs ~2 s of CPU instead of ~0.2 s, unless pages were freed moments
    before. Which contender got such pages decided the ratios more than their own code did
    (the same rsync delta took 0.3 s or 2.0 s). So each one writes into pages freed at once
    before its clock starts.
    """
    scratch = work_dir / "settle.tmp"
    zeros = bytes(64 * MIB)
    with open(scratch, "wb") as fh:
        for _ in range(size // len(zeros) + 4):
            fh.write(zeros)
    scratch.unlink()
    os.sync()


def tcp_received(local_port: int) -> int:
    """bytes_received of the TCP connection whose local port this is (from `ss -ti`)."""
    out = subprocess.run(
        ["ss", "-tinH", "src", f"127.0.0.1:{local_port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = re.search(r"bytes_received:(\d+)", out)
    return int(found.group(1)) if found else 0


def ssh_options(lab: Lab) -> list[str]:
    return ssh_command(lab, HOST, "true")[1:-2]  # -p PORT -i KEY -o ... without user@host, cmd


def ssh_cat(lab: Lab, remote: Path, local: Path) -> float:
    """Seconds of `ssh host cat f > local`."""
    settle(local.parent, remote.stat().st_size)
    start = time.perf_counter()
    with open(local, "wb") as out:
        subprocess.run(ssh_command(lab, HOST, f"cat {remote}"), stdout=out, check=True)
    elapsed = time.perf_counter() - start
    local.unlink()
    return elapsed


def scp_pull(lab: Lab, remote: Path, local: Path) -> float:
    scp = ["scp", "-q", *ssh_options(lab)]
    scp[scp.index("-p")] = "-P"
    settle(local.parent, remote.stat().st_size)
    start = time.perf_counter()
    subprocess.run([*scp, f"{getpass.getuser()}@127.0.0.1:{remote}", str(local)], check=True)
    elapsed = time.perf_counter() - start
    local.unlink()
    return elapsed


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)


def rsync_pull(lab: Lab, remote: Path, local: Path) -> tuple[float, int, int]:
    """(seconds, wire bytes received by ssh, rsync's own bytes received) of one rsync pull."""
    shell = " ".join(["ssh", "-v", *ssh_options(lab)])
    argv = ["rsync", "--stats", "-e", shell, f"{getpass.getuser()}@127.0.0.1:{remote}", str(local)]
    settle(local.parent, remote.stat().st_size)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    wire = re.search(r"Transferred: sent \d+, received (\d+) bytes", done.stderr)
    payload = re.search(r"Total bytes received: ([\d,]+)", done.stdout)
    assert wire and payload, done.stdout + done.stderr
    return elapsed, int(wire.group(1)), int(payload.group(1).replace(",", ""))


def write_inventory(lab: Lab, directory: Path, *, quiet: bool, python: str = "python3") -> Path:
    """The lab's inventory; quiet: telemetry once a minute, so it does not count in the bytes."""
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["hosts"][HOST]["python"] = python
    if quiet:
        document["policy"] = {
            "interval": "60s",
            "stale_after": "120s",
            "disconnected_after": "300s",
        }
    path = directory / f"inventory-{'quiet' if quiet else 'live'}-{Path(python).name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@asynccontextmanager
async def connected(inventory_path: Path, home: Path) -> AsyncIterator[tuple[HostSession, Catalog]]:
    """An engine's session to the host, connected, for RunSync to borrow."""
    catalog = Catalog.open_home(home)
    engine = Engine(load_inventory(inventory_path), catalog)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    try:
        await engine.wait_answered(30)
        session = engine.sessions[HOST]
        if session.client is None:
            raise RuntimeError(f"{HOST} did not connect")
        # A new connection reads the host's packages once (a child python on the host, for
        # run provenance); let it finish so the copies are timed on a settled connection.
        deadline = time.monotonic() + 20
        while catalog.host_environment(HOST) is None and time.monotonic() < deadline:  # noqa: ASYNC110 (a catalog row, no event to wait on)
            await asyncio.sleep(0.05)
        yield session, catalog
    finally:
        stop.set()
        await task
        catalog.close()


async def timed_sync(
    session: HostSession, catalog: Catalog, home: Path, globs: list[str], size: int = 0
) -> tuple[float, int, int]:
    """(seconds, file bytes fetched, wire bytes received) of one sync pass over the run dir
    (size: the bytes it may write, for settle)."""
    assert session.conn is not None
    await asyncio.to_thread(settle, home, size)  # the start every contender gets
    port = session.conn.get_extra_info("sockname")[1]
    before = tcp_received(port)
    start = time.perf_counter()
    results = await RunSync(catalog, home, SshSource(session), RUN_ID, globs).run()
    elapsed = time.perf_counter() - start
    if any(r.status != "synced" for r in results):
        raise RuntimeError(f"sync failed: {results}")
    return elapsed, sum(r.fetched for r in results), tcp_received(port) - before


async def channel_floor(session: HostSession, remote: Path, home: Path, size: int) -> float:
    """Seconds to read the file through `cat` on one asyncssh channel of the engine's
    connection, the bytes counted and dropped: what asyncssh's receive path costs alone."""
    assert session.conn is not None
    await asyncio.to_thread(settle, home, 0)
    got = 0

    class Drop(asyncssh.SSHClientSession[bytes]):
        def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
            nonlocal got
            got += len(data)

    start = time.perf_counter()
    chan, _ = await session.conn.create_session(
        Drop, f"cat {shlex.quote(str(remote))}", encoding=None, window=8 << 20
    )
    await chan.wait_closed()
    elapsed = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"cat on a channel gave {got} of {size} bytes")
    return elapsed


HOST_PYTHONS = (
    ("python3", "host python3"),  # the lab's: blake2b unless that python has xxhash
    (sys.executable, "host with xxhash"),  # cvtui's own interpreter has it
)


async def copies(lab: Lab, work: Path, size: int, options: Options) -> list[Row]:
    """A fresh copy against ssh cat (scp, rsync in the notes), then a 1% change against rsync;
    once per host interpreter, since the host's hash (blake2b or xxh3) weighs on both."""
    run_dir = lab.host_dir(HOST) / "root" / "runs" / RUN_ID / "work"  # the run's work dir
    run_dir.mkdir(parents=True, mode=0o700)
    remote = run_dir / "model.pt"
    write_random(remote, size)
    rows: list[Row] = []
    cat_s = await asyncio.to_thread(ssh_cat, lab, remote, work / "cat.pt")
    notes = [f"ssh cat {size / cat_s / 1e6:.0f} MB/s"]
    if not options.quick:
        scp_s = await asyncio.to_thread(scp_pull, lab, remote, work / "scp.pt")
        notes.append(f"scp {size / scp_s / 1e6:.0f} MB/s")
    rsync_copy = work / "rsync.pt"
    rsync_s, _, _ = await asyncio.to_thread(rsync_pull, lab, remote, rsync_copy)
    notes.append(f"rsync {size / rsync_s / 1e6:.0f} MB/s")
    count = size // 100 // CHANGE_BLOCK
    for seed, (python, label) in enumerate(HOST_PYTHONS, start=1):
        home = work / f"home-{seed}"
        inventory = write_inventory(lab, work, quiet=True, python=python)
        async with connected(inventory, home) as (session, catalog):
            algo = await SshSource(session).hash_algorithm()
            assert session.conn is not None
            cipher = session.conn.get_extra_info("recv_cipher")
            if seed == 1:
                floor_s = await channel_floor(session, remote, home, size)
                rows.append(
                    Row(
                        f"asyncssh alone: cat {size // MIB} MiB, bytes dropped",
                        floor_s,
                        "s",
                        cat_s,
                        "ssh cat",
                        None,
                        "the floor of any copy over asyncssh here: one channel, no hashing, "
                        "no writing, while ssh cat also writes the file",
                    )
                )
            fresh_s, _, _ = await timed_sync(session, catalog, home, ["*.pt"], size)
            mirror = home / "runs" / RUN_ID / "model.pt"
            if not filecmp.cmp(mirror, remote, shallow=False):
                raise RuntimeError("the synced copy differs")
            rows.append(
                Row(
                    f"sync fresh copy {size // MIB} MiB ({label})",
                    fresh_s,
                    "s",
                    cat_s,
                    "ssh cat",
                    Target(1.0, on_ratio=True),
                    f"cvtui {size / fresh_s / 1e6:.0f} MB/s with {algo}, {cipher}; "
                    + ", ".join(notes),
                )
            )
            await asyncio.sleep(1.1)  # past the racy window of the fresh copy
            scatter_changes(remote, count, seed=seed)
            delta_s, fetched, wire = await timed_sync(session, catalog, home, ["*.pt"], size)
            if not filecmp.cmp(mirror, remote, shallow=False):
                raise RuntimeError("the delta-synced copy differs")
        rsync_s, rsync_wire, rsync_payload = await asyncio.to_thread(
            rsync_pull, lab, remote, rsync_copy
        )
        if seed == 1:
            rows.append(
                Row(
                    f"sync 1% change: bytes ({count} x 64 KiB scattered)",
                    wire / 1e6,
                    "MB",
                    rsync_wire / 1e6,
                    "rsync",
                    Target(1.0, on_ratio=True),
                    f"changed {count * CHANGE_BLOCK / 1e6:.1f} MB; cvtui file data "
                    f"{fetched / 1e6:.1f} MB; rsync payload {rsync_payload / 1e6:.1f} MB "
                    "(both: TCP bytes in)",
                )
            )
        rows.append(
            Row(
                f"sync 1% change: time ({label})",
                delta_s,
                "s",
                rsync_s,
                "rsync",
                Target(1.0, on_ratio=True),
                f"the host hashes {size // MIB} MiB with {algo}; local digests are kept",
            )
        )
    return rows


async def appends(lab: Lab, work: Path) -> Row:
    """Wire bytes of syncing a CSV that grew by 1 kB and by 1 MB: per-byte cost and fixed cost."""
    run_dir = lab.host_dir(HOST) / "root" / "runs" / RUN_ID / "work"  # the run's work dir
    csv_path = run_dir / "metrics.csv"
    rng = random.Random(3)

    def lines(total: int) -> bytes:
        out = bytearray()
        while len(out) < total:
            out += f"{len(out)},{rng.random():.6f},{rng.random():.6f}\n".encode()
        return bytes(out[: total - 1]) + b"\n"

    csv_path.write_bytes(b"step,loss,acc\n" + lines(1_000_000))
    home = work / "home-csv"
    inventory = write_inventory(lab, work, quiet=True)
    wires: dict[int, list[int]] = {n: [] for n in APPENDS}
    fetched: dict[int, list[int]] = {n: [] for n in APPENDS}
    async with connected(inventory, home) as (session, catalog):
        await timed_sync(session, catalog, home, ["*.csv"])
        for _ in range(APPEND_REPEATS):
            for size in APPENDS:
                append(csv_path, lines(size))
                _, got, wire = await timed_sync(session, catalog, home, ["*.csv"])
                wires[size].append(wire)
                fetched[size].append(got)
        if (home / "runs" / RUN_ID / "metrics.csv").read_bytes() != csv_path.read_bytes():
            raise RuntimeError("the appended CSV differs")
    small, large = (statistics.median(wires[n]) for n in APPENDS)
    per_byte = (large - small) / (APPENDS[1] - APPENDS[0])
    fixed = small - per_byte * APPENDS[0]
    return Row(
        "sync CSV append: wire bytes per appended byte",
        per_byte,
        "x",
        None,
        "",
        Target(1.05),
        f"1 kB append: {small:.0f} B in "
        f"(file data {statistics.median(fetched[APPENDS[0]]):.0f} B); "
        f"fixed cost per sync {fixed:.0f} B (listing, digest check, SFTP open/read/close)",
    )


WRITER = r"""
import sys, time
n = int(sys.argv[1])
with open("metrics.csv", "w") as fh:
    fh.write("step,t\n")
    fh.flush()
    for i in range(n):
        time.sleep(0.1)
        fh.write(f"{i},{time.time():.6f}\n")
        fh.flush()
"""


async def latency(lab: Lab, work: Path, rows_wanted: int) -> Row:
    """Seconds from a run writing a CSV row to the row being in the catalog (engine, live)."""
    code = work / "latency"
    code.mkdir()
    (code / "writer.py").write_text(WRITER)
    config = code / "run.yaml"
    config.write_text(
        yaml.safe_dump({"name": "latency", "command": f"python3 writer.py {rows_wanted}"})
    )
    inventory = load_inventory(write_inventory(lab, work, quiet=False))
    home = work / "home-latency"
    catalog = Catalog.open_home(home)
    reader = Catalog.open_home(home)
    seen: dict[float, float] = {}
    done = threading.Event()
    [run_id] = submit(catalog, home, prepare_runs(config, inventory))

    def poll() -> None:
        while not done.is_set():
            now = time.time()
            for step, _key, _file, value, _text in reader.metric_rows(run_id, ["t"]):
                if step not in seen and value is not None:
                    seen[step] = now - value
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    engine = Engine(inventory, catalog)
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(stop))
    poller.start()
    try:
        deadline = time.monotonic() + rows_wanted * 0.1 + 60
        while len(seen) < rows_wanted and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # the poller thread fills `seen`
    finally:
        done.set()
        poller.join()
        stop.set()
        await task
        catalog.close()
        reader.close()
    if len(seen) < rows_wanted:
        raise RuntimeError(f"only {len(seen)} of {rows_wanted} rows reached the catalog")
    delays = sorted(seen.values())
    p95 = delays[int(0.95 * (len(delays) - 1))]
    return Row(
        "sync metric visible in catalog (p95)",
        p95,
        "s",
        None,
        "",
        Target(1.0, strict=True),
        f"median {statistics.median(delays) * 1000:.0f} ms over {len(delays)} rows written "
        "every 100 ms; agent polls file stats every 200 ms",
    )


def ingest(rows_wanted: int) -> Row:
    """Catalog inserts of metric rows (store_metrics) against raw executemany, one transaction."""
    import sqlite3

    rows = [
        MetricRow(i // 4, ("loss", "acc", "lr", "grad_norm")[i % 4], i * 0.001, None)
        for i in range(rows_wanted)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.open_home(Path(tmp) / "home")
        catalog.set_file(RUN_ID, "metrics.csv", sync_status="synced")
        start = time.perf_counter()
        catalog.store_metrics(
            RUN_ID, "metrics.csv", rows, expect_offset=0, offset=1, state_json="{}"
        )
        ours = time.perf_counter() - start
        catalog.close()
        conn = sqlite3.connect(Path(tmp) / "raw.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(
            "CREATE TABLE m (run_id TEXT, file TEXT, step, key TEXT, value REAL, text TEXT)"
        )
        plain = [(RUN_ID, "metrics.csv", *r) for r in rows]
        start = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO m VALUES (?, ?, ?, ?, ?, ?)", plain)
        conn.execute("COMMIT")
        raw = time.perf_counter() - start
        conn.close()
    text = "step,loss,acc,lr,grad_norm\n" + "".join(
        f"{i},{i * 0.001:.4f},{i * 0.002:.4f},0.001,{i % 7}\n" for i in range(rows_wanted // 4)
    )
    start = time.perf_counter()
    parsed, _ = parse_new(ParseState(CSV), text.encode())
    parse_s = time.perf_counter() - start
    per_million = 1e6 / rows_wanted
    return Row(
        "sync metrics ingest (per 1M rows)",
        ours * per_million,
        "s",
        raw * per_million,
        "raw executemany",
        Target(INGEST_TARGET_S),
        f"{rows_wanted / ours / 1000:.0f}k rows/s into chunked series; raw "
        f"{rows_wanted / raw / 1000:.0f}k rows/s, one row per value, no index; "
        f"CSV parsing {len(parsed) / parse_s / 1000:.0f}k rows/s",
    )


def run(options: Options) -> list[Row]:
    if shutil.which("rsync") is None:
        raise RuntimeError("rsync is not installed (apt-get install rsync): it is the baseline")
    size = QUICK_BIG if options.quick else BIG
    rows: list[Row] = []
    with temporary_lab(LabHostSpec(HOST, gpus=1)) as lab, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        async def measure() -> None:
            rows.extend(await copies(lab, work, size, options))
            rows.append(await appends(lab, work))
            rows.append(
                await latency(lab, work, QUICK_LATENCY_ROWS if options.quick else LATENCY_ROWS)
            )

        asyncio.run(measure())
    rows.append(ingest(QUICK_INGEST_ROWS if options.quick else INGEST_ROWS))
    return rows
