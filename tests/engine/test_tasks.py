"""Background tasks are owned: held until they end, failures logged, cancelled at stop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.engine.tasks import TaskSet
from cvtui.inventory import parse_inventory

log = logging.getLogger("tests.tasks")


async def test_a_failing_task_is_logged_and_let_go(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet(log)

    async def fail() -> None:
        raise RuntimeError("disk on fire")

    with caplog.at_level(logging.ERROR, logger="tests.tasks"):
        task = tasks.spawn(fail(), name="doomed")
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert len(tasks) == 0
    assert "task doomed failed" in caplog.text and "disk on fire" in caplog.text


async def test_wait_lets_quick_tasks_end_and_cancels_the_rest() -> None:
    tasks = TaskSet(log)
    quick = tasks.spawn(asyncio.sleep(0.01, "done"))
    slow = tasks.spawn(asyncio.sleep(60))
    assert len(tasks) == 2
    await tasks.wait(1.0)
    assert quick.result() == "done"
    assert slow.cancelled()
    await asyncio.sleep(0)
    assert len(tasks) == 0


async def test_cancel_all_leaves_no_task_running() -> None:
    tasks = TaskSet(log)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = tasks.spawn(forever())
    await started.wait()
    await tasks.cancel_all()
    assert task.cancelled()


INVENTORY = "hosts:\n  gpu-01: {address: 127.0.0.1}\n"


async def test_an_inventory_reload_is_held_and_stopped_with_the_engine(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reload that a watched edit starts is the engine's: held, and over when run() returns."""
    with Catalog.open_home(tmp_path / "home") as catalog:
        inventory = parse_inventory(INVENTORY)
        engine = Engine(inventory, catalog, only=set())  # no host is connected to
        stop = asyncio.Event()
        runner = asyncio.create_task(engine.run(stop))
        while len(engine.background) < 2:  # the flush and run loops
            await asyncio.sleep(0.01)
        loops = len(engine.background)
        changed = parse_inventory(INVENTORY + "  gpu-02: {address: 127.0.0.2}\n")
        engine._inventory_changed(changed)
        assert len(engine.background) == loops + 1
        while engine.inventory is not changed:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(runner, 10)
        assert len(engine.background) == 0
        assert [h["name"] for h in catalog.hosts_report()] == ["gpu-01", "gpu-02"]
    assert "failed" not in caplog.text
