"""GPU backends: the nvidia-smi parsers and program, NVML, and the simulated GPUs' rules."""

from __future__ import annotations

import ctypes.util
import json
import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from remote_agent_harness import child_env

from remote_agent.gpus import (
    BackendUnavailable,
    NvidiaSmiBackend,
    NvmlBackend,
    open_backend,
    parse_apps_csv,
    parse_gpu_csv,
)
from remote_agent.protocol import BACKEND_NONE, BACKEND_NVIDIA_SMI, BACKEND_NVML, GpuSample
from remote_agent.simulated import SimulatedBackend

MIB = 1 << 20
GIB = 1 << 30

# Captured from `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` on three kinds of
# boards: an A100 (no fan), a consumer card, and one whose sensors say nothing.
GPU_CSV = (
    "0, GPU-5c4b8a2e-1f0e-7d3a-9c61-2b8e4f0a1d11, NVIDIA A100-SXM4-80GB,"
    " 87, 40213, 81920, 61, 312.45, 400.00, [N/A], 00000000:07:00.0\n"
    "1, GPU-0b7e3c1a-22d4-4f6b-8e0a-7d9c5b3a1e22, NVIDIA GeForce RTX 3090,"
    " 0, 1, 24576, 34, 21.50, 350.00, 30, 00000000:3B:00.0\n"
    "2, GPU-9f8e7d6c-5b4a-3c2d-1e0f-a1b2c3d4e5f6, NVIDIA A100-SXM4-80GB,"
    " [N/A], [N/A], 81920, [N/A], [Not Supported], [Not Supported], [Unknown Error], [N/A]\n"
)
APPS_CSV = """\
GPU-5c4b8a2e-1f0e-7d3a-9c61-2b8e4f0a1d11, 12345, 40200
GPU-5c4b8a2e-1f0e-7d3a-9c61-2b8e4f0a1d11, 12399, [N/A]
GPU-0b7e3c1a-22d4-4f6b-8e0a-7d9c5b3a1e22, 777, 0
"""


def test_parse_gpu_csv_converts_units_and_missing_values() -> None:
    a100, rtx, silent = parse_gpu_csv(GPU_CSV)
    assert a100 == GpuSample(
        index=0,
        uuid="GPU-5c4b8a2e-1f0e-7d3a-9c61-2b8e4f0a1d11",
        name="NVIDIA A100-SXM4-80GB",
        util=87.0,
        mem_used=40213 * MIB,
        mem_total=80 * GIB,
        temperature=61.0,
        power=312.45,
        power_limit=400.0,
        fan=None,
        pci_bus_id="00000000:07:00.0",
    )
    assert (rtx.index, rtx.fan, rtx.mem_used, rtx.mem_total) == (1, 30.0, MIB, 24 * GIB)
    assert (rtx.pci_bus_id, silent.pci_bus_id) == ("00000000:3B:00.0", None)
    assert silent.index == 2 and silent.mem_total == 80 * GIB
    assert (silent.util, silent.mem_used, silent.temperature) == (None, None, None)
    assert (silent.power, silent.power_limit, silent.fan) == (None, None, None)


def test_parse_gpu_csv_skips_noise_and_keeps_commas_in_names() -> None:
    text = (
        "No devices were found\n"
        "\n"
        "0, GPU-x, Weird, Board, 5, 1, 2, 3, 4.5, 6.5, 7, 00000000:AF:00.0\n"
        "x, GPU-y, Not an index, 1, 1, 1, 1, 1, 1, 1, 00000000:B0:00.0\n"
        "0, GPU-z, too few\n"
    )
    (only,) = parse_gpu_csv(text)
    assert (only.uuid, only.name, only.util, only.fan) == ("GPU-x", "Weird, Board", 5.0, 7.0)
    assert only.pci_bus_id == "00000000:AF:00.0"


def test_parse_apps_csv() -> None:
    assert parse_apps_csv(APPS_CSV + "garbage line\n, , \n") == [
        ("GPU-5c4b8a2e-1f0e-7d3a-9c61-2b8e4f0a1d11", 12345, 40200 * MIB),
        ("GPU-5c4b8a2e-1f0e-7d3a-9c61-2b8e4f0a1d11", 12399, None),
        ("GPU-0b7e3c1a-22d4-4f6b-8e0a-7d9c5b3a1e22", 777, 0),
    ]
    assert parse_apps_csv("") == []


