"""Crash logs: an unexpected exception in a command is written to a file, and named on one line.

Expected failures are CvtuiError and print their message alone. Anything else is a bug or a
case nobody foresaw: the user gets one line naming the exception and the file holding the full
traceback (in platformdirs' user log dir, `~/.local/state/cvtui/log/` on Linux), not a
traceback on the terminal.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE: an internal error, as sysexits.h names it
KEPT_LOGS = 50  # older crash logs are removed beyond this many


def crash_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_log_dir("cvtui"))


def write_crash_log(error: BaseException, argv: list[str] | None = None) -> Path | None:
    """Write error's traceback with the command line and versions; the file, None if unwritable."""
    argv = sys.argv if argv is None else argv
    try:
        from importlib.metadata import version

        cvtui_version = version("cvtui")
    except Exception:
        cvtui_version = "?"
    text = (
        f"time: {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n"
        f"command: {' '.join(argv)}\n"
        f"cvtui {cvtui_version}, python {platform.python_version()}, {platform.platform()}\n\n"
        + "".join(traceback.format_exception(error))
    )
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for directory in (crash_dir(), Path(tempfile.gettempdir())):
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = directory / name
            # 0600: a traceback may show paths and values of the user's runs.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as fh:
                fh.write(text)
        except OSError:
            continue
        _prune(directory)
        return path
    return None


def _prune(directory: Path) -> None:
    try:
        logs = sorted(directory.glob("crash-*.log"), key=lambda p: p.stat().st_mtime)
        for old in logs[:-KEPT_LOGS]:
            old.unlink()
    except OSError:
        pass  # pruning is a courtesy


def one_line(error: BaseException) -> str:
    """The exception as one line: its type and the first line of its message."""
    message = str(error).strip().splitlines()
    first = message[0] if message else ""
    if len(first) > 200:
        first = first[:197] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
