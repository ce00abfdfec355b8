"""`cvtui logs` and the --follow printers: a run's escape sequences never reach the terminal
raw, except with --raw."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from support import add_finished_run

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.cli.follow import OutputPrinter
from cvtui.mirror import mirror_dir

RUN = "01hzzlogs0test0run00000000"
HOSTILE = (
    b"\x1b]0;you have been pwned\x07"  # window title
    b"epoch 1 \x1b[32mok\x1b[0m\n"  # a colour: kept
    b"\x1b]52;c;cm0gLXJmIH4=\x07"  # OSC 52: writes the clipboard
    b" 10%|#   |\r100%|####|\n"  # a progress bar: \r kept
    b"\x1b[1A\x1b[2Kfake prompt $ \n"  # cursor up, erase line
)
SAFE = b"epoch 1 \x1b[32mok\x1b[0m\n 10%|#   |\r100%|####|\nfake prompt $ \n"


@pytest.fixture
def logged(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    with Catalog.open_home(home) as catalog:
        add_finished_run(catalog, RUN, "hostile")
    log = mirror_dir(home, RUN) / "output.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(HOSTILE)
    return home


def logs(home: Path, *args: str) -> bytes:
    result = CliRunner().invoke(
        main, ["--home", str(home), "logs", RUN, *args], catch_exceptions=False
    )
    assert result.exit_code == 0
    return result.stdout_bytes


def test_logs_keep_colours_and_drop_title_clipboard_and_cursor_escapes(logged: Path) -> None:
    assert logs(logged) == SAFE
    assert logs(logged, "--tail", "1") == b"fake prompt $ \n"
    assert logs(logged, "--raw") == HOSTILE


def test_follow_printers_filter_unless_raw(
    logged: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    with Catalog.open_home(logged) as catalog:
        for prefix, raw, expected in (
            (False, False, SAFE),
            (True, False, b"".join(b"[hostile] " + line for line in SAFE.splitlines(True))),
            (False, True, HOSTILE),
        ):
            printer = OutputPrinter(catalog, prefix=prefix, raw=raw)
            for at in range(0, len(HOSTILE), 7):  # in pieces, escapes cut between two
                printer.feed(RUN, HOSTILE[at : at + 7])
            printer.finish()
            assert capsysbinary.readouterr().out == expected
