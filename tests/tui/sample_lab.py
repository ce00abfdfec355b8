"""A fixed catalog for dashboard tests: hosts in every state, runs in every state, history, a log.

Everything is stamped relative to NOW so a dashboard run with ``clock=lambda: NOW`` draws the
same screen every time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from cvtui.catalog import Catalog
from cvtui.inventory import Inventory, parse_inventory
from cvtui.metrics_parse import MetricRow
from remote_agent.disk_usage import DirUsage, PathUsage
from remote_agent.protocol import GpuProcess, GpuSample, HostSample, Telemetry

NOW = 1_750_000_000.0  # a fixed "now" for the clock, 2025-06-15 15:06:40 UTC
GIB = 1 << 30
HISTORY_S = 120  # seconds of 1 Hz telemetry history per host

INVENTORY = """
hosts:
  gpu-01: {address: 10.0.0.1, tags: [a100]}
  gpu-02: {address: 10.0.0.2, tags: ["3090"]}
  gpu-03: {address: 10.0.0.3, tags: [h100]}
  gpu-04: {address: 10.0.0.4}
"""

RUN_IDS = {
    "resnet": "01jxq3v7k2m8c4r9t6w1y5b0dn",
    "vit": "01jxq3x2p9f4h7j1m5q8s3v6zx",
    "big": "01jxq40b6d1g5k8n2r7t4w9y3c",
    "ablation-low": "01jxq42e8h3m6p1s5v9x2a7d4f",
    "ablation-urgent": "01jxq44g1k5n8r3t7w2y6b9e5h",
    "baseline": "01jxp0a3c6e9g2j5m8p1r4t7wb",
    "flaky": "01jxp2d5f8h1k4n7q0s3v6y9bd",
    "old": "01jxk7m2p5r8t1w4y7b0d3f6hk",
}


@dataclass(frozen=True)
class HostSpec:
    name: str
    model: str
    gpus: int
    mem_gib: int
    tags: tuple[str, ...] = ()


HOSTS = (
    HostSpec("gpu-01", "A100-SXM4-80GB", 4, 80, ("a100",)),
    HostSpec("gpu-02", "RTX-3090-24GB", 8, 24, ("3090",)),
    HostSpec("gpu-03", "H100-SXM5-80GB", 2, 80, ("h100",)),
    HostSpec("gpu-04", "V100-SXM2-32GB", 2, 32),
)


def inventory() -> Inventory:
    return parse_inventory(INVENTORY)


def processes_for(host: str, index: int) -> tuple[GpuProcess, ...]:
    """Who uses which GPU: our runs, and a colleague's job in a container on gpu-02."""
    if host == "gpu-01" and index == 0:
        return (
            GpuProcess(
                4242, "alice", "python train.py --lr 0.1", None, 30 * GIB, RUN_IDS["resnet"]
            ),
        )
    if host == "gpu-02" and index in (0, 1):
        return (
            GpuProcess(
                5150 + index, "alice", "python vit.py --lr 0.001", None, 20 * GIB, RUN_IDS["vit"]
            ),
        )
    if host == "gpu-02" and index == 5:
        return (GpuProcess(7777, "bob", "jupyter-kernel", "c0ffee12", 11 * GIB, None),)
    return ()


