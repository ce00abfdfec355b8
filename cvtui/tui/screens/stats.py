"""Screen 4, Stats: runs by state, durations, GPU-hours by user, host and model, use per GPU,
energy and idle-held GPU-hours by user, mean GPU utilisation by host.

The figures are `cvtui stats`'s (cvtui.stats.compute_stats), drawn as bars.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Grid, VerticalScroll
from textual.widgets import Static

from cvtui import units
from cvtui.tui import cells
from cvtui.tui.messages import deliver
from cvtui.tui.model import CatalogView
from cvtui.tui.screens.base import DashboardScreen, PaletteCommand

if TYPE_CHECKING:
    from cvtui.stats import RunStats, UsageStats

PERIODS: tuple[tuple[str, float | None], ...] = (
    ("all time", None),
    ("last 7 days", 7 * 86400.0),
    ("last 24 hours", 86400.0),
)
BAR_WIDTH = 16
ROWS_SHOWN = 12
REFRESH_S = 5.0  # stats change slowly; reading them more often is wasted work
BLOCKS = (
    "states",
    "hours-user",
    "durations",
    "hours-host",
    "hours-model",
    "uses",
    "energy-user",
    "idle-user",
    "util-host",
)


def bar_rows(title: str, totals: Mapping[str, float], unit: str, style: str) -> Text:
    """A titled block of `label  ████····  value` lines, bars relative to the largest value."""
    text = Text(title + "\n", style="bold")
    rows = [(label, value) for label, value in totals.items() if value]
    if not rows:
        text.append("  nothing yet\n", style="dim")
        return text
    top = max(value for _, value in rows) or 1.0
    width = min(18, max(len(label) for label, _ in rows[:ROWS_SHOWN]))
    for label, value in rows[:ROWS_SHOWN]:
        filled = round(value / top * BAR_WIDTH)
        label_style = cells.RUN_STATE_STYLES.get(label, "")
        text.append(f"  {cells.fit(label, 18):<{width}} ", style=label_style)
        text.append("█" * filled, style=style)
        text.append("·" * (BAR_WIDTH - filled), style="dim")
        text.append(f" {value:,.2f}{unit}\n" if unit else f" {value:,.0f}\n")
    if len(rows) > ROWS_SHOWN:
        text.append(f"  … {len(rows) - ROWS_SHOWN} more\n", style="dim")
    return text


def durations_block(stats: RunStats) -> Text:
    text = Text("Durations (start to end)\n", style="bold")
    text.append(f"  {'state':<10} {'runs':>5} {'average':>8} {'median':>8}\n", style="dim")
    rows = [*stats.durations_by_state.items(), ("all", stats.durations)]
    for state, d in rows:
        if not d.count:
            continue
        text.append(f"  {state:<10}", style=cells.RUN_STATE_STYLES.get(state, "bold"))
        text.append(f" {d.count:>5} {units.duration(d.avg_s):>8} {units.duration(d.median_s):>8}\n")
    return text


class StatsScreen(DashboardScreen):
    """Blocks in a grid (two columns when wide); `p` cycles the period."""

    NAV = "stats"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "cycle_period", "Period"),
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.period = PERIODS[0]
        self._read_at = -1e18
        self._reading = False

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="stats-scroll"), Grid(id="stats-grid"):
            for block in BLOCKS:
                yield Static("", id=f"stats-{block}", classes="stats-block")

    def on_mount(self) -> None:
        self.query_one("#stats-scroll").focus()

    def on_resize(self) -> None:
        grid = self.query_one("#stats-grid", Grid)
        grid.styles.grid_size_columns = 2 if self.size.width >= 110 else 1

    def show(self, view: CatalogView) -> None:
        if view.now - self._read_at >= REFRESH_S and not self._reading:
            self._read_at = view.now
            self._reading = True
            self.read_stats(view.now)

    @work(thread=True, exclusive=True, group="stats")
    def read_stats(self, now: float) -> None:
        stats: RunStats | None = None
        usage: UsageStats | None = None
        problem = ""
        try:
            from cvtui.stats import compute_stats, read_usage_stats

            since = None if self.period[1] is None else now - self.period[1]
            with self.dashboard.reader.use() as catalog:
                runs, models = catalog.run_usage(since, now), catalog.gpu_models()
                usage = read_usage_stats(catalog, since, now)
            stats = compute_stats(runs, models, since=since, now=now)
        except (ImportError, AttributeError) as exc:  # an older cvtui without `cvtui stats`
            problem = f"stats are not available in this build: {exc}"
        finally:
            deliver(self, self._stats_read, stats, problem, usage)

    def _stats_read(
        self, stats: RunStats | None, problem: str, usage: UsageStats | None = None
    ) -> None:
        self._reading = False
        if stats is None:
            self.set_info(Text(problem, style="red"))
            return
        uses = {gpu: float(count) for gpu, count in stats.gpu_uses.items()}
        states = {state: float(count) for state, count in stats.by_state.items()}
        blocks = {
            "states": bar_rows(f"Runs by state ({stats.runs})", states, "", "cyan"),
            "durations": durations_block(stats),
            "hours-user": bar_rows("GPU-hours by user", stats.gpu_hours_by_user, " h", "green"),
            "hours-host": bar_rows("GPU-hours by host", stats.gpu_hours_by_host, " h", "magenta"),
            "hours-model": bar_rows(
                "GPU-hours by GPU model", stats.gpu_hours_by_model, " h", "yellow"
            ),
            "uses": bar_rows("Runs per GPU (host:index)", uses, "", "blue"),
        }
        if usage is not None:
            energy = dict(usage.energy_kwh_by_user)
            for user, kwh in usage.simulated_kwh_by_user.items():
                energy[f"{user} (simulated)"] = kwh
            utils = {h: f["util_mean"] or 0.0 for h, f in usage.hosts.items()}
            blocks["energy-user"] = bar_rows("Energy by user (GPU power)", energy, " kWh", "red")
            blocks["idle-user"] = bar_rows(
                "Idle-held GPU-hours by user", usage.idle_gpu_hours_by_user, " h", "magenta"
            )
            blocks["util-host"] = bar_rows("Mean GPU util by host", utils, " %", "green")
        for name, text in blocks.items():
            self.query_one(f"#stats-{name}", Static).update(text)
        self.set_info(
            Text(
                f"{self.period[0]} · {stats.gpu_hours:,.2f} GPU-hours in all · p: period",
                style="dim",
            )
        )

    def action_cycle_period(self) -> None:
        self.period = PERIODS[(PERIODS.index(self.period) + 1) % len(PERIODS)]
        self.action_reload()

    def action_reload(self) -> None:
        self._read_at = -1e18
        view = self.dashboard.view
        if view is not None:
            self.show(view)

    def commands(self) -> list[PaletteCommand]:
        return [
            PaletteCommand(f"Stats: {label}", "change the period", partial(self.use_period, period))
            for period in PERIODS
            for label in period[:1]
        ]

    def use_period(self, period: tuple[str, float | None]) -> None:
        self.period = period
        self.action_reload()
