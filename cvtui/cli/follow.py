"""Following runs from the CLI: their output as it is mirrored, until they and their retries
end and their outputs are in. Shared by `run --follow`, `reproduce --follow` and `logs -f`."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.states import ACTIVE_STATES

if TYPE_CHECKING:
    from cvtui.api import Lab
    from cvtui.catalog import Catalog

ACTIVE = ACTIVE_STATES
SETTLE_ASK_S = 10.0  # one request to the engine waits this long for the final syncs


def follow_logs(
    catalog: Catalog,
    home: Path,
    run_ids: list[str],
    stop: Any,
    *,
    prefix: bool,
    raw: bool = False,
) -> None:
    """Copy the mirrored output.log of each run to stdout until stop is set (then drain).

    run_ids may grow while this runs (retries join the followed runs). Escape sequences other
    than colours are dropped unless raw.
    """
    from cvtui.cli.terminal_text import SafeTerminalText
    from cvtui.mirror import run_log_path

    offsets: dict[str, int] = {}
    names: dict[str, str] = {}
    screens: dict[str, SafeTerminalText] = {}
    out = sys.stdout.buffer
    while True:
        final = stop.is_set()
        for run_id in list(run_ids):
            if run_id not in names:
                offsets[run_id] = 0
                names[run_id] = (catalog.get_run(run_id) or {}).get("name", run_id)
            path = run_log_path(home, run_id)
            try:
                with open(path, "rb") as fh:
                    fh.seek(offsets[run_id])
                    data = fh.read()
            except FileNotFoundError:
                continue
            if prefix:
                end = data.rfind(b"\n") + 1  # whole lines only, so prefixes stay in place
                data = data[:end]
                offsets[run_id] += end
            else:
                offsets[run_id] += len(data)
            if not raw:
                data = screens.setdefault(run_id, SafeTerminalText()).feed(data)
            if prefix:
                lines = data.splitlines(keepends=True)
                data = b"".join(f"[{names[run_id]}] ".encode() + line for line in lines)
            if data:
                out.write(data)
                out.flush()
        if final:
            return
        time.sleep(0.1)


def next_attempt(catalog: Catalog, run: dict[str, Any]) -> dict[str, Any] | None:
    """The retry of a failed or lost run, once the engine has queued it."""
    for other in catalog.find_runs(run["name"]):
        if other["submitted"] == run["submitted"] and other["attempt"] == run["attempt"] + 1:
            return other
    return None


def follow_attempts(catalog: Catalog, home: Path, run_ids: list[str]) -> bool:
    """Whether every followed run ended, its retries included and its log mirrored.

    Retries found on the way are appended to run_ids.
    """
    from cvtui.mirror import run_log_path

    for run_id in list(run_ids):
        run = catalog.get_run(run_id)
        if run is None:
            continue
        if run["state"] in ACTIVE:
            return False
        log = run_log_path(home, run_id)
        if (log.stat().st_size if log.exists() else 0) < (run["log_size"] or 0):
            return False
        retrying = run["state"] in ("failed", "lost") and run["attempt"] <= run["retries"]
        if retrying:
            successor = next_attempt(catalog, run)
            if successor is None:
                return False
            if successor["id"] not in run_ids:
                run_ids.append(successor["id"])
                return False
    return True


def follow_runs(lab: Lab, run_ids: list[str], *, raw: bool = False) -> None:
    """Print the runs' output until the last attempt of each ended and its outputs are in,
    then exit with the first failure's code (1 if none failed with one, 0 if all succeeded).

    The engine (started in the background if none runs) does the work; this reads the
    catalog and the mirror, and asks the engine whether the final syncs are done.
    """
    catalog, home = lab.catalog, lab.home
    followed = list(run_ids)
    stop = threading.Event()
    printer = threading.Thread(
        target=follow_logs,
        args=(catalog, home, followed, stop),
        kwargs={"prefix": len(run_ids) > 1, "raw": raw},
    )
    printer.start()
    try:
        client = lab.engine(start=True)
        while True:
            if not follow_attempts(catalog, home, followed):
                time.sleep(0.1)
                continue
            try:
                assert client is not None
                reply = client.request(
                    "settled", run_ids=followed, timeout_s=SETTLE_ASK_S, wait_s=SETTLE_ASK_S + 10
                )
            except OSError:
                client = lab.engine(start=True)  # it went away (stopped by hand): start one
                continue
            if reply.get("settled"):
                break
    finally:
        stop.set()
        printer.join()
    exit_with_outcome(catalog, followed)


def exit_with_outcome(catalog: Catalog, run_ids: list[str]) -> None:
    """Exit like the runs did: the last attempt of each submitted run decides."""
    last = {}
    for run_id in run_ids:
        run_row = catalog.get_run(run_id) or {}
        last[(run_row.get("name"), run_row.get("submitted"))] = run_row
    failed = [r.get("exit_code") for r in last.values() if r.get("exit_code")]
    if failed:
        sys.exit(failed[0] if 0 < failed[0] < 256 else 1)
    if any(r.get("state") != "succeeded" for r in last.values()):
        sys.exit(1)


def last_states(data: bytes) -> list[bytes]:
    """The log's lines as a terminal ends up showing them: a line redrawn with \\r (a tqdm
    bar) is its last state, not every redraw joined; the unfinished last line is kept."""
    lines = []
    for line in data.split(b"\n"):
        body = line[:-1] if line.endswith(b"\r") else line  # a \r\n line ending
        lines.append(body.rsplit(b"\r", 1)[-1] + b"\n")
    if lines and lines[-1] == b"\n":
        lines.pop()  # the log ended with a newline: no unfinished line after it
    elif lines:
        lines[-1] = lines[-1][:-1]
    return lines
