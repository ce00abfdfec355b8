"""Tell people when runs end, hosts go down or come back, and GPUs sit held but idle.

Every delivery runs in a task of its own: a slow webhook or a hanging command never holds up
the engine loop, and a failed delivery is logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cvtui.engine.tasks import TaskSet
from cvtui.inventory import NotifyTarget
from cvtui.units import duration, size

log = logging.getLogger("cvtui.engine.notify")

RUN_EVENTS = {"succeeded": "run_succeeded", "failed": "run_failed", "lost": "run_lost"}
EVENT_KINDS = (*RUN_EVENTS.values(), "host_down", "host_up", "gpu_idle")
DOWN_STATES = ("disconnected", "error")  # host states that count as down; stale does not
COMMAND_TIMEOUT_S = 30.0  # a notify command running longer is killed
WEBHOOK_TIMEOUT_S = 5.0
PARALLEL_DELIVERIES = 4  # a burst of ended runs must not fork a process per run at once
CLOSE_WAIT_S = 5.0  # how long a stopping engine lets deliveries in flight finish
_RUN_FIELDS = (
    "id", "name", "project", "user", "state", "priority", "host", "gpus", "exit_code", "reason",
    "submitted", "started", "ended", "run_dir",
)  # fmt: skip


@dataclass(frozen=True)
class NotifyEvent:
    """One thing worth telling: the JSON a command reads on stdin and a webhook receives."""

    kind: str  # one of EVENT_KINDS
    time: float  # unix seconds
    text: str  # one line for people (Slack's `text`)
    host: str | None = None
    run: Mapping[str, Any] | None = None  # the run's catalog fields, plus duration_s
    state: str | None = None  # a host event's state (disconnected, error, healthy)
    reason: str | None = None
    gpu: int | None = None  # the GPU index of a gpu_idle event

    def payload(self) -> dict[str, Any]:
        return {
            "event": self.kind,
            "time": self.time,
            "text": self.text,
            "host": self.host,
            "run": None if self.run is None else dict(self.run),
            "state": self.state,
            "reason": self.reason,
            "gpu": self.gpu,
        }

    def body(self) -> bytes:
        """The payload as one line of JSON."""
        return (json.dumps(self.payload(), sort_keys=True) + "\n").encode()


def run_event(run: Mapping[str, Any], *, now: float | None = None) -> NotifyEvent | None:
    """The event for a run that reached a final state; None for a state nobody is told of."""
    kind = RUN_EVENTS.get(run.get("state") or "")
    if kind is None:
        return None
    fields = {name: run.get(name) for name in _RUN_FIELDS}
    started, ended = run.get("started"), run.get("ended")
    ran_s = ended - started if started is not None and ended is not None else None
    fields["duration_s"] = ran_s
    after = "" if ran_s is None else f" after {duration(ran_s)}"
    where = f" on {run['host']}" if run.get("host") else ""
    gpus = run.get("gpus") or []
    if gpus:
        where += f" (GPU{'s' if len(gpus) > 1 else ''} {','.join(str(g) for g in gpus)})"
    who = f"run {run.get('name')} ({str(run.get('id'))[:12]})"
    reason = run.get("reason")
    if kind == "run_succeeded":
        text = f"{who} succeeded{where}{after}"
    elif kind == "run_failed":
        code = run.get("exit_code")
        status = f" with exit code {code}" if code is not None else ""
        text = f"{who} failed{where}{status}{after}" + (f": {reason}" if reason else "")
    else:
        text = f"{who} was lost{where}" + (f": {reason}" if reason else "")
    return NotifyEvent(
        kind,
        time.time() if now is None else now,
        f"cvtui: {text}",
        host=run.get("host"),
        run=fields,
        state=run.get("state"),
        reason=reason,
    )


def host_down_event(name: str, state: str, reason: str | None, *, now: float) -> NotifyEvent:
    why = f"{state}: {reason}" if reason else state
    return NotifyEvent(
        "host_down", now, f"cvtui: host {name} is down ({why})", name, None, state, reason
    )


def host_up_event(name: str, down_since: float, *, now: float) -> NotifyEvent:
    text = f"cvtui: host {name} is back after {duration(now - down_since)} down"
    return NotifyEvent("host_up", now, text, name, None, "healthy", None)


def gpu_idle_event(
    host: str,
    gpu: int,
    *,
    user: str,
    run: Mapping[str, Any] | None,
    since: float,
    util: float | None,
    mem_used: int | None,
    simulated: bool,
    now: float,
) -> NotifyEvent:
    """A GPU held (by a run or another user's process) with memory allocated but no work."""
    holder = f"run {run.get('name')} ({str(run.get('id'))[:12]}) of {user}" if run else user
    used = "" if mem_used is None else f" with {size(mem_used)} allocated"
    load = "" if util is None else f" at {util:g}% util"
    kind = " (simulated)" if simulated else ""
    text = (
        f"cvtui: GPU {gpu} on {host}{kind} held idle by {holder} for "
        f"{duration(now - since)}{load}{used}"
    )
    fields = None if run is None else {name: run.get(name) for name in _RUN_FIELDS}
    reason = f"idle since {time.strftime('%Y-%m-%d %H:%M', time.localtime(since))}"
    return NotifyEvent("gpu_idle", now, text, host, fields, "idle", reason, gpu)


class NotifyError(Exception):
    """A delivery that did not go through; the message says why, for the log."""


async def run_command(argv: Sequence[str], body: bytes, timeout_s: float) -> None:
    """Run argv (no shell) with body on stdin; NotifyError unless it exits 0 in time."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for the daemon does not reach it
        )
    except OSError as exc:
        raise NotifyError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    try:
        _, stderr = await asyncio.wait_for(process.communicate(body), timeout_s)
    except TimeoutError:
        await _end_group(process)
        raise NotifyError(f"{argv[0]} did not finish within {timeout_s:g} s") from None
    except asyncio.CancelledError:
        await _end_group(process)  # the engine is stopping: leave no command behind
        raise
    if process.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        detail = f": {lines[-1]}" if lines else ""
        raise NotifyError(f"{argv[0]} exited with {process.returncode}{detail}")


async def _end_group(process: asyncio.subprocess.Process) -> None:
    """SIGKILL the command and whatever it started (it leads its own process group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    await process.wait()


def post_webhook(url: str, body: bytes, timeout_s: float) -> int:
    """POST body as JSON to url (blocking; run it in a thread); the HTTP status, or NotifyError."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 (the inventory allows http(s) URLs only)
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "cvtui"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise NotifyError(f"{url} answered HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise NotifyError(f"{url}: {exc.reason}") from exc
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed answer
        raise NotifyError(f"{url}: {exc}") from exc


async def deliver(
    target: NotifyTarget,
    event: NotifyEvent,
    *,
    command_timeout_s: float = COMMAND_TIMEOUT_S,
    webhook_timeout_s: float = WEBHOOK_TIMEOUT_S,
) -> bool:
    """Send event to one target; False (and a log line) when that failed. Never raises."""
    body = event.body()
    try:
        if target.command:
            await run_command(target.argv(), body, command_timeout_s)
        elif target.webhook:
            await asyncio.to_thread(post_webhook, target.webhook, body, webhook_timeout_s)
    except NotifyError as exc:
        log.warning(
            "notify %s failed: %s",
            target.describe(),
            exc,
            extra={"event": "notify_failed", "host": event.host, "run": _run_id(event)},
        )
        return False
    return True


def _run_id(event: NotifyEvent) -> str | None:
    return None if event.run is None else event.run.get("id")


@dataclass
class Notifier:
    """Turns engine happenings into events and hands them to the inventory's notify targets.

    ``targets`` is asked at each event, so an inventory edit takes effect at once.
    """

    targets: Callable[[], Sequence[NotifyTarget]]
    command_timeout_s: float = COMMAND_TIMEOUT_S
    webhook_timeout_s: float = WEBHOOK_TIMEOUT_S
    _healthy: dict[str, bool] = field(default_factory=dict)  # host -> last seen healthy
    _down_since: dict[str, float] = field(default_factory=dict)  # hosts announced down
    _tasks: TaskSet = field(default_factory=lambda: TaskSet(log))  # deliveries in flight
    _slots: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(PARALLEL_DELIVERIES)
    )

    # -- what the engine reports ------------------------------------------------------
    def host_seen(self, name: str, *, now: float | None = None) -> None:
        """A host sent telemetry: healthy. Tells of its return when it was announced down."""
        if self._healthy.get(name):
            return  # the common case, once per sample: one dict lookup
        self._healthy[name] = True
        down_since = self._down_since.pop(name, None)
        if down_since is not None:
            self.send(host_up_event(name, down_since, now=time.time() if now is None else now))

    def host_failed(
        self, name: str, state: str, reason: str | None, *, now: float | None = None
    ) -> None:
        """A host's session ended; a healthy host going down is announced once."""
        if state not in DOWN_STATES:
            return
        was_healthy = self._healthy.get(name, False)
        self._healthy[name] = False
        if was_healthy and name not in self._down_since:
            now = time.time() if now is None else now
            self._down_since[name] = now
            self.send(host_down_event(name, state, reason, now=now))

    def gpu_idle(
        self,
        host: str,
        gpu: int,
        *,
        user: str,
        run: Mapping[str, Any] | None,
        since: float,
        util: float | None,
        mem_used: int | None,
        simulated: bool,
        now: float | None = None,
    ) -> None:
        """A held GPU became idle-held (the tracker calls this once per episode)."""
        now = time.time() if now is None else now
        self.send(
            gpu_idle_event(
                host,
                gpu,
                user=user,
                run=run,
                since=since,
                util=util,
                mem_used=mem_used,
                simulated=simulated,
                now=now,
            )
        )

    def run_ended(self, run: Mapping[str, Any] | None) -> None:
        """A run reached a final state (called once per run, after the catalog changed)."""
        if run is None:
            return
        event = run_event(run)
        if event is not None:
            self.send(event)

    # -- delivery ---------------------------------------------------------------------
    def send(self, event: NotifyEvent) -> None:
        """Log the event and start delivering it to every target; returns at once."""
        log.info(
            "%s",
            event.text.removeprefix("cvtui: "),
            extra={"event": event.kind, "host": event.host, "run": _run_id(event)},
        )
        for target in self.targets():
            self._tasks.spawn(self._deliver(target, event), name=f"notify-{event.kind}")

    async def _deliver(self, target: NotifyTarget, event: NotifyEvent) -> bool:
        async with self._slots:
            return await deliver(
                target,
                event,
                command_timeout_s=self.command_timeout_s,
                webhook_timeout_s=self.webhook_timeout_s,
            )

    @property
    def pending(self) -> int:
        """Deliveries not finished yet."""
        return len(self._tasks)

    async def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Let deliveries in flight finish for up to wait_s, then cancel the rest."""
        await self._tasks.wait(wait_s)