def _fake_nvidia_smi(tmp_path: Path, gpus: str, apps: str, exit_code: int = 0) -> str:
    """A real executable standing in for nvidia-smi, answering each query with captured text."""
    (tmp_path / "gpus.csv").write_text(gpus)
    (tmp_path / "apps.csv").write_text(apps)
    script = tmp_path / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f"[ {exit_code} -ne 0 ] && {{ echo \"NVIDIA-SMI has failed because it couldn't "
        f'communicate with the NVIDIA driver." >&2; exit {exit_code}; }}\n'
        'case "$1" in\n'
        f"  --query-gpu=*) cat {tmp_path / 'gpus.csv'} ;;\n"
        f"  --query-compute-apps=*) cat {tmp_path / 'apps.csv'} ;;\n"
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_nvidia_smi_backend_runs_the_program_and_names_processes(tmp_path: Path) -> None:
    me = os.getpid()
    apps = f"GPU-0b7e3c1a-22d4-4f6b-8e0a-7d9c5b3a1e22, {me}, 1024\n"
    backend = NvidiaSmiBackend(_fake_nvidia_smi(tmp_path, GPU_CSV, apps))
    assert backend.name == BACKEND_NVIDIA_SMI
    a100, rtx, _ = backend.sample()
    assert a100.processes == ()
    (mine,) = rtx.processes
    assert (mine.pid, mine.mem) == (me, GIB)
    assert mine.user == pwd.getpwuid(os.getuid()).pw_name
    assert "pytest" in mine.command or "python" in mine.command


def test_nvidia_smi_failure_says_why(tmp_path: Path) -> None:
    broken = NvidiaSmiBackend(_fake_nvidia_smi(tmp_path, "", "", exit_code=9))
    with pytest.raises(BackendUnavailable, match=r"^nvidia-smi: exit 9: NVIDIA-SMI has failed"):
        broken.sample()
    missing = NvidiaSmiBackend(str(tmp_path / "no-such-program"))
    with pytest.raises(BackendUnavailable, match=r"^nvidia-smi: not found on PATH$"):
        missing.sample()


NVML_PRESENT = ctypes.util.find_library("nvidia-ml") is not None


@pytest.mark.skipif(NVML_PRESENT, reason="this host has libnvidia-ml")
def test_nvml_without_a_driver_gives_a_clear_reason() -> None:
    with pytest.raises(BackendUnavailable) as caught:
        NvmlBackend.open()
    assert str(caught.value) == "NVML: libnvidia-ml.so.1 not found"


@pytest.mark.skipif(NVML_PRESENT, reason="this host has libnvidia-ml")
def test_open_backend_falls_back_to_none_with_every_reason(tmp_path: Path) -> None:
    backend, errors = open_backend(None, str(tmp_path / "root"))
    if backend.name == BACKEND_NVIDIA_SMI:  # pragma: no cover - a host with only nvidia-smi
        pytest.skip("nvidia-smi works here")
    assert backend.name == BACKEND_NONE
    assert backend.sample() == []
    assert errors[0] == "NVML: libnvidia-ml.so.1 not found"
    assert errors[1].startswith("nvidia-smi: ")


@pytest.mark.skipif(not NVML_PRESENT, reason="needs an NVIDIA driver (libnvidia-ml)")
def test_nvml_reads_real_gpus() -> None:  # pragma: no cover - runs on GPU hosts only
    backend = NvmlBackend.open()
    try:
        assert backend.name == BACKEND_NVML
        samples = backend.sample()
        assert samples, "NVML initialised but listed no GPU"
        for gpu in samples:
            assert gpu.uuid.startswith(("GPU-", "MIG-"))
            assert gpu.pci_bus_id is not None and gpu.pci_bus_id.count(":") == 2
            assert gpu.mem_total is not None and gpu.mem_total > GIB
            assert gpu.mem_used is not None and 0 <= gpu.mem_used <= gpu.mem_total
            assert gpu.util is None or 0 <= gpu.util <= 100
            assert gpu.power is None or 0 < gpu.power < 2000  # watts, not milliwatts
            for proc in gpu.processes:
                assert proc.pid > 0
    finally:
        backend.close()


class _NvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class _Proc:
    def __init__(self, pid: int, used: int | None) -> None:
        self.pid = pid
        self.usedGpuMemory = used


class _Values:
    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


