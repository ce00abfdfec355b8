"""The host root is the owner's alone: created 0700, tightened when it is cvtui's, warned about
when it is shared (real sshd; the root sits under a directory every user may enter)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from support import cvtui_process

from cvtui.lab import Lab, LabHostSpec

pytestmark = pytest.mark.sshd
NOBODY = 65534


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory any user may enter, as most home directories are (0755)."""
    path = Path(tempfile.mkdtemp(prefix="cvtui-root-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lab(lab_factory: Callable[..., Lab], open_parent: Path) -> Lab:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["hosts"]["gpu-01"]["root"] = str(open_parent / "cvtui-root")
    lab.inventory_path.write_text(yaml.safe_dump(document))
    (lab.directory / "user-home").mkdir()
    return lab


def cvtui(lab: Lab, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    user_home = lab.directory / "user-home"
    return cvtui_process(*args, home=home, inventory=lab.inventory_path, user_home=user_home)


def host_reason(lab: Lab, home: Path) -> tuple[str, str | None]:
    done = cvtui(lab, home, "hosts", "--json")
    [host] = json.loads(done.stdout)
    return host["state"], host["reason"]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_root_is_private(lab: Lab, home: Path, open_parent: Path) -> None:
    root = open_parent / "cvtui-root"
    assert host_reason(lab, home) == ("healthy", None)
    assert mode(root) == 0o700
    if os.geteuid() == 0:
        peek = subprocess.run(
            ["ls", str(root / "agent")], user=NOBODY, group=NOBODY, capture_output=True, text=True
        )
        assert peek.returncode != 0 and "Permission denied" in peek.stderr


def test_an_open_root_of_cvtui_is_tightened_and_that_is_said(
    lab: Lab, home: Path, open_parent: Path
) -> None:
    root = open_parent / "cvtui-root"
    for name in ("agent", "code", "runs"):  # what an older cvtui left, world-readable
        (root / name).mkdir(parents=True)
    root.chmod(0o755)
    state, reason = host_reason(lab, home)
    assert state == "healthy"
    assert reason == (
        f"warning: host root {root} was open to other users (mode 0755); cvtui made it 0700"
    )
    assert mode(root) == 0o700
    assert host_reason(lab, home) == ("healthy", None)  # said once, when it was done


def test_a_shared_open_root_is_left_alone_with_a_warning(
    lab: Lab, home: Path, open_parent: Path
) -> None:
    root = open_parent / "cvtui-root"
    root.mkdir()
    root.chmod(0o755)
    (root / "notes.txt").write_text("not cvtui's\n")
    warning = (
        f"host root {root} is open to other users (mode 0755): they can read its code "
        f"snapshots and run outputs; if nothing else needs that, run on the host: "
        f"chmod 700 {root}"
    )
    assert host_reason(lab, home) == ("healthy", f"warning: {warning}")
    assert mode(root) == 0o755
    assert host_reason(lab, home) == ("healthy", f"warning: {warning}")  # every time
    doctor = cvtui(lab, home, "doctor", "gpu-01")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    [line] = [line for line in doctor.stdout.splitlines() if "root mode" in line]
    assert line.startswith("WARN root mode") and warning in line
