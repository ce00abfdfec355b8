"""GPU backends behind one interface: NVML, else nvidia-smi, else none; or simulated GPUs."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Iterable, Protocol

from remote_agent.hoststats import MIB, ProcessReader
from remote_agent.protocol import (
    BACKEND_NONE,
    BACKEND_NVIDIA_SMI,
    BACKEND_NVML,
    GpuProcess,
    GpuSample,
)
from remote_agent.simulated import SimulatedBackend

NVIDIA_SMI_GPU_FIELDS = (
    "index,uuid,name,utilization.gpu,memory.used,memory.total,"
    "temperature.gpu,power.draw,power.limit,fan.speed,pci.bus_id"
)
NVIDIA_SMI_APP_FIELDS = "gpu_uuid,pid,used_memory"
NVIDIA_SMI_TIMEOUT_S = 10.0


class GpuBackend(Protocol):
    """Something that can say, right now, what every GPU of this host is doing."""

    name: str  # BACKEND_*

    def sample(self) -> list[GpuSample]: ...
    def driver_version(self) -> str | None: ...

    def close(self) -> None: ...


class BackendUnavailable(Exception):
    """A backend cannot be used on this host; the message says why, prefixed by its name."""


def _processes(
    usage: Iterable[tuple[int, int | None]], reader: ProcessReader
) -> tuple[GpuProcess, ...]:
    """GpuProcess for each (pid, GPU memory bytes), with details from /proc."""
    found = []
    for pid, mem in usage:
        info = reader.info(pid)
        found.append(GpuProcess(pid, info.user, info.command, info.container, mem, info.run_id))
    return tuple(found)


# --- NVML ---------------------------------------------------------------------------------------


def _nvml_value(call: Any, *args: Any) -> Any:
    """The result of one NVML call, or None when it fails: one bad field must not hide the rest."""
    try:
        return call(*args)
    except Exception:
        return None


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _milli(value: Any) -> float | None:
    """Milliwatts from NVML as watts."""
    number = _number(value)
    return None if number is None else round(number / 1000.0, 1)


class NvmlBackend:
    """Reads GPUs through the NVIDIA Management Library, via the pure-Python pynvml we bundle."""

    name = BACKEND_NVML

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._reader = ProcessReader()
        # (index, handle or None, uuid, name, PCI bus id); these never change while the driver
        # is loaded.
        self._devices: list[tuple[int, Any, str, str, str | None]] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = _nvml_value(nvml.nvmlDeviceGetHandleByIndex, index)
            uuid = name = bus = None
            if handle is not None:
                uuid = _text(_nvml_value(nvml.nvmlDeviceGetUUID, handle))
                name = _text(_nvml_value(nvml.nvmlDeviceGetName, handle))
                pci = _nvml_value(getattr(nvml, "nvmlDeviceGetPciInfo", None), handle)
                bus = _text(getattr(pci, "busId", None))
            self._devices.append(
                (index, handle, uuid or f"GPU-unknown-{index}", name or "unknown NVIDIA GPU", bus)
            )

    @classmethod
    def open(cls) -> NvmlBackend:
        """Initialise NVML, or raise BackendUnavailable saying why not."""
        try:
            import pynvml  # bundled in agent.pyz; absent when run from a bare checkout
        except Exception as exc:
            raise BackendUnavailable(f"NVML: pynvml module not available ({exc})") from exc
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            code = getattr(exc, "value", None)
            if code == getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", object()):
                reason = "libnvidia-ml.so.1 not found"
            elif code == getattr(pynvml, "NVML_ERROR_DRIVER_NOT_LOADED", object()):
                reason = "NVIDIA driver not loaded"
            else:
                reason = str(exc) or type(exc).__name__
            raise BackendUnavailable(f"NVML: {reason}") from exc
        try:
            return cls(pynvml)
        except Exception as exc:
            _nvml_value(pynvml.nvmlShutdown)
            raise BackendUnavailable(f"NVML: cannot list devices ({exc})") from exc

    def _running(self, handle: Any) -> list[tuple[int, int | None]]:
        nvml = self._nvml
        by_pid: dict[int, int | None] = {}
        for kind in ("Compute", "Graphics"):
            procs = None
            # An older driver lacks the v3 call that the unversioned name uses: then try v2.
            for suffix in ("", "_v2"):
                call = getattr(nvml, f"nvmlDeviceGet{kind}RunningProcesses{suffix}", None)
                procs = _nvml_value(call, handle) if call is not None else None
                if procs is not None:
                    break
            for proc in procs or ():
                pid = getattr(proc, "pid", None)
                if not isinstance(pid, int):
                    continue
                mem = getattr(proc, "usedGpuMemory", None)
                mem = mem if isinstance(mem, int) else None
                # A C+G process shows in both lists with the same memory; keep the larger.
                if pid not in by_pid or (mem or 0) > (by_pid[pid] or 0):
                    by_pid[pid] = mem
        return sorted(by_pid.items())

    def sample(self) -> list[GpuSample]:
        nvml = self._nvml
        samples = []
        for index, handle, uuid, name, bus in self._devices:
            if handle is None:
                samples.append(
                    GpuSample(
                        index, uuid, name, None, None, None, None, None, None, None, pci_bus_id=bus
                    )
                )
                continue
            rates = _nvml_value(nvml.nvmlDeviceGetUtilizationRates, handle)
            memory = _nvml_value(nvml.nvmlDeviceGetMemoryInfo, handle)
            temperature = _nvml_value(
                nvml.nvmlDeviceGetTemperature, handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
            )
            limit = _nvml_value(nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            if limit is None:
                limit = _nvml_value(nvml.nvmlDeviceGetPowerManagementLimit, handle)
            fan = _nvml_value(nvml.nvmlDeviceGetFanSpeed, handle)
            samples.append(
                GpuSample(
                    index=index,
                    uuid=uuid,
                    name=name,
                    util=_number(getattr(rates, "gpu", None)),
                    mem_used=_whole(getattr(memory, "used", None)),
                    mem_total=_whole(getattr(memory, "total", None)),
                    temperature=_number(temperature),
                    power=_milli(_nvml_value(nvml.nvmlDeviceGetPowerUsage, handle)),
                    power_limit=_milli(limit),
                    fan=_number(fan),
                    processes=_processes(self._running(handle), self._reader),
                    pci_bus_id=bus,
                )
            )
        return samples

    def driver_version(self) -> str | None:
        return _text(_nvml_value(self._nvml.nvmlSystemGetDriverVersion))

    def close(self) -> None:
        _nvml_value(self._nvml.nvmlShutdown)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- nvidia-smi ---------------------------------------------------------------------------------


def _smi_float(text: str) -> float | None:
    """A CSV cell as a number; '[N/A]', '[Not Supported]', 'ERR!' and friends are None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _smi_mib(text: str) -> int | None:
    value = _smi_float(text)
    return None if value is None else int(value * MIB)