class FakeNvml:
    """NVML's Python surface for a driver-less machine: device 1 refuses most queries, and the
    unversioned process call fails the way a too-old driver makes it fail."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        self.shut_down = False

    def nvmlDeviceGetCount(self) -> int:
        return 3

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        if index == 2:
            raise _NvmlError(15)  # GPU is lost
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-fake-{handle}".encode()

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetPciInfo(self, handle: int) -> _Values:
        self._only_zero(handle)
        return _Values(busId=b"00000000:3B:00.0", domain=0, bus=0x3B)

    def _only_zero(self, handle: int) -> None:
        if handle != 0:
            raise _NvmlError(3)  # Not Supported

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Values:
        self._only_zero(handle)
        return _Values(gpu=97, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Values:
        return _Values(used=(handle + 1) * GIB, total=80 * GIB, free=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        self._only_zero(handle)
        return 71

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        self._only_zero(handle)
        return 512_345  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: int) -> int:
        raise _NvmlError(3)

    def nvmlDeviceGetPowerManagementLimit(self, handle: int) -> int:
        self._only_zero(handle)
        return 700_000

    def nvmlDeviceGetFanSpeed(self, handle: int) -> int:
        raise _NvmlError(3)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[_Proc]:
        raise _NvmlError(13)  # Function Not Found: the driver predates the v3 call

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: int) -> list[_Proc]:
        return [_Proc(os.getpid(), 3 * GIB), _Proc(999_999_999, None)] if handle == 0 else []

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: int) -> list[_Proc]:
        return [_Proc(os.getpid(), GIB)] if handle == 0 else [_Proc(os.getpid(), None)]

    def nvmlShutdown(self) -> None:
        self.shut_down = True


def test_nvml_backend_isolates_each_failing_field() -> None:
    nvml = FakeNvml()
    backend = NvmlBackend(nvml)
    good, poor, lost = backend.sample()
    assert (good.uuid, good.name) == ("GPU-fake-0", "NVIDIA H100 80GB HBM3")
    assert (good.pci_bus_id, poor.pci_bus_id) == ("00000000:3B:00.0", None)
    assert (good.util, good.temperature, good.fan) == (97.0, 71.0, None)
    assert (good.power, good.power_limit) == (512.3, 700.0)  # watts
    assert (good.mem_used, good.mem_total) == (GIB, 80 * GIB)
    # Compute (via the _v2 fallback) and graphics lists merge: one row per pid, largest memory.
    assert [(p.pid, p.mem) for p in good.processes] == [(os.getpid(), 3 * GIB), (999_999_999, None)]
    assert good.processes[0].user == pwd.getpwuid(os.getuid()).pw_name
    assert (good.processes[1].user, good.processes[1].command) == (None, "")
    # Only the refused fields of device 1 are missing.
    assert (poor.util, poor.temperature, poor.power, poor.power_limit) == (None,) * 4
    assert poor.mem_used == 2 * GIB
    assert [(p.pid, p.mem) for p in poor.processes] == [(os.getpid(), None)]
    assert (lost.index, lost.uuid, lost.mem_total, lost.processes) == (2, "GPU-unknown-2", None, ())
    backend.close()
    assert nvml.shut_down


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"gpus": -1}, "simulate.gpus"),
        ({"gpus": 65}, "simulate.gpus"),
        ({"gpus": True}, "simulate.gpus"),
        ({"model": ""}, "simulate.model"),
        ({"memory": "80GB"}, "simulate.memory"),
        ({"memory": 0}, "simulate.memory"),
        ({"gpu": 4}, "unknown keys gpu"),
        ([4], "JSON object"),
    ],
)
def test_simulate_config_errors(config: Any, problem: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=problem):
        open_backend(config, str(tmp_path))


def test_simulated_memory_follows_the_model_name(tmp_path: Path) -> None:
    backend, errors = open_backend({"gpus": 2, "model": "RTX-4090-24GB"}, str(tmp_path), "lab")
    assert errors == []
    assert isinstance(backend, SimulatedBackend)
    assert [g.mem_total for g in backend.sample()] == [24 * GIB, 24 * GIB]
    assert backend.uuids[0].startswith("GPU-sim-lab-")
    assert backend.sample()[0].fan is not None  # a PCIe card has a fan; SXM boards report none


def test_foreign_entries_are_validated(tmp_path: Path) -> None:
    backend = SimulatedBackend.from_config({"gpus": 2}, str(tmp_path), "lab")
    (tmp_path / "simulate").mkdir()
    entries = [
        {"gpu": 1, "pid": 10, "user": "eve", "command": "x", "mem": GIB, "container": "abc"},
        {"gpu": 1, "pid": 11, "user": 5, "command": ["no"], "mem": -3},
        {"gpu": 2, "pid": 12},
        {"gpu": "0", "pid": 13},
        {"pid": 14},
    ]
    (tmp_path / "simulate" / "foreign.json").write_text(json.dumps(entries))
    gpu0, gpu1 = backend.sample()
    assert gpu0.processes == ()
    eve, odd = gpu1.processes
    assert (eve.pid, eve.user, eve.container, eve.mem, eve.run_id) == (10, "eve", "abc", GIB, None)
    assert (odd.pid, odd.user, odd.command, odd.mem) == (11, None, "", None)
    assert gpu1.mem_used == (gpu0.mem_used or 0) + GIB


def test_a_run_without_a_run_dir_counts_on_every_simulated_host(tmp_path: Path) -> None:
    # CVTUI_RUN_DIR is what ties a run to one simulated host; without it the run is shown.
    backend = SimulatedBackend.from_config({"gpus": 4}, str(tmp_path / "root"), "lab")
    backend.sample()
    run = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        env=child_env(CVTUI_RUN_ID="r-1", CVTUI_SIM_GPUS="3, 1, 9, x, 3", CVTUI_SIM_MEM="oops"),
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            held = {g.index: p for g in backend.sample() for p in g.processes if p.pid == run.pid}
            if held or time.monotonic() > deadline:
                break
            time.sleep(0.02)
    finally:
        run.kill()
        run.wait()
    assert sorted(held) == [1, 3]  # out-of-range and non-numeric entries are ignored
    assert held[3].run_id == "r-1" and held[3].mem == 2 * GIB  # bad CVTUI_SIM_MEM: the default
