"""The dashboard in a real pseudo-terminal over a busy catalog: first paint, CPU, key latency.

A writer process plays a daemon: it holds the engine lock and feeds the catalog 100 hosts x 8
GPUs of telemetry at 1 Hz (in 0.2 s batches, as the engine flushes) plus run progress. The
dashboard (`cvtui --home H --inventory I`, so it only reads) runs in a pty of 160x50 and its
output stream is read back: first paint is the time until host rows appear, key latency the
time from writing a screen key to that screen's header arriving. The baseline is a bare
two-screen Textual app in the same pty: what Textual itself costs on this machine.

Both run with their bytecode cached, as an installed cvtui runs after its first start (the
cache goes to a temp dir); a start without .pyc files is in the notes. First paint is the
median of several starts, cvtui's and the bare app's interleaved, so that load from other
processes on the machine falls on both alike.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

from benchmarks import Options
from benchmarks.cli_startup import bytecode_env
from benchmarks.procfs import cpu_seconds
from benchmarks.table import Row, Target
from benchmarks.tui_feed import GPUS, HOSTS, RUNS, write_inventory

WINDOW_S = 20.0
QUICK_WINDOW_S = 8.0
SETTLE_S = 3.0
KEY_PRESSES = 20
QUICK_KEY_PRESSES = 8
STARTS = 5  # first paints measured of each app (after one that fills its .pyc cache)
QUICK_STARTS = 3
COLUMNS, ROWS = 160, 50
TARGET_FIRST_PAINT_S = 1.0
TARGET_CPU_PERCENT = 20.0
TARGET_KEY_MS = 100.0
TARGET_LOG_INDEX_S = 1.0
# What each screen paints that no other screen does: its table's header.
MARKERS = {"1": b"GPU UTIL", "2": b"WAITS FOR", "3": b"HOST:GPUS"}


class Terminal:
    """A child process in a pseudo-terminal whose output is collected with arrival times."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.master = master
        self.output = bytearray()
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            with self.changed:
                self.output += data
                self.changed.notify_all()

    def wait_for(self, marker: bytes, start: int, timeout_s: float = 10.0) -> float:
        """Monotonic time at which marker appeared in the output after byte offset start."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while marker not in self.output[start:]:
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = bytes(self.output[-300:])
                    raise RuntimeError(f"{marker!r} never appeared; output ended {tail!r}")
                self.changed.wait(left)
            return time.monotonic()

    def send(self, keys: bytes) -> tuple[int, float]:
        with self.changed:
            offset = len(self.output)
        sent = time.monotonic()
        os.write(self.master, keys)
        return offset, sent

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self.master)


def key_latencies(terminal: Terminal, presses: int) -> list[float]:
    """Milliseconds from writing 3 (or 1) to that screen's header arriving, sorted."""
    latencies = []
    for i in range(presses):
        key = "3" if i % 2 == 0 else "1"
        offset, sent = terminal.send(key.encode())
        latencies.append((terminal.wait_for(MARKERS[key], offset) - sent) * 1000)
        time.sleep(0.3)
    return sorted(latencies)


def p95(values: list[float]) -> float:
    return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def first_paint_s(argv: list[str], env: dict[str, str]) -> float:
    """Seconds from exec to host rows on screen, for one start of argv in a fresh pty."""
    terminal = Terminal(argv, env)
    try:
        return terminal.wait_for(b"host-000", 0) - terminal.started
    finally:
        terminal.close()


def bare_argv() -> list[str]:
    return [sys.executable, "-m", "benchmarks.tui_feed", "bare"]


def measure_bare_keys(presses: int, env: dict[str, str]) -> list[float]:
    """Key latencies of a two-screen Textual app that reads nothing: Textual's floor."""
    terminal = Terminal(bare_argv(), env)
    try:
        terminal.wait_for(b"host-000", 0)
        time.sleep(1.0)
        return key_latencies(terminal, presses)
    finally:
        terminal.close()


def terminal_env(cache_dir: Path | None) -> dict[str, str]:
    """An app's environment in the pty: no CVTUI_ settings, .pyc in cache_dir (None: none)."""
    env = {k: v for k, v in bytecode_env(cache_dir).items() if not k.startswith("CVTUI_")}
    return env | {"TERM": "xterm-256color", "COLUMNS": str(COLUMNS), "LINES": str(ROWS)}


