"""A run's output made safe to print on a terminal: colours and carriage returns stay, the rest
of the escape sequences a program can send (window title, OSC 52 clipboard writes, cursor
movement, screen clears, device queries) are dropped.

A run's log is written by whatever the run executes; printed raw, it could set the window
title, write the clipboard or move the cursor over earlier output. SafeTerminalText filters a
stream of bytes fed in pieces (a sequence cut between two reads is handled whole). Every other
byte passes as it is, invalid UTF-8 included, except C1 control characters: U+0080..U+009F as
UTF-8, and the raw bytes 0x80..0x9F outside a UTF-8 sequence (an 8-bit terminal reads 0x9B
as CSI).
"""

from __future__ import annotations

import re

ESC = 0x1B
# What the byte-by-byte path must look at; runs of anything else are copied whole.
_SPECIAL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")
KEPT_CONTROLS = frozenset(b"\n\r\t")
MAX_CSI_BYTES = 64  # an SGR with 24-bit colours is about 20; longer is not a colour
MAX_STRING_BYTES = 4096  # an OSC/DCS body dropped up to this; past it the rest shows as text
SGR_PARAMETER_BYTES = frozenset(b"0123456789;:")
STRING_INTRODUCERS = frozenset(b"]PX^_")  # OSC, DCS, SOS, PM, APC: a string up to ST or BEL
STRING_TERMINATORS = frozenset(b"\x07\x9c")  # BEL, or the 8-bit ST

_TEXT, _ESCAPE, _ESCAPE_INTERMEDIATE, _CSI, _STRING, _STRING_ESCAPE = range(6)


def _continuations(lead: int) -> int:
    """How many continuation bytes a UTF-8 lead byte announces (0: not a lead byte)."""
    if 0xC2 <= lead <= 0xDF:
        return 1
    if 0xE0 <= lead <= 0xEF:
        return 2
    if 0xF0 <= lead <= 0xF4:
        return 3
    return 0


class SafeTerminalText:
    """Filters bytes of a run's output for a terminal; feed() pieces, finish() at the end."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._state = _TEXT
        self._pending = bytearray()  # the CSI being read (kept only if it is an SGR)
        self._length = 0  # bytes of the sequence or string read so far
        self._needed = 0  # continuation bytes the current UTF-8 character still needs
        self._lead_c2 = False  # a 0xC2 held back: with 0x80..0x9F it is a C1 control

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        at, end = 0, len(data)
        while at < end:
            if self._state == _TEXT and not self._needed and not self._lead_c2:
                found = _SPECIAL.search(data, at)
                stop = end if found is None else found.start()
                out += data[at:stop]  # printable ASCII, \n, \r, \t: as they are
                at = stop
                if at == end:
                    break
            self._step(data[at], out)
            at += 1
        return bytes(out)

    def finish(self) -> bytes:
        """The rest at the end of the stream; an unfinished sequence is dropped."""
        out = b"\xc2" if self._lead_c2 and self._state == _TEXT else b""
        self._reset()
        return out

    def _step(self, byte: int, out: bytearray) -> None:
        state = self._state
        if state == _TEXT:
            self._text(byte, out)
        elif state == _ESCAPE:
            if byte == 0x5B:  # [
                self._state, self._pending, self._length = _CSI, bytearray(b"\x1b["), 0
            elif byte in STRING_INTRODUCERS:
                self._state, self._length = _STRING, 0
            elif 0x20 <= byte <= 0x2F:
                self._state = _ESCAPE_INTERMEDIATE
            elif 0x30 <= byte <= 0x7E:
                self._state = _TEXT  # a two-byte escape (ESC 7, ESC c ...): dropped
            else:
                self._state = _TEXT  # a lone ESC: dropped, what follows is read again
                self._text(byte, out)
        elif state == _ESCAPE_INTERMEDIATE:
            if 0x30 <= byte <= 0x7E:
                self._state = _TEXT  # e.g. a charset switch ESC ( 0: dropped
            elif not 0x20 <= byte <= 0x2F:
                self._state = _TEXT
                self._text(byte, out)
        elif state == _CSI:
            self._csi(byte, out)
        else:
            self._string(byte, out)

    def _text(self, byte: int, out: bytearray) -> None:
        if self._lead_c2:
            self._lead_c2 = False
            if 0x80 <= byte <= 0x9F:
                self._needed = 0
                return  # U+0080..U+009F: a C1 control as UTF-8, dropped with its lead byte
            out.append(0xC2)
        if byte >= 0x80:
            if 0x80 <= byte <= 0xBF:
                if self._needed:
                    self._needed -= 1
                    out.append(byte)
                elif byte >= 0xA0:
                    out.append(byte)  # invalid UTF-8, and no control: kept as written
                # a stray 0x80..0x9F: an 8-bit C1 control, dropped
                return
            self._needed = _continuations(byte)
            if byte == 0xC2:
                self._lead_c2 = True  # decided by the next byte
            else:
                out.append(byte)
            return
        self._needed = 0
        if byte == ESC:
            self._state = _ESCAPE
        elif byte in KEPT_CONTROLS or 0x20 <= byte < 0x7F:
            out.append(byte)
        # any other control (BEL, backspace, NUL, DEL) is dropped

    def _csi(self, byte: int, out: bytearray) -> None:
        self._length += 1
        if 0x40 <= byte <= 0x7E:  # the final byte
            if byte == 0x6D and all(b in SGR_PARAMETER_BYTES for b in self._pending[2:]):
                out += self._pending
                out.append(byte)  # a colour: kept
            self._state = _TEXT
        elif 0x20 <= byte <= 0x3F and self._length < MAX_CSI_BYTES:
            self._pending.append(byte)
        else:  # not a sequence after all (or far too long): drop it, read the byte again
            self._state = _TEXT
            self._text(byte, out)

    def _string(self, byte: int, out: bytearray) -> None:
        self._length += 1
        if self._state == _STRING_ESCAPE:
            self._state = _TEXT
            if byte != 0x5C:  # not ESC \ (ST): the string ended, a new escape begins
                self._state = _ESCAPE
                self._step(byte, out)
        elif byte in STRING_TERMINATORS:
            self._state = _TEXT
        elif byte == ESC:
            self._state = _STRING_ESCAPE
        elif byte == 0x0A or self._length > MAX_STRING_BYTES:
            # A log line ends the string: a stray introducer must not hide the rest of the log.
            self._state = _TEXT
            self._text(byte, out)
