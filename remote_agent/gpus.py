"""GPU backends behind one interface: NVML, else nvidia-smi, else none; or simulated GPUs."""

from __future__ import annotations

import json
import math
import os
import re
import time
import zlib
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from remote_agent.hoststats import ProcessReader, expand_root, list_pids, parent_pid, read_environ
from remote_agent.protocol import (
    BACKEND_NONE,
    BACKEND_NVIDIA_SMI,
    BACKEND_NVML,
    BACKEND_SIMULATED,
    GpuProcess,
    GpuSample,
)

MIB = 1 << 20
GIB = 1 << 30

NVIDIA_SMI_GPU_FIELDS = (
    "index,uuid,name,utilization.gpu,memory.used,memory.total,"
    "temperature.gpu,power.draw,power.limit,fan.speed"
)
NVIDIA_SMI_APP_FIELDS = "gpu_uuid,pid,used_memory"
NVIDIA_SMI_TIMEOUT_S = 10.0


class GpuBackend(Protocol):
    """Something that can say, right now, what every GPU of this host is doing."""

    name: str  # BACKEND_*

    def sample(self) -> list[GpuSample]: ...

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
    return None if value is None else round(value / 1000.0, 1)


class NvmlBackend:
    """Reads GPUs through the NVIDIA Management Library, via the pure-Python pynvml we bundle."""

    name = BACKEND_NVML

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._reader = ProcessReader()
        # (index, handle or None, uuid, name); these never change while the driver is loaded.
        self._devices: list[tuple[int, Any, str, str]] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = _nvml_value(nvml.nvmlDeviceGetHandleByIndex, index)
            uuid = name = None
            if handle is not None:
                uuid = _text(_nvml_value(nvml.nvmlDeviceGetUUID, handle))
                name = _text(_nvml_value(nvml.nvmlDeviceGetName, handle))
            self._devices.append(
                (index, handle, uuid or f"GPU-unknown-{index}", name or "unknown NVIDIA GPU")
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
            procs = _nvml_value(getattr(nvml, f"nvmlDeviceGet{kind}RunningProcesses"), handle)
            if procs is None:  # an older driver lacks the v3 call the unversioned name uses
                v2 = getattr(nvml, f"nvmlDeviceGet{kind}RunningProcesses_v2", None)
                procs = _nvml_value(v2, handle) if v2 is not None else None
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
        for index, handle, uuid, name in self._devices:
            if handle is None:
                samples.append(
                    GpuSample(index, uuid, name, None, None, None, None, None, None, None)
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
                    mem_used=getattr(memory, "used", None),
                    mem_total=getattr(memory, "total", None),
                    temperature=_number(temperature),
                    power=_milli(_nvml_value(nvml.nvmlDeviceGetPowerUsage, handle)),
                    power_limit=_milli(limit),
                    fan=_number(fan),
                    processes=_processes(self._running(handle), self._reader),
                )
            )
        return samples

    def close(self) -> None:
        _nvml_value(self._nvml.nvmlShutdown)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
        if len(cells) < 10:
            continue
        extra = len(cells) - 10  # a comma inside the GPU name
        name = ", ".join(cells[2 : 3 + extra])
        index, uuid = cells[0], cells[1]
        util, used, total, temp, power, limit, fan = cells[3 + extra :]
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
            _with_processes(gpu, _processes(by_uuid.get(gpu.uuid, ()), self._reader))
            for gpu in gpus
        ]

    def close(self) -> None:
        pass


def _with_processes(gpu: GpuSample, processes: tuple[GpuProcess, ...]) -> GpuSample:
    return GpuSample(
        gpu.index,
        gpu.uuid,
        gpu.name,
        gpu.util,
        gpu.mem_used,
        gpu.mem_total,
        gpu.temperature,
        gpu.power,
        gpu.power_limit,
        gpu.fan,
        processes,
    )


class NoGpuBackend:
    """A host whose GPUs cannot be read (or that has none)."""

    name = BACKEND_NONE

    def sample(self) -> list[GpuSample]:
        return []

    def close(self) -> None:
        pass


# --- simulated ----------------------------------------------------------------------------------

SIM_DEFAULT_MODEL = "A100-SXM4-80GB"
SIM_MAX_GPUS = 64
SIM_IDLE_MEM = 5 * MIB  # what an idle real GPU reports as used
SIM_DEFAULT_RUN_MEM = 2 * GIB  # a run's GPU memory when CVTUI_SIM_MEM does not say
SIM_POWER_LIMIT_W = 400.0
SIM_IDLE_POWER_W = 55.0
SIM_REREADS = 2  # scans that re-read a new pid, in case it had not yet exec'd the run


