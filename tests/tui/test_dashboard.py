"""The dashboard driven by keys through Textual's Pilot, over a real catalog file."""

from __future__ import annotations

from collections.abc import Callable

from sample_lab import NOW, RUN_IDS
from support import wait_for
from textual.pilot import Pilot
from textual.widgets import Static

from cvtui.catalog import Catalog
from cvtui.tui.app import DashboardApp
from cvtui.tui.screens.host_detail import HostDetailScreen
from cvtui.tui.screens.hosts import HostsScreen
from cvtui.tui.screens.queue import QueueScreen
from cvtui.tui.screens.runs import RunsScreen
from cvtui.tui.screens.stats import StatsScreen
from cvtui.tui.widgets.filter_bar import FilterBar
from cvtui.tui.widgets.gpu_tables import GpuTable, ProcessTable
from cvtui.tui.widgets.hosts_table import HostsTable
from cvtui.tui.widgets.runs_table import QueueTable, RunsTable

MakeApp = Callable[..., DashboardApp]


async def loaded(pilot: Pilot[int]) -> None:
    app = pilot.app
    await wait_for(lambda: app.view is not None)  # type: ignore[attr-defined]
    await pilot.pause()


async def cursor_to(pilot: Pilot[int], table: RunsTable | QueueTable, run_id: str) -> None:
    """Move the cursor with j/k, as a user would, until it is on run_id."""
    for _ in range(table.row_count):
        if table.current_key == run_id:
            return
        await pilot.press("j")
    assert table.current_key == run_id


def row_keys(table: HostsTable) -> list[str]:
    return table.row_keys


