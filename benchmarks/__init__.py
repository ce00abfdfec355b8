"""Side-by-side benchmarks of cvtui against plain OpenSSH and Python: `python -m benchmarks`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """What every benchmark is told by the command line."""

    quick: bool = False  # fewer iterations and shorter windows, for a smoke run
    profile: bool = False  # print a cProfile of the in-process measurement to stderr
    history_hours: int | None = None  # simulated hours of the history benchmark (None: its own)
