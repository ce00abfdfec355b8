"""Metric keys on the left, the chosen key plotted on the right for one run or several overlaid."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, cast

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import OptionList, Static

from cvtui.tui.messages import deliver
from cvtui.tui.widgets.metric_plot import SERIES_STYLES, MetricPlot, Series

if TYPE_CHECKING:
    from cvtui.tui.app import DashboardApp


class KeyList(OptionList):
    """The metric keys; j/k move like everywhere else."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "cursor_down", "Cursor down", show=False),
        Binding("k", "cursor_up", "Cursor up", show=False),
    ]


class MetricsPanel(Horizontal):
    """Reads keys and series in a worker whenever ``reload`` is called (on catalog changes)."""

    DEFAULT_CSS = """
    MetricsPanel { height: 1fr; }
    MetricsPanel > KeyList { width: 22; height: 1fr; }
    MetricsPanel > Vertical { width: 1fr; }
    MetricsPanel .caption { height: 1; color: $text-muted; }
    """

    def __init__(self, run_ids: Sequence[str], names: Mapping[str, str], **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.run_ids = list(run_ids)
        self.names = dict(names)
        self.keys: list[str] = []
        self.key: str | None = None
        self._reading = False
        self._again = False

    def compose(self) -> ComposeResult:
        yield KeyList(id="metric-keys")
        with Vertical():
            yield Static("", classes="caption")
            yield MetricPlot()

    @property
    def dashboard(self) -> DashboardApp:
        return cast("DashboardApp", self.app)

    def set_runs(self, run_ids: Sequence[str], names: Mapping[str, str]) -> None:
        self.names.update(names)
        if list(run_ids) != self.run_ids:
            self.run_ids = list(run_ids)
            self.reload()

    def reload(self) -> None:
        """Read keys and the chosen key's series again (coalesced while a read is running)."""
        if self._reading:
            self._again = True
            return
        self._reading = True
        self.read_metrics(list(self.run_ids), self.key)

    @work(thread=True, exclusive=True, group="metrics")
    def read_metrics(self, run_ids: list[str], key: str | None) -> None:
        keys: list[str] = []
        series: list[Series] = []
        note = ""
        try:
            with self.dashboard.reader.query() as queries:
                if not queries.features().metrics:
                    note = "no metrics synced yet: this catalog has no metrics table"
                else:
                    keys = queries.metric_keys(run_ids)
                    if key not in keys:
                        key = keys[0] if keys else None
                    if key is not None:
                        series = [
                            Series(self.names.get(r, r[:8]), queries.metric_series(r, key))
                            for r in run_ids
                        ]
                    elif not keys:
                        note = "no metrics synced yet for this run"
        finally:
            deliver(self, self._metrics_read, keys, key, series, note)

    def _metrics_read(
        self, keys: list[str], key: str | None, series: list[Series], note: str
    ) -> None:
        self._reading = False
        option_list = self.query_one(OptionList)
        if keys != self.keys:
            self.keys = keys
            option_list.set_options(keys)
        if self.key is None or self.key not in keys:
            self.key = key
        if self.key is not None:
            option_list.highlighted = keys.index(self.key)
        if key != self.key:
            self._again = True  # the user picked another key while this one was read
        else:
            self.draw(key, series, note)
        if self._again:
            self._again = False
            self.reload()

    def draw(self, key: str | None, series: list[Series], note: str) -> None:
        caption = self.query_one(".caption", Static)
        if note:
            caption.update(Text(note, style="dim"))
        else:
            text = Text(f"{key} by step", style="bold")
            for i, s in enumerate(series):
                last = s.points[-1][1] if s.points else None
                text.append(f"  {s.label}", style=SERIES_STYLES[i % len(SERIES_STYLES)])
                text.append(f" {last:.4g}" if last is not None else " -")
            caption.update(text)
        self.query_one(MetricPlot).show(series)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        key = self.keys[event.option_index] if event.option_index < len(self.keys) else None
        if key is not None and key != self.key:
            self.key = key
            self.reload()