async def test_every_screen_by_number_and_tab(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        assert isinstance(app.screen, HostsScreen)
        await pilot.press("2")
        assert isinstance(app.screen, QueueScreen)
        await wait_for(lambda: app.screen.query_one(QueueTable).row_count == 3)
        await pilot.press("3")
        assert isinstance(app.screen, RunsScreen)
        await wait_for(lambda: app.screen.query_one(RunsTable).row_count == 8)
        await pilot.press("4")
        assert isinstance(app.screen, StatsScreen)
        await wait_for(
            lambda: "Runs by state (8)" in str(app.screen.query_one("#stats-states").render())
        )
        await pilot.press("tab")
        assert isinstance(app.screen, HostsScreen)
        await pilot.press("shift+tab")
        assert isinstance(app.screen, StatsScreen)
        await pilot.press("1", "q")
    assert app.return_code == 0


async def test_hosts_expand_filter_sort_and_open(make_app: MakeApp) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        table = app.screen.query_one(HostsTable)
        await wait_for(lambda: table.row_count == 18)  # 4 hosts, 14 GPUs of the reachable ones
        assert row_keys(table)[:2] == ["host:gpu-01", "gpu:gpu-01:0"]
        await pilot.press("space")  # collapse gpu-01
        assert row_keys(table)[:2] == ["host:gpu-01", "host:gpu-02"]
        await pilot.press("space")
        assert row_keys(table)[1] == "gpu:gpu-01:0"
        await pilot.press("e")  # collapse all
        assert row_keys(table) == [f"host:gpu-0{i}" for i in range(1, 5)]

        assert not app.screen.query(FilterBar)  # mounted by the first `/`, not before
        await pilot.press("slash", *"tag:3090", "enter")
        assert row_keys(table) == ["host:gpu-02"]
        await pilot.press("slash", "escape")  # clear the filter
        assert len(app.screen.query(FilterBar)) == 1
        await pilot.press("s")  # by free GPUs
        assert row_keys(table) == ["host:gpu-02", "host:gpu-01", "host:gpu-04", "host:gpu-03"]

        await pilot.press("k", "k", "k", "enter")  # back at the top: gpu-02, opened
        assert isinstance(app.screen, HostDetailScreen) and app.screen.host == "gpu-02"
        gpus = app.screen.query_one(GpuTable)
        await wait_for(lambda: gpus.row_count == 8)
        history = str(gpus.get_cell("gpu:0", "util_hist"))
        assert set(history) <= set("▁▂▃▄▅▆▇█ ") and len(set(history)) > 2  # a live sparkline
        processes = app.screen.query_one(ProcessTable)
        assert processes.row_count == 3
        assert str(processes.get_cell("5:7777", "container")) == "c0ffee12"
        assert str(processes.get_cell("5:7777", "run")) == "foreign"
        disk = app.screen.query_one("#disk-usage", Static)
        await wait_for(lambda: "alice" in str(disk.render()))
        lines = str(disk.render()).splitlines()
        assert lines[0].split() == ["/home", "scanned", "10m00s", "ago", "partial"]
        assert lines[1].split()[:4] == ["alice", "alice", "412.0GiB", "183204"]
        assert lines[3].split()[:3] == ["old", "1042", "5.0GiB"]  # a uid without a passwd entry
        assert lines[3].endswith("partial: permission denied: /home/old/.cache")
        assert str(processes.get_cell("0:5150", "run")).startswith("vit-sweep")
        await pilot.press("escape")
        assert isinstance(app.screen, HostsScreen)


async def test_open_a_run_and_follow_its_log(make_app: MakeApp, lab_catalog: Catalog) -> None:
    from textual.widgets import DataTable, TabbedContent

    from cvtui.tui.screens.run_detail import RunDetailScreen
    from cvtui.tui.widgets.log_view import LogView

    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("3")
        table = app.screen.query_one(RunsTable)
        await wait_for(lambda: table.row_count == 8)
        await cursor_to(pilot, table, RUN_IDS["resnet"])
        await pilot.press("enter")
        assert isinstance(app.screen, RunDetailScreen)
        log = app.screen.query_one(LogView)
        await wait_for(lambda: log.lines == 201)
        await wait_for(lambda: log.scroll_y == log.max_scroll_y > 0)
        assert log.follow
        # The engine appends to the mirrored log: the view follows to the new end.
        with open(log.index.path, "a") as fh:
            fh.writelines(f"more {i}\n" for i in range(60))
        await wait_for(lambda: log.lines == 261 and log.scroll_y == log.max_scroll_y)
        assert log.text_line(260).plain == "more 59"
        await pilot.press("k")
        assert not log.follow and log.scroll_y == log.max_scroll_y - 1
        await pilot.press("g")
        assert log.scroll_y == 0
        assert log.text_line(0).plain == "step     0 loss 2.0000 acc 0.000"
        await pilot.press("G")
        assert log.follow and log.scroll_y == log.max_scroll_y
        await pilot.press("right_square_bracket", "right_square_bracket", "right_square_bracket")
        files = app.screen.query_one("#files-table", DataTable)
        assert app.screen.query_one(TabbedContent).active == "files"
        await wait_for(lambda: files.row_count == 3)
        rows = {str(files.get_row_at(i)[0]): files.get_row_at(i) for i in range(3)}
        assert [str(c) for c in rows["ckpt/last.pt"]][1:4] == ["2.0G", "1.0G", "syncing"]
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_cancel_a_queued_run_from_the_queue(make_app: MakeApp, lab_catalog: Catalog) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("2")
        table = app.screen.query_one(QueueTable)
        await wait_for(lambda: table.current_key == RUN_IDS["ablation-urgent"])
        await pilot.press("x")
        await pilot.press("n")  # changed my mind
        await pilot.pause(0.1)
        assert lab_catalog.get_run(RUN_IDS["ablation-urgent"])["state"] == "queued"
        await pilot.press("x", "y")
        await wait_for(
            lambda: lab_catalog.get_run(RUN_IDS["ablation-urgent"])["state"] == "cancelled"
        )
        await wait_for(lambda: table.row_count == 2)  # gone from the queue on screen too


async def test_cancel_a_running_run_sends_the_engine_a_command(
    make_app: MakeApp, lab_catalog: Catalog
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("3")
        table = app.screen.query_one(RunsTable)
        await wait_for(lambda: table.row_count == 8)
        await cursor_to(pilot, table, RUN_IDS["vit"])
        await pilot.press("x", "y")
        await wait_for(lambda: lab_catalog.pending_commands())
        [command] = lab_catalog.pending_commands()
        assert command["kind"] == "cancel" and command["args"]["run_id"] == RUN_IDS["vit"]
        assert lab_catalog.get_run(RUN_IDS["vit"])["state"] == "running"  # until the engine acts


async def test_change_priorities_with_keys_and_the_picker(
    make_app: MakeApp, lab_catalog: Catalog
) -> None:
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        await pilot.press("2")
        table = app.screen.query_one(QueueTable)
        await wait_for(lambda: table.row_count == 3)
        await cursor_to(pilot, table, RUN_IDS["ablation-low"])
        await pilot.press("plus")
        await wait_for(lambda: lab_catalog.get_run(RUN_IDS["ablation-low"])["priority"] == "normal")
        await pilot.press("minus", "minus")
        await wait_for(lambda: lab_catalog.get_run(RUN_IDS["ablation-low"])["priority"] == "low")
        await pilot.press("p", "u")  # the picker, then u for urgent
        await wait_for(lambda: lab_catalog.get_run(RUN_IDS["ablation-low"])["priority"] == "urgent")
        # Now urgent and submitted before the other urgent run: it starts first.
        await wait_for(
            lambda: table.row_keys[:2] == [RUN_IDS["ablation-low"], RUN_IDS["ablation-urgent"]]
        )
        assert table.current_key == RUN_IDS["ablation-low"]  # the cursor followed the run


async def test_submit_a_config_after_its_dry_run(
    make_app: MakeApp, lab_catalog: Catalog, tmp_path
) -> None:
    from textual.widgets import Input, Static

    from cvtui.tui.screens.submit import SubmitScreen

    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("print('hi')\n")
    config = project / "grid.yaml"
    config.write_text("name: grid\ncommand: python3 train.py --lr {lr}\nparams: {lr: [1, 2, 3]}\n")
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        before = len(lab_catalog.queued_runs())
        await pilot.press("n")
        assert isinstance(app.screen, SubmitScreen)
        await pilot.press("ctrl+s")  # nothing typed: nothing happens
        assert len(lab_catalog.queued_runs()) == before
        path_input = app.screen.query_one("#submit-path", Input)
        await pilot.press(*str(config.parent)[:4])  # typed: the rest as if pasted
        path_input.value = str(config)
        await pilot.press("enter")
        preview = app.screen.query_one("#submit-text", Static)
        await wait_for(lambda: "3 runs (dry run" in str(preview.render()))
        assert "python3 train.py --lr 2" in str(preview.render())
        assert len(lab_catalog.queued_runs()) == before  # a dry run queues nothing
        await pilot.press("ctrl+s")
        await wait_for(lambda: not isinstance(app.screen, SubmitScreen))
        names = [r["name"] for r in lab_catalog.queued_runs()]
        assert len(names) == before + 3 and "grid[lr=2]" in names
        await pilot.press("2")
        await wait_for(lambda: app.screen.query_one(QueueTable).row_count == before + 3)


async def test_toast_and_bell_when_a_run_fails_or_a_host_goes_down(
    make_app: MakeApp, lab_catalog: Catalog
) -> None:
    app = make_app()
    bells: list[None] = []
    app.bell = lambda: bells.append(None)  # type: ignore[method-assign]
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        lab_catalog.transition_run(RUN_IDS["vit"], "failed", exit_code=137, ended=NOW, now=NOW)
        lab_catalog.set_host_state("gpu-02", "disconnected", "connection lost", now=NOW)
        await wait_for(lambda: len(app._notifications) == 2)
        toasts = {n.title: n for n in app._notifications}
        assert toasts["vit-sweep[lr=0.001] failed"].message == "exit code 137"
        assert toasts["vit-sweep[lr=0.001] failed"].severity == "error"
        assert toasts["gpu-02 is disconnected"].message == "connection lost"
        assert bells  # one bell for the batch


async def test_help_screen_and_command_palette(make_app: MakeApp) -> None:
    from cvtui.tui.screens.help import HelpScreen

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        keys = {(group, description): keys.split() for group, keys, description in app.screen.rows}
        assert keys["this screen", "Expand all"] == ["e"]
        assert keys["this screen", "Filter"] == ["/"]
        assert set(keys["this screen", "Cursor down"]) == {"down", "j"}
        assert "q" in keys["everywhere", "Quit"]
        assert keys["everywhere", "Help"] == ["?"]
        assert keys["everywhere", "Stats"] == ["4"]
        await pilot.press("escape")
        assert isinstance(app.screen, HostsScreen)
        await pilot.press("ctrl+p")
        await pilot.press(*"go to stats")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(lambda: isinstance(app.screen, StatsScreen))
        dark = app.theme
        await pilot.press("ctrl+t")
        assert app.theme != dark and not app.current_theme.dark


async def test_compare_marked_runs_overlays_their_metrics(make_app: MakeApp) -> None:
    from textual.widgets import OptionList

    from cvtui.tui.screens.compare import CompareScreen
    from cvtui.tui.widgets.metric_plot import MetricPlot

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        await pilot.press("3")
        table = app.screen.query_one(RunsTable)
        await wait_for(lambda: table.row_count == 8)
        await cursor_to(pilot, table, RUN_IDS["vit"])
        await pilot.press("space")  # mark, cursor moves down to resnet
        assert table.current_key == RUN_IDS["resnet"]
        await pilot.press("space", "c")
        assert isinstance(app.screen, CompareScreen)
        assert app.marked == [RUN_IDS["vit"], RUN_IDS["resnet"]]
        plot = app.screen.query_one(MetricPlot)
        await wait_for(lambda: len(plot.series) == 2)
        assert [s.label for s in plot.series] == ["vit-sweep[lr=0.001]", "resnet[lr=0.1]"]
        keys = app.screen.query_one(OptionList)
        assert [str(keys.get_option_at_index(i).prompt) for i in range(keys.option_count)] == [
            "acc",
            "loss",
        ]
        await pilot.press("j")  # loss
        await wait_for(lambda: plot.series and plot.series[0].points[0] == (0.0, 0.7 * 2.0))


async def test_metrics_tab_says_so_when_the_catalog_has_none(
    make_app: MakeApp, lab_catalog: Catalog
) -> None:
    from textual.widgets import Static

    from cvtui.tui.widgets.metrics_panel import MetricsPanel

    conn = lab_catalog.db.conn  # a catalog from before sync existed
    conn.execute("DROP VIEW metrics")
    conn.execute("DROP TABLE metric_chunks")
    conn.execute("DROP TABLE metric_series")
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await loaded(pilot)
        app.open_run(RUN_IDS["resnet"])
        await pilot.pause()
        await pilot.press("right_square_bracket")
        caption = app.screen.query_one(MetricsPanel).query_one(".caption", Static)
        await wait_for(lambda: "no metrics synced yet" in str(caption.render()))


async def test_config_tab_shows_what_the_run_was_made_of(
    make_app: MakeApp, lab_catalog: Catalog
) -> None:
    from textual.widgets import Static

    from cvtui.tui.screens.run_detail import RunDetailScreen

    with lab_catalog._write() as conn:  # as dispatch records it (cvtui.engine.provenance)
        conn.execute(
            "INSERT INTO run_provenance (run_id, code_root, git_head, git_dirty, host,"
            " gpu_models, driver, python) VALUES (?, ?, ?, 1, 'gpu-01', ?, '550.54.15', '3.11.7')",
            (RUN_IDS["resnet"], "/home/ada/resnet", "a" * 40, '["A100-SXM4-80GB"]'),
        )
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await loaded(pilot)
        app.open_run(RUN_IDS["resnet"])
        await pilot.pause()
        for _ in range(2):  # log -> metrics -> config
            await pilot.press("right_square_bracket")
        assert isinstance(app.screen, RunDetailScreen)
        shown = app.screen.query_one("#config-text", Static)

        def text() -> str:
            return str(getattr(shown.content, "code", ""))

        await wait_for(lambda: "provenance:" in text())
        assert "git: aaaaaaaaaaaa (dirty)" in text() and "driver: 550.54.15" in text()
        assert "- A100-SXM4-80GB" in text() and "code dir: /home/ada/resnet" in text()


def test_submit_path_completion(tmp_path) -> None:
    from cvtui.tui.screens.submit import complete_path

    (tmp_path / "sweep.yaml").write_text("")
    (tmp_path / "scripts").mkdir()
    (tmp_path / ".secret.yaml").write_text("")
    assert complete_path(f"{tmp_path}/sw") == f"{tmp_path}/sweep.yaml"
    assert complete_path(f"{tmp_path}/sc") == f"{tmp_path}/scripts/"
    assert complete_path(f"{tmp_path}/") == f"{tmp_path}/scripts/"  # hidden entries skipped
    assert complete_path(f"{tmp_path}/.s") == f"{tmp_path}/.secret.yaml"
    assert complete_path(f"{tmp_path}/nothing/x") is None


async def test_a_result_arriving_while_the_app_shuts_down_is_dropped(make_app: MakeApp) -> None:
    """A worker that finishes while the dashboard closes: its result reaches the app while the
    run screen is being pruned (children gone, screen still attached) and must be dropped, not
    applied to a screen with no header left (it crashed the app on exit once, in CI)."""
    from cvtui.tui.messages import deliver
    from cvtui.tui.screens.run_detail import RunDetailScreen

    applied: list[str] = []

    class LateWorker(Static):
        def on_unmount(self) -> None:  # runs inside the screen's prune
            screen = self.screen
            assert isinstance(screen, RunDetailScreen)
            deliver(screen, lambda: applied.append(str(screen.query_one("#run-header"))))
            deliver(screen, screen._run_read, screen.run, [], None)

    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await loaded(pilot)
        app.open_run(RUN_IDS["resnet"])
        await wait_for(lambda: isinstance(app.screen, RunDetailScreen) and app.screen.run)
        await app.screen.mount(LateWorker("late"))
        await pilot.pause()
    assert applied == []
