"""Pretend GPUs for the demo and GPU-less tests, holding memory for the runs cvtui starts."""

from __future__ import annotations

import json
import math
import os
import re
import time
import zlib
from dataclasses import dataclass
from typing import Any

from remote_agent.hoststats import (
    GIB,
    MIB,
    ProcessReader,
    expand_root,
    list_pids,
    parent_pid,
    read_environ,
)
from remote_agent.protocol import BACKEND_SIMULATED, GpuProcess, GpuSample

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
    util: float | None  # percent it keeps its GPUs at (CVTUI_SIM_UTIL); None: busy (~80%)


@dataclass(frozen=True)
class _Foreign:
    """Another user's process, injected by `<root>/simulate/foreign.json` for tests."""

    gpu: int
    pid: int
    user: str | None
    command: str
    container: str | None
    mem: int | None  # bytes
    util: float | None  # percent, from the entry's "util"; None: busy (~80%)


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
    root) hold CVTUI_SIM_MEM bytes on their GPUs (at CVTUI_SIM_UTIL percent when set), and
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
        # As NVML gives them: one bus per GPU, distinct (17 and 256 share no factor).
        self.bus_ids = [f"00000000:{(0x18 + 0x11 * i) % 0x100:02X}:00.0" for i in range(gpus)]
        self._uuid_index = {uuid: i for i, uuid in enumerate(self.uuids)}
        self._phase = int(tag, 16) % 628 / 100.0
        self._uid = os.getuid()
        self._reader = ProcessReader()
        self._seen: dict[int, tuple[_SimClaim | None, int]] = {}
        self._scanned = False
        self._foreign_path = os.path.join(self.root, "simulate", "foreign.json")
        self._foreign_key: tuple[int, int, int] | None = None  # mtime ns, size, inode
        self._foreign: list[_Foreign] = []

    def driver_version(self) -> str:
        return "simulated"

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
        # A run that holds memory but does no work (idle-held GPU tests): CVTUI_SIM_UTIL=0.
        util = _percent(env.get("CVTUI_SIM_UTIL"))
        return _SimClaim(pid, parent_pid(pid), env["CVTUI_RUN_ID"], gpus, mem, util)

    def _scan_claims(self) -> list[_SimClaim]:
        """Our runs' processes. Each pid is read when first seen; one that is not a run is read
        again at the next SIM_REREADS scans, in case it was caught between fork and exec."""
        if not self.uuids:
            return []
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
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        if key != self._foreign_key:
            self._foreign_key = key
            self._foreign = _parse_foreign(self._foreign_path, len(self.uuids))
        return self._foreign

    def sample(self) -> list[GpuSample]:
        now = time.time()
        held: list[list[tuple[GpuProcess, int, float | None]]] = [[] for _ in self.uuids]
        for claim in self._scan_claims():
            info = self._reader.info(claim.pid)
            proc = GpuProcess(
                claim.pid, info.user, info.command, info.container, claim.mem, claim.run_id
            )
            for index in claim.gpus:
                held[index].append((proc, claim.mem, claim.util))
        for item in self._read_foreign():
            proc = GpuProcess(item.pid, item.user, item.command, item.container, item.mem, None)
            held[item.gpu].append((proc, item.mem or 0, item.util))
        samples = []
        for index, uuid in enumerate(self.uuids):
            wave = math.sin(now / 9.0 + index * 1.3 + self._phase)
            busy = bool(held[index])
            util = 80.0 + 15.0 * wave if busy else max(0.0, 2.0 + 2.0 * wave)
            claimed = [u for _, _, u in held[index]]
            if busy and None not in claimed:  # every holder says how busy it keeps the GPU
                util = min(100.0, sum(u for u in claimed if u is not None))
            used = SIM_IDLE_MEM + sum(mem for _, mem, _ in held[index])
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
                    processes=tuple(proc for proc, _, _ in held[index]),
                    pci_bus_id=self.bus_ids[index],
                )
            )
        return samples

    def close(self) -> None:
        pass


def _percent(text: str | None) -> float | None:
    """A percentage from an environment value; None when absent or not a number."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    if value is None or value != value:
        return None
    return max(0.0, min(100.0, value))


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
        util = item.get("util")
        if isinstance(util, bool) or not isinstance(util, (int, float)):
            util = None
        # bool is an int subclass, but true is no GPU index
        if not (isinstance(gpu, int) and 0 <= gpu < gpu_count and isinstance(pid, int)):
            continue
        if isinstance(gpu, bool) or isinstance(pid, bool):
            continue
        found.append(
            _Foreign(
                gpu,
                pid,
                user if isinstance(user, str) else None,
                command if isinstance(command, str) else "",
                container if isinstance(container, str) else None,
                mem if isinstance(mem, int) and not isinstance(mem, bool) and mem >= 0 else None,
                None if util is None else max(0.0, min(100.0, float(util))),
            )
        )
    return found
