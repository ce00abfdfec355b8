"""A run's output made safe to print on a terminal: colours and carriage returns stay, the rest
of the escape sequences a program can send (window title, OSC 52 clipboard writes, cursor
movement, screen clears, device queries) are dropped.

A run's log is written by whatever the run executes; printed raw, it could set the window
title, write the clipboard or move the cursor over earlier output. SafeTerminalText filters a
stream fed in pieces (a sequence cut between two reads is handled whole).
"""

from __future__ import annotations

import codecs

ESC = "\x1b"
KEPT_CONTROLS = frozenset("\n\r\t")
MAX_CSI_CHARS = 64  # an SGR with 24-bit colours is about 20; longer is not a colour
MAX_STRING_CHARS = 4096  # an OSC/DCS body dropped up to this; past it the rest shows as text
SGR_PARAMETER_CHARS = frozenset("0123456789;:")

_TEXT, _ESCAPE, _ESCAPE_INTERMEDIATE, _CSI, _STRING, _STRING_ESCAPE = range(6)


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F


class SafeTerminalText:
    """Filters bytes of a run's output for a terminal; feed() pieces, finish() at the end."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._state = _TEXT
        self._pending: list[str] = []  # the sequence being read (kept only if it is an SGR)
        self._length = 0

    def feed(self, data: bytes) -> bytes:
        return self._filter(self._decoder.decode(data))

    def finish(self) -> bytes:
        """The rest at the end of the stream; an unfinished sequence is dropped."""
        out = self._filter(self._decoder.decode(b"", final=True))
        self._state, self._pending, self._length = _TEXT, [], 0
        return out

    def _filter(self, text: str) -> bytes:
        out: list[str] = []
        for char in text:
            self._step(char, out)
        return "".join(out).encode()

    def _step(self, char: str, out: list[str]) -> None:
        state = self._state
        if state == _TEXT:
            if char == ESC:
                self._begin(_ESCAPE, char)
            elif char in KEPT_CONTROLS or not _is_control(char):
                out.append(char)
            # any other control (BEL, backspace, C1 CSI/OSC introducers) is dropped
        elif state == _ESCAPE:
            if char == "[":
                self._begin(_CSI, ESC + char)
            elif char in "]PX^_":  # OSC, DCS, SOS, PM, APC: a string up to a terminator
                self._begin(_STRING, "")
            elif " " <= char <= "/":
                self._state = _ESCAPE_INTERMEDIATE
            elif "0" <= char <= "~":
                self._state = _TEXT  # a two-character escape (ESC 7, ESC c ...): dropped
            else:
                self._state = _TEXT  # a lone ESC: dropped, what follows is read again
                self._step(char, out)
        elif state == _ESCAPE_INTERMEDIATE:
            if "0" <= char <= "~":
                self._state = _TEXT  # e.g. a charset switch ESC ( 0: dropped
            elif not " " <= char <= "/":
                self._state = _TEXT
                self._step(char, out)
        elif state == _CSI:
            self._csi(char, out)
        else:
            self._string(char, out)

    def _begin(self, state: int, start: str) -> None:
        self._state = state
        self._pending = [start]
        self._length = 0

    def _csi(self, char: str, out: list[str]) -> None:
        self._length += 1
        if "@" <= char <= "~":  # the final character
            body = "".join(self._pending[1:])
            if char == "m" and all(c in SGR_PARAMETER_CHARS for c in body):
                out.append("".join(self._pending) + char)  # a colour: kept
            self._state = _TEXT
        elif " " <= char <= "?" and self._length < MAX_CSI_CHARS:
            self._pending.append(char)
        else:  # not a sequence after all (or far too long): drop it, read the char again
            self._state = _TEXT
            self._step(char, out)

    def _string(self, char: str, out: list[str]) -> None:
        self._length += 1
        if self._state == _STRING_ESCAPE:
            self._state = _TEXT
            if char != "\\":  # not ST: the string ended, a new escape begins
                self._begin(_ESCAPE, ESC)
                self._step(char, out)
        elif char in ("\x07", "\x9c"):  # BEL or the C1 string terminator
            self._state = _TEXT
        elif char == ESC:
            self._state = _STRING_ESCAPE
        elif char == "\n" or self._length > MAX_STRING_CHARS:
            # A log line ends the string: a stray introducer must not hide the rest of the log.
            self._state = _TEXT
            self._step(char, out)


def safe_for_terminal(data: bytes) -> bytes:
    """data filtered as one whole stream."""
    text = SafeTerminalText()
    return text.feed(data) + text.finish()
