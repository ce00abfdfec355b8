"""Asks a connected host's agent for its `disk_usage:` paths now and then; stores fresh scans.

The agent answers from its cache at once and starts a niced, budgeted scan child when a
path's figure is an hour old (remote_agent/disk_usage.py), so this poll costs one small
request: every DISK_POLL_S, or every DISK_POLL_SCANNING_S while a scan runs there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cvtui.engine.agent_client import AgentClient, AgentClosedError
from remote_agent.disk_usage import path_usage_from_wire
from remote_agent.protocol import E_UNKNOWN_OP, OP_DISK_USAGE, RemoteError

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.inventory import Host

log = logging.getLogger("cvtui.engine")

DISK_POLL_S = 300.0  # a cached answer; scans themselves are at most hourly
DISK_POLL_SCANNING_S = 2.0  # while the host scans: its result shows soon after it ends
DISK_CALL_TIMEOUT_S = 30.0


async def poll_disk_usage(catalog: Catalog, host: Callable[[], Host], client: AgentClient) -> None:
    """Until the agent connection closes: ask for the host's current paths, store new scans.

    ``host`` returns the session's current Host, so an edited `disk_usage:` applies without
    a reconnect. A failed answer is logged and asked again later; it never ends the session.
    """
    told = ""
    while not client.closed.is_set():
        current = host()
        paths = list(current.disk_usage)
        scanning = False
        try:
            if paths:
                reply = await client.call(OP_DISK_USAGE, paths=paths, timeout_s=DISK_CALL_TIMEOUT_S)
                scanning = bool(reply.get("scanning"))
                scans = [path_usage_from_wire(item) for item in reply.get("paths") or []]
            else:
                scans = []
            await asyncio.to_thread(catalog.record_disk_usage, current.name, scans, paths)
            told = ""
        except AgentClosedError:
            return
        except RemoteError as exc:
            if exc.code == E_UNKNOWN_OP:  # an agent from before disk usage: nothing to ask
                return
            told = _tell(current.name, f"{exc.code}: {exc.message}", told)
        except (ValueError, TimeoutError) as exc:
            told = _tell(current.name, str(exc) or type(exc).__name__, told)
        wait_s = DISK_POLL_SCANNING_S if scanning else DISK_POLL_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(client.closed.wait(), wait_s)


def _tell(host: str, problem: str, told: str) -> str:
    if problem != told:  # once per distinct problem, not every poll
        log.warning("host %s: disk usage: %s", host, problem)
    return problem
