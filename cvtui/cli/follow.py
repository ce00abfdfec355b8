"""Following runs from the CLI: `Lab.follow`'s output printed as it comes, until the runs and
their retries ended and their outputs are in. Shared by `run --follow`, `reproduce --follow`
and `infer`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, BinaryIO

from cvtui.following import last_states

if TYPE_CHECKING:
    from cvtui.api import Lab
    from cvtui.catalog import Catalog
    from cvtui.terminal_text import SafeTerminalText

__all__ = ["OutputPrinter", "exit_with_outcome", "follow_runs", "last_states"]


class OutputPrinter:
    """Writes runs' output to a terminal: escape sequences other than colours dropped unless
    raw; with prefix (several runs), whole lines only, each led by `[run name] `."""

    def __init__(
        self, catalog: Catalog, *, prefix: bool, raw: bool, out: BinaryIO | None = None
    ) -> None:
        self.catalog = catalog
        self.prefix = prefix
        self.raw = raw
        self.out = out or sys.stdout.buffer
        self._names: dict[str, str] = {}
        self._screens: dict[str, SafeTerminalText] = {}
        self._partial: dict[str, bytes] = {}

    def feed(self, run_id: str, data: bytes) -> None:
        if self.prefix:
            data = self._partial.pop(run_id, b"") + data
            end = data.rfind(b"\n") + 1  # whole lines only, so prefixes stay in place
            if end < len(data):
                self._partial[run_id] = data[end:]
            data = data[:end]
        self._write(run_id, data)

    def finish(self) -> None:
        """Print the unfinished last lines kept back for their prefix."""
        for run_id in list(self._partial):
            self._write(run_id, self._partial.pop(run_id) + b"\n")

    def _write(self, run_id: str, data: bytes) -> None:
        if not data:
            return
        if not self.raw:
            from cvtui.terminal_text import SafeTerminalText

            data = self._screens.setdefault(run_id, SafeTerminalText()).feed(data)
        if self.prefix:
            if run_id not in self._names:
                self._names[run_id] = (self.catalog.get_run(run_id) or {}).get("name", run_id)
            label = f"[{self._names[run_id]}] ".encode()
            data = b"".join(label + line for line in data.splitlines(keepends=True))
        self.out.write(data)
        self.out.flush()


def follow_runs(lab: Lab, run_ids: list[str], *, raw: bool = False) -> None:
    """Print the runs' output until the last attempt of each ended and its outputs are in,
    then exit with the first failure's code (1 if none failed with one, 0 if all succeeded).

    The engine (started in the background if none runs) does the work; this reads the
    catalog and the mirror, and asks the engine whether the final syncs are done.
    """
    printer = OutputPrinter(lab.catalog, prefix=len(run_ids) > 1, raw=raw)
    followed = list(run_ids)
    try:
        for event in lab.follow(run_ids, lines=False):
            if event.run_id not in followed:
                followed.append(event.run_id)  # a retry joined
            if event.kind == "log":
                printer.feed(event.run_id, event.data)
    finally:
        printer.finish()
    exit_with_outcome(lab.catalog, followed)


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
