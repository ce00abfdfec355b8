"""The dashboard's port forwards (run detail, key p): each a `Lab.forward`, owned by the app
and closed when the dashboard quits or the run ends."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cvtui.errors import CvtuiError

if TYPE_CHECKING:
    from cvtui.engine.forward import PortForward
    from cvtui.inventory import Inventory

_PORTS = re.compile(r"\s*(\d{1,5})\s*(?::\s*(\d{1,5})\s*)?\Z")


def parse_ports(text: str) -> tuple[int, int | None]:
    """ "6006" (the same port here) or "6006:16006" (remote:local); CvtuiError otherwise."""
    found = _PORTS.match(text)
    if found is None:
        raise CvtuiError(f"{text.strip()!r}: give PORT or PORT:LOCAL_PORT, such as 6006:16006")
    remote = int(found[1])
    local = int(found[2]) if found[2] else None
    if not 1 <= remote <= 65535 or (local is not None and not 0 <= local <= 65535):
        raise CvtuiError(f"{text.strip()!r}: ports are 1-65535 (a local port 0: any free one)")
    return remote, local


class RunForwards:
    """Open forwards by (run id, remote port); thread-safe (started from workers)."""

    def __init__(self, inventory: Inventory, home: Path) -> None:
        self.inventory = inventory
        self.home = home
        self._open: dict[tuple[str, int], PortForward] = {}
        self._lock = threading.Lock()

    def start(self, run_id: str, remote_port: int, local_port: int | None) -> PortForward:
        """Open one (blocking: call from a worker); an open one for the same port is kept."""
        from cvtui.api import Lab

        with self._lock:
            found = self._open.get((run_id, remote_port))
            if found is not None and found.active:
                return found
        with Lab(self.inventory, self.home) as lab:
            forward = lab.forward(run_id, remote_port, local_port)
        with self._lock:
            self._open[(run_id, remote_port)] = forward
        return forward

    def of_run(self, run_id: str) -> list[PortForward]:
        with self._lock:
            return [f for (r, _), f in self._open.items() if r == run_id and f.active]

    def close_run(self, run_id: str) -> int:
        """Close the run's forwards; how many were open."""
        with self._lock:
            mine = [k for k in self._open if k[0] == run_id]
            closing = [self._open.pop(k) for k in mine]
        for forward in closing:
            forward.close()
        return sum(1 for _ in closing)

    def stop_ended(self, state_of: Callable[[str], str | None]) -> None:
        """Stop the forwards of runs that ended (state_of: a run's state, None if unknown);
        does not wait (called on the UI thread)."""
        with self._lock:
            ended = [
                key
                for key in self._open
                if state_of(key[0]) not in (None, "dispatching", "running")
            ]
            stopping = [self._open.pop(key) for key in ended]
        for forward in stopping:
            forward.stop()

    def close_all(self) -> None:
        with self._lock:
            closing, self._open = list(self._open.values()), {}
        for forward in closing:
            forward.close()
