"""The catalog writer of `benchmarks.tui`: plays a busy daemon, or runs a bare Textual app.

`python -m benchmarks.tui_feed feed HOME SECONDS` holds the engine lock of HOME and writes 100
hosts x 8 GPUs of telemetry at 1 Hz (0.2 s batches, as the engine flushes) plus run progress;
`python -m benchmarks.tui_feed bare` is the baseline app for the key latency.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOSTS = 100
GPUS = 8
RUNS = 300
ROWS = 50  # lines of the bare app's screen
FLUSH_S = 0.2  # the engine writes telemetry in batches this far apart
GIB = 1 << 30


@dataclass(frozen=True)
class FakeHost:
    """The fields Catalog.sync_hosts reads of an inventory host."""

    name: str
    address: str
    port: int = 22
    user: str | None = "researcher"
    tags: tuple[str, ...] = ()


def host_names() -> list[str]:
    return [f"host-{n:03d}" for n in range(HOSTS)]


def write_inventory(path: Path) -> None:
    hosts = {
        name: {"address": f"10.0.{n // 250}.{n % 250 + 1}", "tags": ["a100" if n % 2 else "h100"]}
        for n, name in enumerate(host_names())
    }
    path.write_text(json.dumps({"hosts": hosts}))  # JSON is YAML


def sample(rng: random.Random, busy: dict[int, str], now: float) -> Any:
    from remote_agent.protocol import GpuProcess, GpuSample, HostSample, Telemetry

    gpus = []
    for index in range(GPUS):
        run_id = busy.get(index)
        procs = (GpuProcess(1000 + index, "alice", "python train.py", None, 20 * GIB, run_id),)
        gpus.append(
            GpuSample(
                index=index,
                uuid=f"GPU-{index}",
                name="A100-SXM4-80GB",
                util=float(rng.randint(60, 100) if run_id else rng.randint(0, 3)),
                mem_used=(21 if run_id else 1) * GIB,
                mem_total=80 * GIB,
                temperature=float(rng.randint(35, 80)),
                power=float(rng.randint(60, 400)),
                power_limit=400.0,
                fan=None,
                processes=procs if run_id else (),
            )
        )
    host = HostSample(30.0, 2.0, 2.0, 2.0, 100 * GIB, 512 * GIB, 2000 * GIB, 4000 * GIB)
    return Telemetry(time=now, backend="nvml", host=host, gpus=tuple(gpus))


def seed_runs(catalog: Any, now: float) -> dict[str, dict[int, str]]:
    """RUNS runs: a third running (one GPU each), a third ended, a third queued."""
    from cvtui.catalog import Catalog, new_run_id

    assert isinstance(catalog, Catalog)
    names = host_names()
    rows = [
        {
            "id": new_run_id(now - RUNS + i),
            "name": f"sweep[lr={i}]",
            "project": "bench",
            "user": "alice",
            "priority": "normal",
            "command": "python train.py",
            "params": {"lr": i},
            "config": {},
            "spec": {},
            "resources": {"gpus": 1},
            "retries": 0,
            "submitted": now - RUNS + i,
        }
        for i in range(RUNS)
    ]
    ids = catalog.insert_runs(rows, now=now)
    busy: dict[str, dict[int, str]] = {name: {} for name in names}
    for i, run_id in enumerate(ids[: 2 * RUNS // 3]):
        host, gpu = names[i % HOSTS], i // HOSTS
        catalog.transition_run(run_id, "running", host=host, gpus=[gpu], started=now - 100)
        if i < RUNS // 3:
            busy[host][gpu] = run_id
        else:
            catalog.transition_run(run_id, "succeeded", exit_code=0, ended=now - 10)
    for run_id in ids[2 * RUNS // 3 :]:
        catalog.update_run(run_id, reason="needs 1 free GPU; best host has 0")
    return busy


def feed(home: Path, seconds: float) -> None:
    """The writer process: hold the engine lock, then write telemetry like a busy engine."""
    from cvtui.catalog import Catalog
    from cvtui.engine.lock import EngineLock

    lock = EngineLock(home)
    lock.acquire()
    rng = random.Random(7)
    with Catalog.open_home(home) as catalog:
        names = host_names()
        catalog.sync_hosts([FakeHost(n, "10.0.0.1") for n in names])
        busy = seed_runs(catalog, time.time())
        running = [run for host in busy.values() for run in host.values()]
        print("ready", flush=True)
        per_batch = HOSTS * FLUSH_S
        deadline = time.monotonic() + seconds
        tick = 0
        while time.monotonic() < deadline:
            start = time.monotonic()
            chunk = names[int(tick * per_batch) % HOSTS :][: int(per_batch)]
            now = time.time()
            catalog.record_telemetry([(n, sample(rng, busy[n], now)) for n in chunk], received=now)
            if tick % 5 == 0:
                for run_id in rng.sample(running, 10):
                    catalog.update_run(run_id, progress=rng.uniform(0, 100), progress_msg="epoch")
            tick += 1
            time.sleep(max(0.0, FLUSH_S - (time.monotonic() - start)))
    lock.release()


def bare_app() -> None:
    """The baseline: a Textual app with two static screens switched by the same keys."""
    from textual.app import App, ComposeResult
    from textual.screen import Screen
    from textual.widgets import Static

    class Page(Screen[None]):
        def __init__(self, marker: str) -> None:
            super().__init__()
            self.marker = marker

        def compose(self) -> ComposeResult:
            yield Static(f"{self.marker}\n" + "host-000 healthy\n" * (ROWS - 2))

    class Bare(App[None]):
        MODES = {"1": lambda: Page("GPU UTIL"), "3": lambda: Page("HOST:GPUS")}  # noqa: RUF012

        async def on_mount(self) -> None:
            await self.switch_mode("1")

        async def on_key(self, event: object) -> None:
            key = getattr(event, "key", "")
            if key in ("1", "3"):
                await self.switch_mode(key)
            elif key == "q":
                self.exit()

    Bare().run()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "feed":
        feed(Path(sys.argv[2]), float(sys.argv[3]))
    elif sys.argv[1:] == ["bare"]:
        bare_app()
    else:
        sys.exit("usage: python -m benchmarks.tui_feed feed HOME SECONDS | bare")
