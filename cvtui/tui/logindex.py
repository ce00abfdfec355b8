"""Line offsets of a growing log file, so any line is one seek away and nothing loads it whole."""

from __future__ import annotations

import os
from array import array
from itertools import accumulate, islice
from pathlib import Path

CHUNK_BYTES = 4 << 20  # read size while indexing; memory use stays near this
MAX_SHOWN_CHARS = 2000  # a longer line is cut: nobody reads a 1 MB line in a terminal


class LogIndex:
    """Byte offsets of every line start of one file, extended as the file grows.

    8 bytes per line: a 100 MB log of 1M lines costs 8 MB and about a third of a second to
    index (splitting happens in C). A file that shrinks or is replaced is indexed afresh.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.starts = array("q", [0])  # starts[i] is the byte offset of line i
        self.size = 0  # bytes indexed so far
        self.longest = 0  # bytes of the longest line seen (approximate across chunks)
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the indexed file

    @property
    def line_count(self) -> int:
        """Lines shown: a last line without its newline yet counts, an empty tail does not."""
        count = len(self.starts)
        if self.starts[-1] == self.size:
            count -= 1
        return count

    def reset(self) -> None:
        self.starts = array("q", [0])
        self.size = 0
        self.longest = 0
        self._identity = None

    def update(self, budget_bytes: int | None = None) -> bool:
        """Index what the file gained, at most ``budget_bytes`` of it; True when anything did.

        A missing file is an empty log. Call again while ``pending()`` is positive to go on.
        """
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            changed = self.size > 0
            self.reset()
            return changed
        with fh:
            info = os.fstat(fh.fileno())
            identity = (info.st_dev, info.st_ino)
            changed = False
            if identity != self._identity or info.st_size < self.size:
                changed = self.size > 0
                self.reset()
                self._identity = identity
            end = (
                info.st_size
                if budget_bytes is None
                else min(info.st_size, self.size + budget_bytes)
            )
            fh.seek(self.size)
            while self.size < end:
                data = fh.read(min(CHUNK_BYTES, end - self.size))
                if not data:
                    break
                self._add(data)
                changed = True
        return changed

    def pending(self) -> int:
        """Bytes of the file not indexed yet (0 when it is gone)."""
        try:
            return max(0, self.path.stat().st_size - self.size)
        except FileNotFoundError:
            return 0

    def _add(self, data: bytes) -> None:
        parts = data.split(b"\n")
        # Each complete part ends one line; the next line starts one byte (the newline) later.
        ends = accumulate(map((1).__add__, map(len, parts[:-1])), initial=self.size)
        self.starts.extend(islice(ends, 1, None))
        self.longest = max(self.longest, max(map(len, parts)))
        self.size += len(data)

    def line_span(self, number: int) -> tuple[int, int]:
        """Byte range [start, end) of line ``number``, newline excluded."""
        start = self.starts[number]
        end = self.starts[number + 1] - 1 if number + 1 < len(self.starts) else self.size
        return start, end

    def read_lines(self, first: int, count: int) -> list[str]:
        """Lines first .. first+count-1 (fewer at the end), decoded for a terminal.

        A carriage return inside a line shows what a terminal would: the text after the last
        one, so tqdm's redrawn bars read as their latest state.
        """
        last = min(first + count, self.line_count)
        if first >= last:
            return []
        start = self.starts[first]
        end = self.line_span(last - 1)[1]
        with open(self.path, "rb") as fh:
            fh.seek(start)
            data = fh.read(end - start)
        return [display_line(raw) for raw in data.split(b"\n")[: last - first]]


def display_line(raw: bytes) -> str:
    """One raw log line as text a terminal row can show."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if b"\r" in raw:
        raw = raw.rsplit(b"\r", 1)[1]
    text = raw[: MAX_SHOWN_CHARS * 4].decode("utf-8", errors="replace")
    return text.expandtabs(8)[:MAX_SHOWN_CHARS]
