"""One engine per catalog: an exclusive flock on `<home>/engine.lock` holding the owner's pid.

Kept free of asyncssh so that commands which only ask "is an engine running?" start fast.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from cvtui.errors import EngineLockedError


class EngineLock:
    """Exclusive flock on `<home>/engine.lock`: one engine per catalog; holds the owner's pid."""

    def __init__(self, home: Path) -> None:
        self.path = home / "engine.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EngineLockedError(str(self.path), lock_holder(self.path.parent)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock_holder(home: Path) -> int | None:
    """Pid of the engine holding home's lock, or None when no engine runs."""
    path = home / "engine.lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