@dataclass(frozen=True)
class _SimClaim:
    """A process of ours that a simulated run started: which GPUs it holds and how much memory."""

    pid: int
    ppid: int | None
    run_id: str
    gpus: tuple[int, ...]
    mem: int  # bytes on each of its GPUs


@dataclass(frozen=True)
class _Foreign:
    gpu: int
    pid: int
    user: str | None
    command: str
    container: str | None
    mem: int | None  # bytes


def _sim_gpus(spec: str, uuids: dict[str, int], count: int) -> tuple[int, ...]:
    """GPU indexes from CVTUI_SIM_GPUS / CUDA_VISIBLE_DEVICES: indexes or our simulated uuids."""
    found = []
    for token in spec.split(","):
        token = token.strip()
        index = int(token) if token.isdigit() else uuids.get(token)
        if index is not None and index < count and index not in found:
            found.append(index)
    return tuple(found)


def _model_memory(model: str) -> int:
    match = re.search(r"(\d+)\s*GB", model, re.IGNORECASE)
    return int(match.group(1)) * GIB if match else 80 * GIB


class SimulatedBackend:
    """Pretend GPUs for the demo and tests, enabled only by an explicit `simulate:` inventory field.

    Processes of this user that cvtui started (CVTUI_RUN_ID plus CVTUI_SIM_GPUS or
    CUDA_VISIBLE_DEVICES in their environment, and CVTUI_RUN_DIR, when set, under this agent's
    root) hold CVTUI_SIM_MEM bytes on their GPUs, and
    `<root>/simulate/foreign.json` injects other users' processes, so placement can be tested.
    """

    name = BACKEND_SIMULATED

    def __init__(self, gpus: int, model: str, memory: int, root: str, hostname: str) -> None:
        self.model = model
        self.memory = memory  # bytes per GPU
        self.root = expand_root(root)
        # Several simulated hosts share one machine in the demo: the root tells them apart.
        tag = f"{zlib.crc32(self.root.encode('utf-8', 'replace')):08x}"
        self.uuids = [f"GPU-sim-{hostname}-{tag}-{i}" for i in range(gpus)]
        self._uuid_index = {uuid: i for i, uuid in enumerate(self.uuids)}
        self._phase = int(tag, 16) % 628 / 100.0
        self._uid = os.getuid()
        self._reader = ProcessReader()
        self._seen: dict[int, tuple[_SimClaim | None, int]] = {}
        self._scanned = False
        self._foreign_path = os.path.join(self.root, "simulate", "foreign.json")
        self._foreign_key: tuple[float, int] | None = None
        self._foreign: list[_Foreign] = []

    @classmethod
    def from_config(cls, config: dict[str, Any], root: str, hostname: str) -> SimulatedBackend:
        """Build from the inventory's `simulate:` mapping; ValueError says what is wrong."""
        if not isinstance(config, dict):
            raise ValueError('simulate must be a JSON object like {"gpus": 4}')
        unknown = sorted(set(config) - {"gpus", "model", "memory"})
        if unknown:
            raise ValueError(f"simulate: unknown keys {', '.join(unknown)}")
        gpus = config.get("gpus", 4)
        model = config.get("model", SIM_DEFAULT_MODEL)
        if not isinstance(gpus, int) or isinstance(gpus, bool) or not 0 <= gpus <= SIM_MAX_GPUS:
            raise ValueError(f"simulate.gpus must be an integer from 0 to {SIM_MAX_GPUS}")
        if not isinstance(model, str) or not model:
            raise ValueError("simulate.model must be a non-empty string")
        memory = config.get("memory", _model_memory(model))
        if not isinstance(memory, int) or isinstance(memory, bool) or memory <= 0:
            raise ValueError("simulate.memory must be a positive number of bytes")
        return cls(gpus, model, memory, root, hostname)

    def _claim(self, pid: int) -> _SimClaim | None:
        env = read_environ(pid)
        if not env or not env.get("CVTUI_RUN_ID"):
            return None
        # Several simulated hosts may share this machine (the demo): a run belongs to the host
        # whose root holds its run directory.
        run_dir = env.get("CVTUI_RUN_DIR")
        if run_dir and not os.path.abspath(run_dir).startswith(self.root + os.sep):
            return None
        spec = env.get("CVTUI_SIM_GPUS") or env.get("CUDA_VISIBLE_DEVICES") or ""
        gpus = _sim_gpus(spec, self._uuid_index, len(self.uuids))
        if not gpus:
            return None
        try:
            mem = max(0, int(env.get("CVTUI_SIM_MEM", SIM_DEFAULT_RUN_MEM)))
        except ValueError:
            mem = SIM_DEFAULT_RUN_MEM
        return _SimClaim(pid, parent_pid(pid), env["CVTUI_RUN_ID"], gpus, mem)

    def _scan_claims(self) -> list[_SimClaim]:
        """Our runs' processes. Each pid is read when first seen; one that is not a run is read
        again at the next SIM_REREADS scans, in case it was caught between fork and exec."""
        # Processes already there at the first scan are long past their exec.
        rereads = SIM_REREADS if self._scanned else 0
        self._scanned = True
        seen: dict[int, tuple[_SimClaim | None, int]] = {}  # pid -> (claim, rereads left)
        for pid in list_pids():
            entry = self._seen.get(pid)
            if entry is None or entry[1] > 0:
                try:
                    mine = os.stat(f"/proc/{pid}").st_uid == self._uid
                except OSError:
                    continue  # gone already
                claim = self._claim(pid) if mine else None
                left = rereads if entry is None else entry[1] - 1
                entry = (claim, 0 if claim is not None or not mine else left)
            seen[pid] = entry
        self._seen = seen
        claims = [claim for claim, _ in seen.values() if claim is not None]
        # Children inherit the environment (dataloader workers...): count each run once, at the
        # topmost process that carries it.
        owners = {(c.pid, c.run_id) for c in claims}
        return [c for c in claims if (c.ppid, c.run_id) not in owners]

    def _read_foreign(self) -> list[_Foreign]:
        try:
            st = os.stat(self._foreign_path)
        except OSError:
            self._foreign_key, self._foreign = None, []
            return self._foreign
        key = (st.st_mtime, st.st_size)
        if key != self._foreign_key:
            self._foreign_key = key
            self._foreign = _parse_foreign(self._foreign_path, len(self.uuids))
        return self._foreign

    def sample(self) -> list[GpuSample]:
        now = time.time()
        held: list[list[tuple[GpuProcess, int]]] = [[] for _ in self.uuids]
        for claim in self._scan_claims():
            info = self._reader.info(claim.pid)
            proc = GpuProcess(
                claim.pid, info.user, info.command, info.container, claim.mem, claim.run_id
            )
            for index in claim.gpus:
                held[index].append((proc, claim.mem))
        for item in self._read_foreign():
            proc = GpuProcess(item.pid, item.user, item.command, item.container, item.mem, None)
            held[item.gpu].append((proc, item.mem or 0))
        samples = []
        for index, uuid in enumerate(self.uuids):
            wave = math.sin(now / 9.0 + index * 1.3 + self._phase)
            busy = bool(held[index])
            util = 80.0 + 15.0 * wave if busy else max(0.0, 2.0 + 2.0 * wave)
            used = SIM_IDLE_MEM + sum(mem for _, mem in held[index])
            samples.append(
                GpuSample(
                    index=index,
                    uuid=uuid,
                    name=self.model,
                    util=round(util, 1),
                    mem_used=min(used, self.memory),
                    mem_total=self.memory,
                    temperature=round(32.0 + 0.45 * util + 2.0 * math.sin(now / 31.0 + index), 1),
                    power=round(
                        SIM_IDLE_POWER_W + (SIM_POWER_LIMIT_W - SIM_IDLE_POWER_W) * util / 100.0, 1
                    ),
                    power_limit=SIM_POWER_LIMIT_W,
                    # SXM boards report no fan through NVML either.
                    fan=None if "SXM" in self.model.upper() else round(30.0 + 0.5 * util, 1),
                    processes=tuple(proc for proc, _ in held[index]),
                )
            )
        return samples

    def close(self) -> None:
        pass


def _parse_foreign(path: str, gpu_count: int) -> list[_Foreign]:
    """Entries of foreign.json that make sense; a broken file injects nothing."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 20).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return []
    found = []
    for item in data if isinstance(data, list) else ():
        if not isinstance(item, dict):
            continue
        gpu, pid, mem = item.get("gpu"), item.get("pid"), item.get("mem")
        user, command, container = item.get("user"), item.get("command", ""), item.get("container")
        if not (isinstance(gpu, int) and 0 <= gpu < gpu_count and isinstance(pid, int)):
            continue
        found.append(
            _Foreign(
                gpu,
                pid,
                user if isinstance(user, str) else None,
                command if isinstance(command, str) else "",
                container if isinstance(container, str) else None,
                mem if isinstance(mem, int) and mem >= 0 else None,
            )
        )
    return found


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
