"""Helpers for async tests: polling for a condition, running an engine in the background."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


async def wait_for(
    predicate: Callable[[], object], timeout_s: float = 10.0, step_s: float = 0.05
) -> None:
    """Poll predicate until it is truthy; fail the test with what it last returned."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        last = predicate()
        if last:
            return
        await asyncio.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s (last value {last!r})")


@contextlib.asynccontextmanager
async def running(coro_factory: Callable[[asyncio.Event], object]) -> AsyncIterator[asyncio.Event]:
    """Run an engine-style `run(stop)` coroutine in the background for the with-block."""
    stop = asyncio.Event()
    task = asyncio.create_task(coro_factory(stop))  # type: ignore[arg-type]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
