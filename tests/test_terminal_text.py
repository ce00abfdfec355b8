"""A run's output on a terminal: colours and \\r pass, every other escape sequence is dropped."""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from cvtui.terminal_text import SafeTerminalText

SGR = re.compile(rb"\x1b\[[0-9;:]*m")


def safe_for_terminal(data: bytes) -> bytes:
    """data filtered as one whole stream."""
    text = SafeTerminalText()
    return text.feed(data) + text.finish()


def harmless(out: bytes) -> bool:
    """No escape but colours, no control but \\n \\r \\t, no C1 control."""
    text = SGR.sub(b"", out).decode(errors="replace")
    return not any(
        (ord(c) < 0x20 and c not in "\n\r\t") or ord(c) == 0x7F or 0x80 <= ord(c) <= 0x9F
        for c in text
    )


def test_colours_and_carriage_returns_stay() -> None:
    data = b"\x1b[1;31mred\x1b[0m \x1b[38;2;10;20;30mrgb\x1b[m\r 50%|###  |\r100%\n"
    assert safe_for_terminal(data) == data


def test_title_clipboard_cursor_and_screen_escapes_are_dropped() -> None:
    cases = {
        b"a\x1b]0;pwned title\x07b": b"ab",  # window title, BEL-terminated
        b"a\x1b]52;c;ZWNobyBoaQ==\x1b\\b": b"ab",  # OSC 52 clipboard write, ST-terminated
        b"a\x1b[2Ab": b"ab",  # cursor up over earlier output
        b"a\x1b[2J\x1b[Hb": b"ab",  # clear the screen, cursor home
        b"a\x1b[?1049hb": b"ab",  # alternate screen
        b"a\x1b[6nb": b"ab",  # cursor position report: the terminal would type an answer
        b"a\x1bPq#0;2;0;0;0\x1b\\b": b"ab",  # DCS (sixel)
        b"a\x1b(0b": b"ab",  # line-drawing charset
        b"a\x1bcb": b"ab",  # full reset
        b"a\xc2\x9b2Jb": b"a2Jb",  # a C1 CSI (UTF-8): the introducer goes, the rest is text
        b"a\x9b2Jb": b"a2Jb",  # the same as one raw byte, as an 8-bit terminal reads it
        b"a\x1b]0;t\xc2\x9cb": b"ab",  # OSC ended by the C1 string terminator
        b"a\x07\x08\x00b": b"ab",  # bell, backspace, NUL
        b"a\x1b[31;1;4:3mb": b"a\x1b[31;1;4:3mb",  # still a colour (curly underline)
        b"a\x1b[3 mb": b"ab",  # an intermediate byte: not a plain SGR
    }
    for data, wanted in cases.items():
        assert safe_for_terminal(data) == wanted, data


def test_text_bytes_pass_as_written_invalid_utf8_included() -> None:
    data = "caf\u00e9 \u20ac \U0001f600 \u00a0".encode() + b" \xe9 \xff\xfe \xc3\n"
    assert safe_for_terminal(data) == data


def test_an_unterminated_string_does_not_hide_the_next_lines() -> None:
    assert safe_for_terminal(b"x\x1b]0;title without end\nnext line\n") == b"x\nnext line\n"
    long = b"\x1b]52;c;" + b"A" * 5000 + b"\x07tail"
    out = safe_for_terminal(long)
    assert out.endswith(b"tail") and harmless(out) and len(out) < 1000


def test_a_sequence_cut_between_reads_is_handled_whole() -> None:
    text = SafeTerminalText()
    pieces = [b"a\x1b", b"]0;ti", b"tle\x1b", b"\\b\x1b[3", b"1mc\xc3", b"\xa9"]
    out = b"".join(text.feed(p) for p in pieces) + text.finish()
    assert out == "ab\x1b[31mc\u00e9".encode()
    text = SafeTerminalText()  # a C1 control cut between its two UTF-8 bytes
    assert text.feed(b"x\xc2") + text.feed(b"\x9by\xc2") + text.finish() == b"xy\xc2"


PIECES = ["\x1b", "[", "]", "0;", "52;c;", "\x07", "\\", "m", "31", ";", "?", "\r", "\n"]
PIECES += ["\x9b", "\x9c", "P", "(", "2J", "\x1b[0m", "\x1b]0;t\x07"]
pieces_of_logs = st.lists(
    st.one_of(
        st.text(max_size=10).map(str.encode),
        st.binary(max_size=4),
        st.sampled_from(PIECES).map(str.encode),
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(pieces_of_logs, st.lists(st.integers(0, 200), max_size=6))
def test_any_output_in_any_pieces_prints_only_text_and_colours(
    data: bytes, cuts: list[int]
) -> None:
    whole = safe_for_terminal(data)
    assert harmless(whole)
    text = SafeTerminalText()
    bounds = [0, *sorted(c for c in cuts if c < len(data)), len(data)]
    out = b"".join(text.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
    assert out + text.finish() == whole
    if b"\x1b" not in data and harmless(data):  # nothing to neutralise: every byte stays
        try:
            data.decode()
        except UnicodeDecodeError:
            return  # stray 0x80..0x9F bytes are dropped even when decoding replaces them
        assert whole == data
