"""CPU time and memory of a process on this machine, read from /proc."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def stat_cpu_seconds(pid: int) -> float:
    """utime + stime of /proc/PID/stat (all threads), in seconds; clock-tick resolution."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may contain spaces: split after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS_PER_S


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of pid in seconds, at nanosecond resolution where possible.

    /proc/PID/task/TID/schedstat counts nanoseconds on the CPU, which makes a 0.2 % budget
    measurable over a few seconds; clock ticks (10 ms) would not. Falls back to /proc/PID/stat.
    """
    try:
        total_ns = 0
        for task in Path(f"/proc/{pid}/task").iterdir():
            total_ns += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return stat_cpu_seconds(pid)
    return total_ns / 1e9


def status_bytes(pid: int, field: str) -> int:
    """A kB figure of /proc/PID/status (VmRSS, VmHWM, ...) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024
    raise ValueError(f"/proc/{pid}/status has no {field}")


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
