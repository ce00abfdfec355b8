"""Background tasks with an owner: held until they end, their failures logged, cancelled at stop.

asyncio keeps only a weak reference to a task: one nobody holds can be collected mid-flight,
and an exception nobody retrieves is lost. Every task the engine starts goes through one of
these sets (or is awaited where it is started).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any


def log_failure(task: asyncio.Task[Any], log: logging.Logger) -> None:
    """Log the exception a finished task ended with (a cancelled one ended with none)."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("task %s failed", task.get_name(), exc_info=error)


class TaskSet:
    """The tasks one component started and has not seen end."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        """Start coro as a task held here until it ends; its failure is logged."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        log_failure(task, self._log)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(set(self._tasks))

    async def wait(self, timeout_s: float) -> None:
        """Let the tasks finish for up to timeout_s, then cancel the rest and wait for them."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    async def cancel_all(self) -> None:
        """Cancel every task and wait until each has ended."""
        await self.wait(0)