def sample(host: HostSpec, t: int) -> Telemetry:
    gpus = []
    for index in range(host.gpus):
        procs = processes_for(host.name, index)
        busy = bool(procs)
        wave = 0.5 + 0.5 * math.sin((t + 7 * index) / 9.0)
        util = round(60 + 38 * wave) if busy else round(4 * wave)
        used = sum(p.mem or 0 for p in procs) + GIB // 2
        gpus.append(
            GpuSample(
                index=index,
                uuid=f"GPU-{host.name}-{index}",
                name=host.model,
                util=float(util),
                mem_used=used,
                mem_total=host.mem_gib * GIB,
                temperature=float(35 + util // 3),
                power=float(60 + util * 2.5),
                power_limit=400.0,
                fan=None,
                processes=procs,
            )
        )
    return Telemetry(
        time=float(t),
        backend="simulated",
        host=HostSample(
            cpu_percent=12.0 + (t % 5),
            load1=1.5,
            load5=1.0,
            load15=0.5,
            mem_used=96 * GIB,
            mem_total=512 * GIB,
            disk_free=1900 * GIB,
            disk_total=4000 * GIB,
        ),
        gpus=tuple(gpus),
    )


@dataclass(frozen=True)
class FakeHost:
    name: str
    address: str = "10.0.0.1"
    port: int = 22
    user: str | None = "researcher"
    tags: tuple[str, ...] = ()


def run_row(
    key: str,
    name: str,
    *,
    priority: str = "normal",
    gpus: int = 1,
    submitted: float,
    user: str = "alice",
    project: str = "vision",
    params: dict | None = None,
) -> dict:
    params = params or {}
    return {
        "id": RUN_IDS[key],
        "name": name,
        "project": project,
        "user": user,
        "priority": priority,
        "command": f"python3 train.py --name {key}",
        "params": params,
        "config": {"model": key, "epochs": 10, **params},
        "spec": {"name": name},
        "resources": {"gpus": gpus},
        "retries": 0,
        "code_hash": "c0de" * 8,
        "submitted": submitted,
    }


def build_catalog(home: Path) -> Catalog:
    """The catalog at home/catalog.db, filled; the caller closes it."""
    home.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open_home(home)
    catalog.sync_hosts([FakeHost(h.name, tags=h.tags) for h in HOSTS], now=NOW - 3600)
    for host in HOSTS:
        if host.name == "gpu-03":
            continue
        received = NOW - 12 if host.name == "gpu-04" else NOW - 0.5
        samples = [("x", sample(host, t)) for t in range(1000, 1000 + HISTORY_S)]
        catalog.record_telemetry([(host.name, s) for _, s in samples], received=received)
    catalog.set_host_state("gpu-03", "error", "auth failed: server refused our key", now=NOW - 60)
    add_runs(catalog)
    write_log(home, RUN_IDS["resnet"], lines=200)
    add_metrics(catalog)
    add_files(catalog)
    add_disk_usage(catalog)
    return catalog


def add_disk_usage(catalog: Catalog) -> None:
    """gpu-02's /home as its agent scanned it: one dir unreadable, one uid without a name."""
    home = PathUsage(
        "/home",
        NOW - 600,
        (
            DirUsage("alice", 1000, "alice", 412 * 2**30, 183_204, NOW - 600),
            DirUsage("bob", 1001, "bob", 37 * 2**30, 9_812, NOW - 600),
            DirUsage(
                "old",
                1042,
                "1042",
                5 * 2**30,
                120,
                NOW - 600,
                True,
                "permission denied: /home/old/.cache",
            ),
        ),
        True,
    )
    catalog.record_disk_usage("gpu-02", [home], ["/home"])


def add_files(catalog: Catalog) -> None:
    """Synced files of the resnet run, in each sync state (needs the files table)."""
    run_id = RUN_IDS["resnet"]
    catalog.set_file(
        run_id, "output.log", size=6625, synced_size=6625, sync_status="synced", now=NOW
    )
    catalog.set_file(
        run_id, "metrics.csv", size=4096, synced_size=4096, sync_status="synced", now=NOW
    )
    catalog.set_file(
        run_id, "ckpt/last.pt", size=2 * GIB, synced_size=GIB, sync_status="syncing", now=NOW
    )


def add_runs(catalog: Catalog) -> None:
    rows = [
        run_row("resnet", "resnet[lr=0.1]", submitted=NOW - 900, params={"lr": 0.1}),
        run_row("vit", "vit-sweep[lr=0.001]", gpus=2, submitted=NOW - 800, params={"lr": 0.001}),
        run_row(
            "big",
            "bigmodel",
            gpus=8,
            priority="high",
            submitted=NOW - 600,
            user="carol",
            project="llm",
        ),
        run_row(
            "ablation-low",
            "ablation[seed=1]",
            priority="low",
            submitted=NOW - 500,
            params={"seed": 1},
        ),
        run_row(
            "ablation-urgent",
            "ablation[seed=2]",
            priority="urgent",
            submitted=NOW - 400,
            params={"seed": 2},
        ),
        run_row("baseline", "baseline", submitted=NOW - 7200, user="bob"),
        run_row("flaky", "flaky", submitted=NOW - 5000),
        run_row("old", "old-try", submitted=NOW - 86400 * 2, project="misc"),
    ]
    catalog.insert_runs(rows, now=NOW - 7200)

    def start(key: str, host: str, gpus: list[int], at: float) -> None:
        catalog.transition_run(
            RUN_IDS[key],
            "dispatching",
            expect=["queued"],
            host=host,
            gpus=gpus,
            dispatched=at,
            now=at,
        )
        catalog.transition_run(
            RUN_IDS[key],
            "running",
            expect=["dispatching"],
            started=at + 1,
            run_dir=f"/root/runs/{RUN_IDS[key]}",
            now=at + 1,
        )

    start("resnet", "gpu-01", [0], NOW - 880)
    catalog.update_run(RUN_IDS["resnet"], progress=42.0, progress_msg="epoch 4/10", now=NOW - 5)
    start("vit", "gpu-02", [0, 1], NOW - 780)
    catalog.update_run(RUN_IDS["vit"], progress=75.0, progress_msg="epoch 15/20", now=NOW - 5)
    start("baseline", "gpu-01", [1], NOW - 7100)
    catalog.transition_run(
        RUN_IDS["baseline"],
        "succeeded",
        expect=["running"],
        exit_code=0,
        ended=NOW - 3500,
        progress=100.0,
        now=NOW - 3500,
    )
    start("flaky", "gpu-02", [3], NOW - 4900)
    catalog.transition_run(
        RUN_IDS["flaky"],
        "failed",
        expect=["running"],
        exit_code=1,
        ended=NOW - 4700,
        reason="exit code 1",
        now=NOW - 4700,
    )
    catalog.transition_run(
        RUN_IDS["old"],
        "cancelled",
        expect=["queued"],
        reason="cancelled before it started",
        ended=NOW - 86000,
        now=NOW - 86000,
    )
    catalog.update_run(
        RUN_IDS["big"], reason="needs 8 GPUs; best host gpu-02 has 5 free", now=NOW - 10
    )
    catalog.update_run(
        RUN_IDS["ablation-low"], reason="behind 2 runs of higher priority", now=NOW - 10
    )
    catalog.update_run(
        RUN_IDS["ablation-urgent"], reason="needs 1 GPU with 40.0GiB free; none has", now=NOW - 10
    )


def write_log(home: Path, run_id: str, lines: int) -> Path:
    path = home / "runs" / run_id / ".cvtui" / "output.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(lines):
            fh.write(
                f"step {i:5d} loss {2.0 * math.exp(-i / 60):.4f} acc {1 - math.exp(-i / 50):.3f}\n"
            )
        fh.write("[PROGRESS:42:epoch 4/10]\n")
    return path


def add_metrics(catalog: Catalog) -> None:
    """Metric rows for two runs, stored as the engine stores a parsed metrics.csv."""
    for key, scale in (("resnet", 1.0), ("vit", 0.7)):
        run_id = RUN_IDS[key]
        rows = []
        for step in range(0, 200, 2):
            rows.append(MetricRow(float(step), "loss", scale * 2.0 * math.exp(-step / 60), None))
            rows.append(MetricRow(float(step), "acc", 1 - math.exp(-step / (50 * scale)), None))
        catalog.set_file(run_id, "metrics.csv", sync_status="synced", now=NOW)
        catalog.store_metrics(
            run_id, "metrics.csv", rows, expect_offset=0, offset=1, state_json="{}"
        )
