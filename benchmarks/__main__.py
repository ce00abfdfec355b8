"""`python -m benchmarks [--quick] [--only NAME]`: run, print one table, exit 1 on a miss."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from benchmarks import (
    Options,
    agent_cost,
    catalog_speed,
    cli_commands,
    cli_startup,
    components,
    connect,
    controller_cost,
    grid,
    history,
    queue_latency,
    runs,
    scale,
    slurm,
    sync,
    tui,
)
from benchmarks.table import Row, failed_row, render

BENCHMARKS: dict[str, Callable[[Options], list[Row]]] = {
    "connect": connect.run,
    "cli": cli_startup.run,
    "commands": cli_commands.run,
    "agent": agent_cost.run,
    "controller": controller_cost.run,
    "scale": scale.run,
    "runs": runs.run,
    "queue": queue_latency.run,
    "scheduler": queue_latency.run_scheduler,
    "catalog": catalog_speed.run,
    "tui": tui.run,
    "sync": sync.run,
    "components": components.run,
    "history": history.run,
    "grid": grid.run,
    "slurm": slurm.run,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="cvtui against plain ssh and python, measured side by side in one run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer runs and shorter windows (a smoke run)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print a cProfile of the in-process measurements (connect, controller) to stderr",
    )
    parser.add_argument(
        "--history-hours",
        type=int,
        metavar="N",
        help="simulated hours of telemetry for `history` (default: a year, 8760; --quick: 30)",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    options = Options(quick=args.quick, profile=args.profile, history_hours=args.history_hours)
    rows: list[Row] = []
    for name in args.only or list(BENCHMARKS):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            rows.extend(BENCHMARKS[name](options))
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            rows.append(failed_row(name, exc))
        print(f"  {name}: {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    print(render(rows))
    return 1 if any(row.passed is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
