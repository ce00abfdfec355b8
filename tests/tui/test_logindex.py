"""LogIndex: line offsets of a growing file, read back a few lines at a time."""

from __future__ import annotations

from pathlib import Path

from cvtui.tui.logindex import LogIndex, display_line


def test_lines_are_indexed_as_the_file_grows(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    index = LogIndex(path)
    assert not index.update() and index.line_count == 0  # no file yet: an empty log
    path.write_bytes(b"one\ntwo\nthr")
    assert index.update()
    assert index.line_count == 3  # the unfinished last line shows too
    assert index.read_lines(0, 10) == ["one", "two", "thr"]
    with open(path, "ab") as fh:
        fh.write(b"ee\nfour\n")
    assert index.update()
    assert index.line_count == 4  # "three" completed, "four" added, no empty tail line
    assert index.read_lines(2, 5) == ["three", "four"]
    assert not index.update()  # nothing new


def test_index_steps_through_a_big_file_in_budgets(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    line = b"x" * 99 + b"\n"
    path.write_bytes(line * 50_000)  # 5 MB
    index = LogIndex(path)
    index.update(budget_bytes=1 << 20)
    assert index.size == 1 << 20
    assert index.pending() == len(line) * 50_000 - (1 << 20)
    while index.pending():
        index.update(budget_bytes=1 << 20)
    assert index.line_count == 50_000
    assert index.read_lines(49_998, 5) == ["x" * 99, "x" * 99]
    assert index.starts[12_345] == 12_345 * 100  # offsets are exact across chunk borders
    assert index.longest == 99


def test_a_truncated_or_replaced_file_is_indexed_afresh(tmp_path: Path) -> None:
    path = tmp_path / "output.log"
    path.write_bytes(b"a\nb\nc\n")
    index = LogIndex(path)
    index.update()
    assert index.line_count == 3
    path.write_bytes(b"z\n")  # shrank
    assert index.update()
    assert index.read_lines(0, 5) == ["z"]
    replacement = tmp_path / "new.log"
    replacement.write_bytes(b"new 1\nnew 2\nnew 3\nnew 4\n")  # longer, but another file
    replacement.replace(path)
    assert index.update()
    assert index.read_lines(0, 5) == ["new 1", "new 2", "new 3", "new 4"]
    path.unlink()
    assert index.update() and index.line_count == 0


def test_terminal_rendering_of_carriage_returns_tabs_and_bad_bytes() -> None:
    assert display_line(b"windows line\r") == "windows line"
    assert display_line(b" 10%|#  \r 50%|#####  \r100%|##########") == "100%|##########"
    assert display_line(b"a\tb") == "a       b"
    assert display_line(b"caf\xe9") == "caf\ufffd"
