"""A fleet of simulated GPU hosts in one process: the load generator of the scale rows.

`python -m benchmarks.fleet DIR HOSTS HOSTS_PER_PORT AGENT_HASH` serves, over asyncssh on
127.0.0.1, as many SSH servers as the hosts need (a port per HOSTS_PER_PORT hosts), each
speaking the agent protocol for the hosts whose roots it is asked to start an agent in. An
engine reaches them exactly as it reaches real hosts: SSH login with the lab's key, the
deploy check over SFTP (each host's root holds the agent already: the rows measure the steady
state, not uploads), the agent's exec line, hello, telemetry every interval, requests.

Everything it sends says what it is: the backend is `simulated`, host names are `sim-NNNN`, GPU
names end in `[fleet]`. Telemetry is one realistic sample per host (8 GPUs, a process on each,
host figures) with its numbers moved a little at each tick. Requests the engine makes of an
idle host are answered (runs, environment, ping, set_interval, shutdown); any other is refused
as unknown, as an old agent would. It prints `ready PORT...` once listening, then runs until
stdin closes.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import random
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import asyncssh

from remote_agent import protocol
from remote_agent.agent import telemetry_wire
from remote_agent.protocol import (
    BACKEND_SIMULATED,
    GpuProcess,
    GpuSample,
    Hello,
    HostSample,
    Telemetry,
)

GIB = 1 << 30
MODEL = "A100-SXM4-80GB [fleet]"
PACKAGES = "numpy==1.26.4\ntorch==2.3.0 (simulated)\n"  # what an environment request gets


def host_root(directory: Path, index: int) -> Path:
    return directory / "hosts" / f"sim-{index:04d}"


def prepare_roots(directory: Path, hosts: int, agent_hash: str) -> None:
    """Each host root (0700) with the agent in place, hard links to one file."""
    first = None
    for index in range(hosts):
        agent_dir = host_root(directory, index) / "agent" / agent_hash
        agent_dir.mkdir(parents=True, exist_ok=True)
        host_root(directory, index).chmod(0o700)
        target = agent_dir / "agent.pyz"
        if first is None:
            target.write_bytes(b"# the fleet serves this agent itself\n")
            first = target
        elif not target.exists():
            os.link(first, target)


class SimulatedHost:
    """One host's agent: a telemetry sample that drifts, and the answers of an idle agent."""

    def __init__(self, index: int, gpus: int, root: str) -> None:
        self.index = index
        self.root = root
        self.rng = random.Random(index)
        self.gpus = [self._gpu(i) for i in range(gpus)]

    def _gpu(self, i: int) -> dict[str, Any]:
        process = GpuProcess(
            pid=10_000 + i,
            user="alice",
            command="python train.py --config configs/resnet50.yaml",
            container=None,
            mem=20 * GIB,
            run_id=None,
        )
        sample = GpuSample(
            index=i,
            uuid=f"GPU-fleet-{self.index:04d}-{i}",
            name=MODEL,
            util=50.0,
            mem_used=20 * GIB,
            mem_total=80 * GIB,
            temperature=60.0,
            power=250.0,
            power_limit=400.0,
            fan=40.0,
            processes=(process,),
            pci_bus_id=f"00000000:{i + 16:02X}:00.0",
        )
        return telemetry_wire(Telemetry(0.0, BACKEND_SIMULATED, self._host(), (sample,)))["gpus"][0]

    @staticmethod
    def _host() -> HostSample:
        return HostSample(25.0, 2.0, 2.0, 2.0, 200 * GIB, 512 * GIB, 3000 * GIB, 4000 * GIB)

    def hello(self, pid: int) -> dict[str, Any]:
        hello = Hello(
            protocol=protocol.PROTOCOL_VERSION,
            python="3.11.7",
            hostname=f"sim-{self.index:04d}",
            user=getpass.getuser(),
            pid=pid,
            backend=BACKEND_SIMULATED,
            gpu_count=len(self.gpus),
            hash_algorithms=("blake2b-128",),
            root=self.root,
            home=str(Path.home()),
        )
        return protocol.event(protocol.EVENT_HELLO, **hello.to_wire())

    def telemetry(self) -> bytes:
        rng = self.rng
        for gpu in self.gpus:
            gpu["util"] = float(rng.randint(0, 100))
            gpu["temperature"] = float(rng.randint(40, 80))
            gpu["power"] = round(rng.uniform(80, 390), 1)
            gpu["mem_used"] = rng.randint(10, 70) * GIB
        host = asdict(self._host()) | {"cpu_percent": round(rng.uniform(5, 95), 1)}
        message = {"event": protocol.EVENT_TELEMETRY, "time": time.time()}
        message |= {"backend": BACKEND_SIMULATED, "host": host, "gpus": self.gpus}
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"

    def answer(self, line: bytes) -> dict[str, Any]:
        try:
            message = protocol.decode(line)
        except protocol.ProtocolError as exc:
            return protocol.reply_error(None, protocol.E_MALFORMED, str(exc))
        request_id, op = message.get("id"), message.get("op")
        if op == protocol.OP_RUNS:
            return protocol.reply_ok(request_id, runs=[])
        if op == protocol.OP_ENVIRONMENT:
            fields = {"python": "3.11.7", "executable": "/usr/bin/python3", "driver": None}
            return protocol.reply_ok(request_id, **fields, packages=PACKAGES)
        if op == protocol.OP_PING:
            return protocol.reply_ok(request_id, time=time.time())
        if op in (protocol.OP_SET_INTERVAL, protocol.OP_SHUTDOWN, protocol.OP_WATCH):
            return protocol.reply_ok(request_id)
        return protocol.reply_error(
            request_id, protocol.E_UNKNOWN_OP, f"unknown op {op!r} (a fleet host serves few)"
        )