def parse_gpu_csv(text: str) -> list[GpuSample]:
    """GpuSamples (without processes) from `nvidia-smi --query-gpu=NVIDIA_SMI_GPU_FIELDS` output
    in `--format=csv,noheader,nounits`; lines that do not parse are skipped."""
    samples = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) < 11:
            continue
        extra = len(cells) - 11  # a comma inside the GPU name
        name = ", ".join(cells[2 : 3 + extra])
        index, uuid = cells[0], cells[1]
        util, used, total, temp, power, limit, fan, bus = cells[3 + extra :]
        if not index.isdigit():
            continue
        samples.append(
            GpuSample(
                index=int(index),
                uuid=uuid,
                name=name,
                util=_smi_float(util),
                mem_used=_smi_mib(used),
                mem_total=_smi_mib(total),
                temperature=_smi_float(temp),
                power=_smi_float(power),
                power_limit=_smi_float(limit),
                fan=_smi_float(fan),
                pci_bus_id=bus if bus and not bus.startswith("[") else None,
            )
        )
    return samples


def parse_apps_csv(text: str) -> list[tuple[str, int, int | None]]:
    """(gpu uuid, pid, GPU memory bytes) rows of `nvidia-smi --query-compute-apps=` output
    for NVIDIA_SMI_APP_FIELDS."""
    apps = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != 3 or not cells[1].isdigit():
            continue
        apps.append((cells[0], int(cells[1]), _smi_mib(cells[2])))
    return apps


class NvidiaSmiBackend:
    """Reads GPUs by running nvidia-smi twice per sample; the fallback when NVML cannot load."""

    name = BACKEND_NVIDIA_SMI

    def __init__(self, executable: str = "nvidia-smi") -> None:
        self._exe = executable
        self._reader = ProcessReader()

    def _query(self, query: str) -> str:
        import subprocess  # only this fallback backend runs programs

        try:
            done = subprocess.run(
                [self._exe, query, "--format=csv,noheader,nounits"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=NVIDIA_SMI_TIMEOUT_S,
            )
        except FileNotFoundError as exc:
            raise BackendUnavailable("nvidia-smi: not found on PATH") from exc
        except (OSError, subprocess.SubprocessError) as exc:
            raise BackendUnavailable(f"nvidia-smi: {exc}") from exc
        out = done.stdout.decode("utf-8", "replace")
        if done.returncode != 0:
            said = (done.stderr.decode("utf-8", "replace") + out).strip().splitlines()
            raise BackendUnavailable(
                f"nvidia-smi: exit {done.returncode}: {said[0] if said else 'no output'}"
            )
        return out

    def sample(self) -> list[GpuSample]:
        gpus = parse_gpu_csv(self._query(f"--query-gpu={NVIDIA_SMI_GPU_FIELDS}"))
        try:
            apps = parse_apps_csv(self._query(f"--query-compute-apps={NVIDIA_SMI_APP_FIELDS}"))
        except BackendUnavailable:
            apps = []
        by_uuid: dict[str, list[tuple[int, int | None]]] = {}
        for uuid, pid, mem in apps:
            by_uuid.setdefault(uuid, []).append((pid, mem))
        return [
            replace(gpu, processes=_processes(by_uuid.get(gpu.uuid, ()), self._reader))
            for gpu in gpus
        ]

    def driver_version(self) -> str | None:
        lines = self._query("--query-gpu=driver_version").split()
        return lines[0] if lines else None

    def close(self) -> None:
        pass


class NoGpuBackend:
    """A host whose GPUs cannot be read (or that has none)."""

    name = BACKEND_NONE

    def sample(self) -> list[GpuSample]:
        return []

    def driver_version(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def open_backend(
    simulate: dict[str, Any] | None, root: str = "~/.cache/cvtui", hostname: str = "localhost"
) -> tuple[GpuBackend, list[str]]:
    """The best backend this host allows, and why each better one failed.

    `simulate` (the inventory's mapping) selects SimulatedBackend and nothing else does; a bad
    mapping raises ValueError.
    """
    if simulate is not None:
        return SimulatedBackend.from_config(simulate, root, hostname), []
    errors: list[str] = []
    try:
        return NvmlBackend.open(), errors
    except BackendUnavailable as exc:
        errors.append(str(exc))
    smi = NvidiaSmiBackend()
    try:
        smi.sample()
        return smi, errors
    except BackendUnavailable as exc:
        errors.append(str(exc))
    return NoGpuBackend(), errors
