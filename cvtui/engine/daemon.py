"""`cvtui daemon`: the headless engine, one logfmt line per event on stderr, stopped by signals.

It never forks into the background: a service manager (systemd, supervisord, tmux) keeps it
running, which is why `--foreground` changes nothing and exists for unit files to say so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from cvtui.engine.engine import Engine

log = logging.getLogger("cvtui.daemon")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Loggers of libraries whose INFO lines are chatter here (one per SSH channel, per file event).
QUIET_LOGGERS = ("asyncssh", "watchfiles")
_FIELDS = ("event", "host", "run")  # record attributes (set with `extra=`) printed as fields


def logfmt_value(value: object) -> str:
    """value as a logfmt value: bare when it can be, else double-quoted with escapes."""
    text = str(value)
    if text and not any(c in text for c in ' ="\\') and text.isprintable():
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """`time=... level=... event=... host=... run=... msg="..."`: one line per record.

    ``event`` is the record's own (``extra={"event": ...}``), else the logger's last name part;
    ``host`` and ``run`` appear when the record carries them. A traceback becomes one escaped
    ``error`` field, so every record stays on one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
        fields: list[tuple[str, Any]] = [
            ("time", f"{stamp[:-3]}Z"),
            ("level", record.levelname.lower()),
            ("event", getattr(record, "event", None) or record.name.rsplit(".", 1)[-1]),
        ]
        fields += [(name, getattr(record, name, None)) for name in _FIELDS[1:]]
        fields.append(("msg", record.getMessage()))
        if record.exc_info:
            fields.append(("error", self.formatException(record.exc_info)))
        return " ".join(
            f"{key}={logfmt_value(value)}" for key, value in fields if value is not None
        )


def configure_logging(stream: TextIO, level: int = logging.INFO) -> logging.Handler:
    """Send every log record of this process to stream as logfmt, replacing other handlers."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


async def serve(engine: Engine, stop: asyncio.Event | None = None) -> str:
    """Run engine until SIGTERM or SIGINT (or stop is set); return what stopped it."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    stopped_by = ["stop"]

    def on_signal(sig: signal.Signals) -> None:
        stopped_by[0] = sig.name
        log.info("%s: stopping; runs keep going on the hosts", sig.name, extra={"event": "stop"})
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await engine.run(stop)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
    return stopped_by[0]


def run_daemon(
    inventory_path: Path,
    home: Path,
    *,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    idle_exit_s: float | None = None,
    metrics: str | None = None,
) -> int:
    """The `cvtui daemon` command: hold home's engine lock and run the engine until a signal.

    Raises EngineLockedError when another engine holds the lock and InventoryError when the
    inventory cannot be read at start; later inventory edits that fail are logged and skipped.
    With ``metrics`` ([ADDRESS:]PORT) it serves Prometheus metrics there (MetricsAddressError
    when that is malformed or cannot be bound).
    """
    from cvtui.catalog import Catalog
    from cvtui.engine.engine import Engine
    from cvtui.engine.lock import EngineLock
    from cvtui.inventory import load_inventory

    configure_logging(stream or sys.stderr, level)
    listen = None
    if metrics is not None:
        from cvtui.engine.prometheus import parse_listen

        listen = parse_listen(metrics)  # a typo fails before the lock is taken
    inventory = load_inventory(inventory_path)
    lock = EngineLock(home)
    lock.acquire()
    try:
        with Catalog.open_home(home) as catalog:
            engine = Engine(
                inventory, catalog, inventory_path=inventory_path, idle_exit_s=idle_exit_s
            )
            log.info(
                "engine up: pid %d, %d hosts, catalog %s, inventory %s",
                os.getpid(),
                len(inventory.hosts),
                catalog.path,
                inventory_path,
                extra={"event": "start"},
            )
            exporter = None
            if listen is not None:
                from cvtui.engine.prometheus import MetricsServer

                exporter = MetricsServer(engine, listen)
                exporter.start()
            try:
                stopped_by = asyncio.run(serve(engine))
            finally:
                if exporter is not None:
                    exporter.stop()
            log.info("engine stopped (%s)", stopped_by, extra={"event": "exit"})
    finally:
        lock.release()
    return 0