def serve_args(command: str) -> dict[str, str] | None:
    """--root, --interval and --simulate of an agent command line; None for anything else."""
    argv = shlex.split(command)
    if "serve" not in argv:
        return None
    found: dict[str, str] = {}
    rest = argv[argv.index("serve") + 1 :]
    for name, value in zip(rest[::2], rest[1::2], strict=False):
        found[name.lstrip("-")] = value
    return found


class Fleet:
    """The simulated hosts, by root; an SSH server's exec sessions become their agents."""

    def __init__(self, directory: Path, hosts: int, gpus: int) -> None:
        self.hosts = {
            str(host_root(directory, i)): SimulatedHost(i, gpus, str(host_root(directory, i)))
            for i in range(hosts)
        }
        self.pids = iter(range(100_000, 10**9))

    async def session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        args = serve_args(process.command or "")
        host = self.hosts.get(args.get("root", "")) if args else None
        if args is None or host is None:  # the engine killing a start that hung, say
            process.exit(0)
            return
        pid = next(self.pids)
        process.stderr.write(f"cvtui-pid {pid}\n".encode())
        interval = float(args.get("interval", "1"))
        process.stdout.write(protocol.encode(host.hello(pid)))
        process.stdout.write(host.telemetry())
        ticker = asyncio.get_running_loop().create_task(self._tick(process, host, interval))
        try:
            while True:
                line = await process.stdin.readline()
                if not line:
                    break
                process.stdout.write(protocol.encode(host.answer(line.rstrip(b"\n"))))
        except (asyncssh.Error, OSError):
            pass
        finally:
            ticker.cancel()
            process.exit(0)

    @staticmethod
    async def _tick(
        process: asyncssh.SSHServerProcess[bytes], host: SimulatedHost, interval: float
    ) -> None:
        await asyncio.sleep(random.uniform(0, interval))  # hosts tick out of step, as real ones
        while True:
            process.stdout.write(host.telemetry())
            await asyncio.sleep(interval)


def send_as_openssh_does() -> None:
    """asyncssh puts an SSH_MSG_IGNORE before every packet it sends; OpenSSH's sshd does not,
    and the controller would decrypt two packets per telemetry line instead of one. The fleet
    stands in for OpenSSH hosts, so it leaves them out."""
    from asyncssh.connection import SSHConnection
    from asyncssh.constants import MSG_IGNORE

    send_packet = SSHConnection.send_packet

    def without_ignore(self: SSHConnection, pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if pkttype != MSG_IGNORE:
            send_packet(self, pkttype, *args, **kwargs)

    SSHConnection.send_packet = without_ignore  # type: ignore[method-assign]


async def main(directory: Path, hosts: int, per_port: int, agent_hash: str) -> None:
    send_as_openssh_does()
    prepare_roots(directory, hosts, agent_hash)
    fleet = Fleet(directory, hosts, gpus=8)
    host_key = asyncssh.read_private_key(str(directory / "host_key"))
    servers = []
    for _ in range(-(-hosts // per_port)):
        servers.append(
            await asyncssh.listen(
                "127.0.0.1",
                0,
                server_host_keys=[host_key],
                authorized_client_keys=str(directory / "authorized_keys"),
                process_factory=fleet.session,
                encoding=None,
                sftp_factory=True,
                allow_scp=False,
                line_editor=False,
            )
        )
    ports = [server.sockets[0].getsockname()[1] for server in servers]
    print("ready", *ports, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until stdin closes
    for server in servers:
        server.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
