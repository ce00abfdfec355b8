"""Small renderings shared by the tables: state colours, bars, sparklines, ages, sizes."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from rich.text import Text

from cvtui.units import size

HOST_STATE_STYLES = {
    "healthy": "green",
    "stale": "yellow",
    "connecting": "cyan",
    "disconnected": "bold red",
    "error": "bold red",
    "drained": "magenta",
}
RUN_STATE_STYLES = {
    "queued": "cyan",
    "dispatching": "bold cyan",
    "running": "bold green",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "yellow",
    "lost": "red",
}
PRIORITY_STYLES = {"urgent": "bold red", "high": "yellow", "normal": "", "low": "dim"}
RUN_STATE_ICONS = {
    "queued": "·",
    "dispatching": "»",
    "running": "▶",
    "succeeded": "✔",
    "failed": "✘",
    "cancelled": "⊘",
    "lost": "?",
}

LEVELS = "▁▂▃▄▅▆▇█"
EIGHTHS = " ▏▎▍▌▋▊▉█"


def level_style(fraction: float | None) -> str:
    """Green while there is room, yellow when getting full, red when (nearly) full."""
    if fraction is None:
        return "dim"
    if fraction >= 0.9:
        return "red"
    if fraction >= 0.6:
        return "yellow"
    return "green"


def level_char(fraction: float | None) -> str:
    """One cell whose height shows fraction (0..1); '·' when unknown."""
    if fraction is None:
        return "·"
    return LEVELS[round(max(0.0, min(1.0, fraction)) * (len(LEVELS) - 1))]


def mini_bars(fractions: Sequence[float | None]) -> Text:
    """One coloured column per GPU, e.g. for utilisation or memory of a host's GPUs."""
    return _bars(tuple(level_char(f) for f in fractions), tuple(level_style(f) for f in fractions))


@lru_cache(maxsize=4096)
def _bars(chars: tuple[str, ...], styles: tuple[str, ...]) -> Text:
    # Few distinct combinations recur across hosts and seconds: build each once.
    text = Text("".join(chars))
    for i, style in enumerate(styles):
        text.stylize(style, i, i + 1)
    return text


def bar(fraction: float | None, width: int) -> Text:
    """A horizontal bar of width cells, eighth-cell resolution, coloured by level."""
    if fraction is None:
        return Text("·" * width, style="dim")
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (EIGHTHS[part] if part else "")
    text = Text(filled, style=level_style(fraction))
    text.append("·" * (width - len(filled)), style="dim")
    return text


def sparkline(values: Sequence[float | None], width: int, top: float) -> Text:
    """The last values as one row of block heights on a fixed 0..top scale, width cells.

    Values are averaged into width buckets; missing samples show as a gap.
    """
    if not values:
        return Text(" " * width)
    buckets: list[float | None] = []
    per = len(values) / width
    for i in range(width):
        lo, hi = int(i * per), max(int((i + 1) * per), int(i * per) + 1)
        chunk = [v for v in values[lo:hi] if v is not None]
        buckets.append(sum(chunk) / len(chunk) if chunk else None)
    if len(values) < width:
        # Too few samples: draw them at the right, newest last, as a scrolling chart does.
        buckets = [None for _ in range(width - len(values))]
        buckets += [v if v is None else float(v) for v in values[-width:]]
    text = Text()
    for value in buckets:
        if value is None:
            text.append(" ")
        else:
            fraction = value / top if top else 0.0
            text.append(level_char(fraction), style=level_style(fraction))
    return text


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def run_state(state: str) -> Text:
    return Text(f"{RUN_STATE_ICONS.get(state, ' ')} {state}", style=RUN_STATE_STYLES.get(state, ""))


def host_state(state: str, drained: bool = False, width: int = 12) -> Text:
    if drained and state == "healthy":
        return Text("drained", style=HOST_STATE_STYLES["drained"])
    return Text(fit(state, width), style=HOST_STATE_STYLES.get(state, ""))


def progress(value: float | None, width: int = 6) -> Text:
    """A progress bar with its percent; blank when the run never reported progress."""
    if value is None:
        return Text("")
    text = Text()
    eighths = round(max(0.0, min(100.0, value)) / 100 * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + (EIGHTHS[part] if part else "")
    text.append(filled, style="cyan")
    text.append("·" * (width - len(filled)), style="dim")
    text.append(f"{value:4.0f}%")
    return text


def memory(used: int | None, total: int | None) -> str:
    return f"{size(used)}/{size(total)}"


def fit(text: str, width: int) -> str:
    """text cut to width cells with an ellipsis when it is longer."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"
