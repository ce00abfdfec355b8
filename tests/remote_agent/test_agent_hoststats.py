"""Host figures and process details read from the real /proc of this machine."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from remote_agent_harness import child_env

from remote_agent.hoststats import (
    HostStats,
    ProcessReader,
    container_id,
    existing_ancestor,
    parent_pid,
    read_environ,
)

ID = "4f1c2b7a9e8d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b"
ID2 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("cgroup", "expected"),
    [
        (f"0::/system.slice/docker-{ID}.scope\n", ID[:12]),  # docker, systemd driver, v2
        (f"12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n", ID[:12]),  # cgroupfs, v1
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container",
            ID[:12],
        ),
        (
            "0::/kubepods.slice/kubepods-besteffort.slice/"
            f"kubepods-besteffort-pod1d2e_3f4a.slice/cri-containerd-{ID}.scope\n",
            ID[:12],
        ),
        (f"4:pids:/kubepods/burstable/pod0f3d2c1b-aaaa-bbbb-cccc-0123456789ab/{ID}\n", ID[:12]),
        (f"0::/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope\n", ID[:12]),
        (f"0::/docker/{ID}/docker/{ID2}\n", ID2[:12]),  # docker in docker: the inner one
        ("0::/user.slice/user-1000.slice/session-2.scope\n", None),
        ("0::/system.slice/containerd.service\n", None),
        ("0::/\n", None),
        (f"0::/docker/{ID[:63]}\n", None),  # not a full id
        (f"0::/docker/{ID.upper()}\n", None),  # ids are lower-case hex
        ("", None),
        ("not a cgroup line at all", None),
    ],
)
def test_container_id(cgroup: str, expected: str | None) -> None:
    assert container_id(cgroup) == expected


def test_host_sample_creates_the_root_and_reports_bytes(tmp_path: Path) -> None:
    root = tmp_path / "nested" / "root"
    stats = HostStats(str(root))
    try:
        first = stats.sample()
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert first.cpu_percent is None
        end = time.monotonic() + 0.1
        while time.monotonic() < end:  # give the CPU counters something to count
            pass
        second = stats.sample()
    finally:
        stats.close()
    assert second.cpu_percent is not None and 0 < second.cpu_percent <= 100
    assert second.load1 is not None and second.load1 >= 0
    assert second.mem_total and second.mem_used and 0 < second.mem_used < second.mem_total
    st = os.statvfs(root)
    assert second.disk_total == st.f_blocks * st.f_frsize
    assert second.disk_free is not None
    assert abs(second.disk_free - st.f_bavail * st.f_frsize) < 1 << 30


def test_root_that_cannot_be_created_reports_its_parent_disk(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    stats = HostStats(str(blocker / "root"))
    sample = stats.sample()
    stats.close()
    assert existing_ancestor(str(blocker / "root" / "deeper")) == str(blocker)
    assert sample.disk_total == os.statvfs(tmp_path).f_blocks * os.statvfs(tmp_path).f_frsize


def test_tilde_root_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    stats = HostStats("~/cache/cvtui")
    stats.close()
    assert stats.root == str(tmp_path / "cache" / "cvtui")
    assert (tmp_path / "cache" / "cvtui").is_dir()


def test_process_details_of_a_real_run(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "an arg with spaces"]
    child = subprocess.Popen(argv, env=child_env(CVTUI_RUN_ID="01J9RUN"))
    try:
        deadline = time.monotonic() + 10
        # Wait for the exec: until then the child still shows this process's environment.
        while (read_environ(child.pid) or {}).get("CVTUI_RUN_ID") != "01J9RUN":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        info = ProcessReader().info(child.pid)
        assert parent_pid(child.pid) == os.getpid()
    finally:
        child.kill()
        child.wait()
    assert info.user == pwd.getpwuid(os.getuid()).pw_name
    assert info.command == " ".join(argv)
    assert info.run_id == "01J9RUN"
    assert info.container == container_id(Path("/proc/self/cgroup").read_text())


def test_details_of_a_vanished_pid_are_empty() -> None:
    info = ProcessReader().info(2**31 - 2)
    assert (info.user, info.command, info.container, info.run_id) == (None, "", None, None)
    assert read_environ(2**31 - 2) is None
    assert parent_pid(2**31 - 2) is None


def test_parent_pid_survives_parens_in_the_command_name(tmp_path: Path) -> None:
    odd = tmp_path / "a) b (c"
    odd.symlink_to(sys.executable)
    child = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while b") b (" not in Path(f"/proc/{child.pid}/stat").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert parent_pid(child.pid) == os.getpid()
    finally:
        child.kill()
        child.wait()
