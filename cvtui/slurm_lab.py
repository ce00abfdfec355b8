"""A real single-node Slurm cluster on this machine, behind a real sshd login node, for tests
and benchmarks.

munged, slurmctld and slurmd run from the system's packages (Debian's `slurm-wlm` and `munge`)
on free ports with every state, spool, log and key file in a temp directory. The node's GPUs
are character devices made with mknod (major 195, as NVIDIA's), which slurmd accepts as GPU
files: jobs get real Slurm GPU allocations (CUDA_VISIBLE_DEVICES=0,1) without a GPU. Needs
root (slurmd starts jobs as their user; mknod). Every daemon started is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cvtui.errors import CvtuiError
from cvtui.lab import SshServer, free_port, generate_key, known_hosts_line

DAEMONS = ("munged", "slurmctld", "slurmd")
NVIDIA_MAJOR = 195


def slurm_missing() -> str | None:
    """Why a test cluster cannot start here, or None when it can."""
    for program in (*DAEMONS, "sbatch", "squeue", "sinfo", "scancel", "srun"):
        if shutil.which(program) is None and not Path(f"/usr/sbin/{program}").exists():
            return f"{program} not found (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a test Slurm cluster needs root (slurmd runs jobs as their user; mknod)"
    return None


def _program(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class SlurmCluster:
    """munged + slurmctld + slurmd on this machine, one node with `gpus` GPU devices."""

    directory: Path
    gpus: int = 4
    cpus: int = 8
    partition: str = "gpu"
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.directory / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The environment in which Slurm's commands talk to this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        d = self.directory
        for sub in ("state", "spool", "log", "run", "dev", "munge"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "munge").chmod(0o700)
        key = d / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        for index in range(self.gpus):
            device = d / "dev" / f"nvidia{index}"
            if not device.exists():
                os.mknod(device, 0o666 | 0o020000, os.makedev(NVIDIA_MAJOR, index))
        lines = [
            "ClusterName=cvtuilab",
            f"SlurmctldHost={self.node}",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            f"SlurmUser={getpass.getuser()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={d / 'run' / 'munge.socket'}",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "GresTypes=gpu",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",  # the node's CPUs as written, not as counted
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "KillWait=3",  # seconds from SIGTERM to SIGKILL at a cancel or a time limit
            "MailProg=/bin/true",
            # Start a batch job as soon as it is submitted (Slurm batches them for up to 3 s
            # by default): Slurm's own start is then its scheduling alone.
            "SchedulerParameters=batch_sched_delay=0",
            f"NodeName={self.node} CPUs={self.cpus} Boards=1 SocketsPerBoard=1 "
            f"CoresPerSocket={self.cpus} ThreadsPerCore=1 RealMemory=1000 "
            f"Gres=gpu:{self.gpus} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE "
            "State=UP OverSubscribe=NO",
            "",
        ]
        if not self.conf.exists():
            self.conf.write_text("\n".join(lines))
        last = self.gpus - 1
        (d / "gres.conf").write_text(f"Name=gpu File={d / 'dev'}/nvidia[0-{last}]\n")

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.directory / "log" / f"{name}.out", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            self.processes[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        finally:
            log.close()

    def start(self, timeout_s: float = 30.0) -> None:
        self.write_config()
        d = self.directory
        self._start(
            "munged",
            [
                _program("munged"),
                "--foreground",
                "--force",
                f"--key-file={d / 'munge' / 'munge.key'}",
                f"--socket={d / 'run' / 'munge.socket'}",
                f"--pid-file={d / 'run' / 'munged.pid'}",
                f"--log-file={d / 'log' / 'munged.log'}",
                f"--seed-file={d / 'munge' / 'seed'}",
            ],
        )
        self._wait(lambda: (d / "run" / "munge.socket").exists(), "munged", timeout_s)
        self.start_controller(clean=True, timeout_s=timeout_s)
        self._start("slurmd", [_program("slurmd"), "-D", "-f", str(self.conf)])
        self._wait(self.node_ready, "slurmd", timeout_s)

    def start_controller(self, *, clean: bool = False, timeout_s: float = 30.0) -> None:
        """slurmctld; without clean it recovers the jobs it saved when it stopped."""
        argv = [_program("slurmctld"), "-D", "-f", str(self.conf)]
        self._start("slurmctld", [*argv, "-c"] if clean else argv)
        self._wait(self.controller_up, "slurmctld", timeout_s)

    def stop_controller(self) -> None:
        self._stop("slurmctld")

    def controller_up(self) -> bool:
        return self.command(["squeue", "--noheader"], check=False).returncode == 0

    def node_ready(self) -> bool:
        done = self.command(["sinfo", "--noheader", "--Node", "--Format=StateLong"], check=False)
        state = done.stdout.decode().strip()
        return done.returncode == 0 and state in ("idle", "mixed", "allocated")

    def command(self, argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run one of Slurm's commands against this cluster (in its directory, where a job
        submitted without --output leaves its slurm-N.out)."""
        return subprocess.run(
            argv, env=self.env, capture_output=True, check=check, timeout=30, cwd=self.directory
        )

    def _wait(self, ready: object, name: str, timeout_s: float) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            process = self.processes.get(name)
            if process is not None and process.poll() is not None:
                log = (self.directory / "log" / f"{name}.out").read_text(errors="replace")
                raise CvtuiError(f"{name} exited at start: {log.strip()[-800:]}")
            if ready():
                return
            time.sleep(0.1)
        raise CvtuiError(f"{name} did not get ready within {timeout_s:g} s")

    def _stop(self, name: str, timeout_s: float = 10.0) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Cancel what still runs, then stop each daemon by its pid and wait for it."""
        if "slurmctld" in self.processes and self.controller_up():
            with contextlib.suppress(subprocess.SubprocessError):
                self.command(["scancel", f"--user={getpass.getuser()}"], check=False)
                deadline = time.monotonic() + 15
                while (
                    time.monotonic() < deadline
                    and self.command(
                        ["squeue", "--noheader", "--states=RUNNING,COMPLETING"], check=False
                    ).stdout.strip()
                ):
                    time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            self._stop(name)


@dataclass
class SlurmLab:
    """A Slurm cluster and its login node (a real sshd whose sessions see the cluster)."""

    cluster: SlurmCluster
    login: SshServer
    client_key: Path
    known_hosts: Path
    inventory_path: Path
    root: Path  # the cvtui host root on the "shared file system"

    def stop(self) -> None:
        self.login.kill()
        self.cluster.stop()


def start_slurm_lab(
    directory: Path, *, gpus: int = 4, slurm: dict[str, str] | None = None, name: str = "cluster"
) -> SlurmLab:
    """Start a cluster and a login sshd under directory; write inventory.yaml with one
    `kind: slurm` host (plus known_hosts and a client key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cluster = SlurmCluster(directory / "slurm", gpus=gpus)
    cluster.start()
    try:
        client_key = directory / "client_key"
        authorized = directory / "authorized_keys"
        authorized.write_text(generate_key(client_key, "cvtui-slurm-lab") + "\n")
        authorized.chmod(0o600)
        login = SshServer(
            "login",
            directory / "login",
            authorized,
            extra_config=(f"SetEnv SLURM_CONF={cluster.conf}",),
        )
        login.start()
    except BaseException:
        cluster.stop()
        raise
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(known_hosts_line(login.port, login.host_pub) + "\n")
    root = directory / "shared" / "cvtui"
    host: dict[str, object] = {
        "address": "127.0.0.1",
        "port": login.port,
        "kind": "slurm",
        "root": str(root),
        "slurm": slurm or {"partition": cluster.partition},
    }
    inventory = {
        "defaults": {
            "user": getpass.getuser(),
            "identity": str(client_key),
            "known_hosts": str(known_hosts),
        },
        "policy": {"interval": "1s", "stale_after": "5s", "disconnected_after": "30s"},
        "hosts": {name: host},
    }
    inventory_path = directory / "inventory.yaml"
    inventory_path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return SlurmLab(cluster, login, client_key, known_hosts, inventory_path, root)
