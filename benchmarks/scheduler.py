"""Time of one scheduling pass over a busy lab: 10,000 queued runs, 100 hosts x 8 GPUs."""

from __future__ import annotations

import random
import statistics
import time

from cvtui.engine.scheduler import GIB, GpuState, HostState, QueuedRun, plan

RUNS = 10_000
HOSTS = 100
GPUS_PER_HOST = 8
REPEATS = 21
QUICK_REPEATS = 5
TARGET_MS = 50.0


def busy_lab(seed: int = 0) -> list[HostState]:
    """Hosts as a lab looks mid-week: most GPUs leased, a few foreign users, some hosts down."""
    rng = random.Random(seed)
    now = 1_700_000_000.0
    hosts = []
    for h in range(HOSTS):
        gpus = []
        for index in range(GPUS_PER_HOST):
            leased = rng.random() < 0.6
            foreign = not leased and rng.random() < 0.05
            used = rng.randrange(0, 70) * GIB if leased or foreign else rng.randrange(0, 2) * GIB
            gpus.append(
                GpuState(
                    index=index,
                    mem_total=80 * GIB,
                    mem_used=used,
                    util=rng.uniform(20, 100) if leased or foreign else 0.0,
                    leased_by=f"run-{h}-{index}" if leased else None,
                    foreign=foreign,
                    ours=leased,
                    telemetry_time=now - rng.random() * 2,
                )
            )
        hosts.append(
            HostState(
                name=f"gpu-{h:03d}",
                healthy=rng.random() > 0.03,
                drained=rng.random() < 0.02,
                tags=("a100",) if h < HOSTS // 2 else ("h100", "ib"),
                max_runs=8 if h % 5 == 0 else None,
                running=sum(1 for g in gpus if g.leased_by),
                allowed_gpus=(0, 1, 2, 3, 4, 5) if h % 10 == 1 else None,
                gpu_order=(7, 6, 5, 4, 3, 2, 1, 0) if h % 7 == 0 else None,
                gpus=tuple(gpus),
            )
        )
    return hosts


def long_queue(hosts: list[HostState], seed: int = 1) -> list[QueuedRun]:
    """A queue of mixed sizes and constraints; a twentieth of the runs name one host."""
    rng = random.Random(seed)
    priorities = ["urgent"] * 1 + ["high"] * 10 + ["normal"] * 70 + ["low"] * 19
    runs = []
    for i in range(RUNS):
        pinned = rng.random() < 0.05
        runs.append(
            QueuedRun(
                run_id=f"r{i:05d}",
                priority=rng.choice(priorities),
                submitted=1_700_000_000.0 + rng.randrange(0, 86_400),
                gpus=rng.choice([0, 1, 1, 1, 2, 2, 4, 8]),
                min_free_mem=rng.choice([0, 0, 20 * GIB, 40 * GIB, 70 * GIB]),
                hosts=(rng.choice(hosts).name,) if pinned else (),
                tags=rng.choice([(), (), ("a100",), ("h100",), ("h100", "ib")]),
            )
        )
    return runs


def bench_scheduler(quick: bool) -> dict[str, float | int]:
    """Median wall time of plan() over the busy lab and the long queue, in milliseconds."""
    hosts = busy_lab()
    queue = long_queue(hosts)
    timings = []
    for _ in range(QUICK_REPEATS if quick else REPEATS):
        start = time.perf_counter()
        plan(queue, hosts)
        timings.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": statistics.median(timings),
        "runs": RUNS,
        "hosts": HOSTS,
        "gpus": HOSTS * GPUS_PER_HOST,
    }


if __name__ == "__main__":
    print(bench_scheduler(quick=False))
