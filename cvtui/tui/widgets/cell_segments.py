"""Table cells as Rich segments, one line a row, without Rich's text layout (rows redraw often)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from itertools import pairwise
from typing import Any

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Span, Text

PADDING = 1  # blank cells on each side of a column


def fit_plain(text: str, width: int) -> str:
    """text padded or cut (with an ellipsis) to exactly width cells."""
    if cell_len(text) <= width:
        return text + " " * (width - cell_len(text))
    return set_cell_size(text, width - 1) + "…"


def row_segments(
    cells: Sequence[Any], widths: Sequence[int], base: Style, console: Console
) -> list[Segment]:
    """One table row as segments over the base style; plain strings are never read as markup.

    A str or single-style Text becomes one segment, without Rich's text layout: most cells
    are like that, and rows are drawn often. Neighbours in the base style (padding, plain
    cells) share one segment: every segment costs again in each frame's filters and crops.
    """
    pad = " " * PADDING
    segments: list[Segment] = []
    plain: list[str] = []  # text in the base style not yet made a segment

    def flush() -> None:
        text = "".join(plain)
        plain.clear()
        if text:
            segments.append(Segment(text, base))

    for cell, width in zip(cells, widths, strict=False):
        plain.append(pad)
        if isinstance(cell, Text) and cell.spans:
            flush()
            segments.extend(styled_segments(cell, width, base, console))
        elif isinstance(cell, Text) and cell.style:
            flush()
            segments.append(
                Segment(fit_plain(cell.plain, width), base + console.get_style(cell.style))
            )
        else:
            plain.append(fit_plain(cell.plain if isinstance(cell, Text) else str(cell), width))
        plain.append(pad)
    flush()
    return segments


def styled_segments(text: Text, width: int, base: Style, console: Console) -> tuple[Segment, ...]:
    """A Text with spans as segments exactly width cells wide (cached: cells recur a lot)."""
    return _styled(text.plain, tuple(text.spans), text.style, width, base, console)


@lru_cache(maxsize=16384)
def _styled(
    plain: str,
    text_spans: tuple[Span, ...],
    text_style: str | Style,
    width: int,
    base: Style,
    console: Console,
) -> tuple[Segment, ...]:
    # Rich's own rendering lays text out (wrapping, justifying) and costs ~60 us a cell; a
    # table cell is one short line, so styles are resolved per span boundary instead.
    if cell_len(plain) > width or "\n" in plain:
        cut = Text(plain, style=text_style, spans=list(text_spans), end="")
        cut.truncate(width, overflow="ellipsis", pad=True)
        cut.stylize_before(base)
        return tuple(cut.render(console))
    own = base + console.get_style(text_style) if text_style else base
    spans = [(s.start, s.end, console.get_style(s.style)) for s in text_spans if s.end > s.start]
    cuts = sorted({0, len(plain), *(p for s in spans for p in s[:2] if p < len(plain))})
    segments = []
    for start, end in pairwise(cuts):
        style = own
        for s_start, s_end, span_style in spans:
            if s_start <= start and end <= s_end:
                style = style + span_style
        segments.append(Segment(plain[start:end], style))
    if cell_len(plain) < width:
        segments.append(Segment(" " * (width - cell_len(plain)), own))
    return tuple(segments)