def measure(
    directory: Path, window_s: float, presses: int, starts: int
) -> tuple[dict[str, float], dict[str, float]]:
    """cvtui's figures and the bare app's, over one fed catalog."""
    home = directory / "home"
    home.mkdir(mode=0o700)
    inventory = directory / "inventory.yaml"
    write_inventory(inventory)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    writer = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.tui_feed", "feed", str(home), str(window_s + 90)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert writer.stdout is not None
        if writer.stdout.readline().strip() != "ready":
            raise RuntimeError("the catalog writer did not start")
        # Each app has its own bytecode cache, which a first, unmeasured start fills.
        cvtui_env = terminal_env(directory / "pycache-cvtui")
        bare_env = terminal_env(directory / "pycache-bare")
        argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
        argv += ["--inventory", str(inventory)]
        first_paint_s(argv, cvtui_env)
        first_paint_s(bare_argv(), bare_env)
        cvtui_paints, bare_paints = [], []
        for _ in range(starts):
            cvtui_paints.append(first_paint_s(argv, cvtui_env))
            bare_paints.append(first_paint_s(bare_argv(), bare_env))
        # For the notes: a start that compiles everything, as without a writable cache.
        cold_cvtui = first_paint_s(argv, terminal_env(None))
        cold_bare = first_paint_s(bare_argv(), terminal_env(None))
        terminal = Terminal(argv, cvtui_env)
        try:
            terminal.wait_for(b"host-000", 0)
            time.sleep(SETTLE_S)
            pid = terminal.process.pid
            cpu0, wall0 = cpu_seconds(pid), time.monotonic()
            time.sleep(window_s)
            cpu_percent = (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0) * 100
            latencies = key_latencies(terminal, presses)
        finally:
            terminal.close()
        bare_latencies = measure_bare_keys(presses, bare_env)
    finally:
        writer.terminate()
        writer.wait(timeout=10)
    got = {
        "first_paint_s": statistics.median(cvtui_paints),
        "cold_paint_s": cold_cvtui,
        "cpu_percent": cpu_percent,
        "key_median_ms": statistics.median(latencies),
        "key_p95_ms": p95(latencies),
    }
    bare = {
        "first_paint_s": statistics.median(bare_paints),
        "cold_paint_s": cold_bare,
        "key_median_ms": statistics.median(bare_latencies),
        "key_p95_ms": p95(bare_latencies),
    }
    return got, bare


def measure_log_index(directory: Path) -> dict[str, float]:
    """Seconds to index a 100 MB log of 1M lines, and to read its last screen of lines."""
    from cvtui.tui.logindex import LogIndex

    path = directory / "output.log"
    line = b"step 123456 loss 0.123456 acc 0.987654 lr 0.000100 " + b"x" * 47 + b"\n"
    with open(path, "wb") as fh:
        for _ in range(100):
            fh.write(line * 10_000)
    index = LogIndex(path)
    start = time.perf_counter()
    index.update()
    indexed = time.perf_counter() - start
    start = time.perf_counter()
    lines = index.read_lines(index.line_count - ROWS, ROWS)
    tail = time.perf_counter() - start
    assert len(lines) == ROWS
    return {"index_s": indexed, "tail_ms": tail * 1000, "lines": index.line_count}


def run(options: Options) -> list[Row]:
    window_s = QUICK_WINDOW_S if options.quick else WINDOW_S
    presses = QUICK_KEY_PRESSES if options.quick else KEY_PRESSES
    starts = QUICK_STARTS if options.quick else STARTS
    directory = Path(tempfile.mkdtemp(prefix="cvtui-bench-tui-"))
    try:
        got, bare = measure(directory, window_s, presses, starts)
        log = measure_log_index(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    load = f"{HOSTS} hosts x {GPUS} GPUs at 1 Hz from a writer process, {RUNS} runs"
    load += f", {COLUMNS}x{ROWS}"
    return [
        Row(
            "tui first paint",
            got["first_paint_s"],
            "s",
            baseline=bare["first_paint_s"],
            baseline_name="bare Textual app",
            target=Target(TARGET_FIRST_PAINT_S, strict=True),
            note=(
                f"median of {starts} starts, exec of `cvtui` in a pty to host rows on screen, "
                f".pyc cached; without .pyc {got['cold_paint_s']:.2f} s "
                f"(bare {bare['cold_paint_s']:.2f} s); {load}"
            ),
        ),
        Row(
            "tui CPU",
            got["cpu_percent"],
            "% core",
            target=Target(TARGET_CPU_PERCENT, strict=True),
            note=f"the dashboard process over {window_s:.0f} s on the Hosts screen; {load}",
        ),
        Row(
            "tui key latency",
            got["key_p95_ms"],
            "ms",
            baseline=bare["key_p95_ms"],
            baseline_name="bare Textual app",
            target=Target(TARGET_KEY_MS, strict=True),
            note=(
                f"p95 of {presses} screen switches (1 <-> 3), key written to new header read "
                f"back; median {got['key_median_ms']:.0f} ms (bare {bare['key_median_ms']:.0f} ms)"
            ),
        ),
        Row(
            "tui log index 100 MB",
            log["index_s"],
            "s",
            target=Target(TARGET_LOG_INDEX_S, strict=True),
            note=(
                f"LogIndex over {log['lines']:,} lines (8 bytes of offsets each); then the last "
                f"{ROWS} lines read in {log['tail_ms']:.2f} ms without reading the rest"
            ),
        ),
    ]
