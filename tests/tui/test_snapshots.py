"""Every screen as an SVG snapshot at 80x24 and 160x50, over the fixed sample lab.

Update after a deliberate change with `uv run pytest tests/tui/test_snapshots.py
--snapshot-update`, then look at the SVGs under __snapshots__.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from sample_lab import RUN_IDS
from support import wait_for
from textual.pilot import Pilot

from cvtui.tui.app import DashboardApp

SIZES = [(80, 24), (160, 50)]
Steps = Callable[[Pilot[int]], Awaitable[None]]


async def loaded(pilot: Pilot[int]) -> DashboardApp:
    app = pilot.app
    assert isinstance(app, DashboardApp)
    await wait_for(lambda: app.view is not None)
    await pilot.pause()
    return app


async def hosts(pilot: Pilot[int]) -> None:
    await loaded(pilot)


async def host_detail(pilot: Pilot[int]) -> None:
    from cvtui.tui.widgets.gpu_tables import GpuTable

    app = await loaded(pilot)
    await pilot.press("j", "j", "j", "j", "j", "enter")  # gpu-02
    await wait_for(lambda: app.screen.query_one(GpuTable).row_count == 8)
    await pilot.pause(0.1)


async def queue(pilot: Pilot[int]) -> None:
    from cvtui.tui.widgets.runs_table import QueueTable

    app = await loaded(pilot)
    await pilot.press("2")
    await wait_for(lambda: app.screen.query_one(QueueTable).row_count == 3)


async def runs(pilot: Pilot[int]) -> None:
    from cvtui.tui.widgets.runs_table import RunsTable

    app = await loaded(pilot)
    await pilot.press("3")
    await wait_for(lambda: app.screen.query_one(RunsTable).row_count == 8)


async def run_log(pilot: Pilot[int]) -> None:
    from cvtui.tui.widgets.log_view import LogView

    app = await loaded(pilot)
    app.open_run(RUN_IDS["resnet"])
    await pilot.pause()
    log = app.screen.query_one(LogView)
    await wait_for(lambda: log.lines == 201 and log.scroll_y == log.max_scroll_y)
    await wait_for(lambda: "resnet" in str(app.screen.query_one("#run-header").render()))
    await pilot.pause(0.6)  # the status line under the log refreshes twice a second


async def run_metrics(pilot: Pilot[int]) -> None:
    from cvtui.tui.widgets.metric_plot import MetricPlot

    app = await loaded(pilot)
    app.open_run(RUN_IDS["resnet"])
    await pilot.pause()
    await pilot.press("right_square_bracket")
    plot = app.screen.query_one(MetricPlot)
    await wait_for(lambda: len(plot.series) == 1 and plot.series[0].points)
    await pilot.pause(0.6)


async def stats(pilot: Pilot[int]) -> None:
    app = await loaded(pilot)
    await pilot.press("4")
    await wait_for(lambda: "GPU-hours" in str(app.screen.query_one("#info").render()))


async def help_keys(pilot: Pilot[int]) -> None:
    await loaded(pilot)
    await pilot.press("question_mark")


SCREENS: dict[str, Steps] = {
    "hosts": hosts,
    "host_detail": host_detail,
    "queue": queue,
    "runs": runs,
    "run_log": run_log,
    "run_metrics": run_metrics,
    "stats": stats,
    "help": help_keys,
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", list(SCREENS))
def test_screen_snapshot(
    screen: str, size: tuple[int, int], make_app: Callable[..., DashboardApp], snap_compare
) -> None:
    assert snap_compare(make_app(), terminal_size=size, run_before=SCREENS[screen])
