"""A run's environment: its variables, the setup lines run before it, and the python it resolves.

With setup lines the supervisor's child is a shell (bash when the host has it, -e) that runs
them in the work dir and then execs a small launcher: the launcher sends the environment the
setup left to the supervisor through a pipe, puts the `path` entries first on PATH and execs
the command. One child, one process group: a cancel during the setup ends it like the command.
A child that ends before the environment arrived failed in its setup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
from typing import Any

from remote_agent.protocol import WORK_DIR, StartRequest
from remote_agent.rundir import (
    PARAMS_ENV_MAX,
    PARAMS_FILE,
    PYTHON_RECORD,
    RUN_ENV_KEYS,
    params_json,
)

SETUP_FAILED = "run environment setup failed"
BASH = "/bin/bash"
ENV_END = b"\n"  # the launcher ends the environment's JSON with a newline

# Runs in the child after the setup (python -I -S: no site, no PYTHON* variables of the
# setup's environment): argv[1] is a JSON spec {fd, path, argv}.
_LAUNCH = (
    "import json, os, sys\n"
    "spec = json.loads(sys.argv[1])\n"
    "env = dict(os.environ)\n"
    "env['PATH'] = os.pathsep.join(spec['path'] + [env.get('PATH') or os.defpath])\n"
    "os.write(spec['fd'], json.dumps(env).encode() + b'\\n')\n"
    "os.close(spec['fd'])\n"
    "argv = spec['argv']\n"
    "try:\n"
    "    os.execvpe(argv[0], argv, env)\n"
    "except OSError as exc:\n"
    "    sys.stderr.write('cvtui: cannot start %r: %s\\n' % (argv[0], exc))\n"
    "    sys.exit(127)\n"
)


def command_argv(request: StartRequest) -> list[str]:
    if isinstance(request.command, str):
        return ["/bin/sh", "-c", request.command]
    return [str(arg) for arg in request.command]


def base_env(
    inherited: dict[str, str],
    request: StartRequest,
    work_dir: str,
    gpu_uuids: list[str],
    allocated: str | None = None,
) -> dict[str, str]:
    """The run's variables before any setup: the agent's, the request's, then cvtui's own.

    CUDA_VISIBLE_DEVICES names the leased GPUs by UUID when the backend knows them (exact for
    any device order, and for MIG), else by index with CUDA_DEVICE_ORDER=PCI_BUS_ID, which
    makes CUDA count GPUs in the order NVML and nvidia-smi do. CVTUI_GPUS keeps the indexes.
    In a Slurm job (`allocated`: the node's GPU indexes Slurm gave it) Slurm's own
    CUDA_VISIBLE_DEVICES stands: Slurm chose the GPUs and set them up for the job.
    """
    slurm_devices = inherited.get("CUDA_VISIBLE_DEVICES") if allocated is not None else None
    env = {k: v for k, v in inherited.items() if k not in RUN_ENV_KEYS}
    env.update({str(k): str(v) for k, v in request.env.items()})
    indexes = ",".join(str(g) for g in request.gpus)
    uuids = gpu_uuids if len(gpu_uuids) == len(request.gpus) else []
    if allocated is not None:
        indexes = allocated
        if slurm_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = slurm_devices
    else:
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(uuids) if uuids else indexes
    env["CVTUI_GPUS"] = indexes
    env["CVTUI_RUN_ID"] = request.run_id
    env["CVTUI_RUN_DIR"] = work_dir
    params = params_json(request.params)
    if len(params) <= PARAMS_ENV_MAX:
        env["CVTUI_PARAMS"] = params
    else:  # written at the start (runs.py): too long for one environment string
        run_dir = os.path.dirname(work_dir) if os.path.basename(work_dir) == WORK_DIR else work_dir
        env["CVTUI_PARAMS_FILE"] = os.path.join(run_dir, PARAMS_FILE)
    return env


def with_path(env: dict[str, str], path: list[str]) -> dict[str, str]:
    if not path:
        return env
    entries = [os.path.expanduser(entry) for entry in path]
    return {**env, "PATH": os.pathsep.join([*entries, env.get("PATH") or os.defpath])}


def setup_argv(request: StartRequest, env_fd: int) -> list[str]:
    """The child that runs the setup lines, then the launcher, then the command."""
    spec = {"fd": env_fd, "path": [os.path.expanduser(p) for p in request.path]}
    spec["argv"] = command_argv(request)
    launcher = " ".join(
        shlex.quote(part) for part in (sys.executable, "-I", "-S", "-c", _LAUNCH, json.dumps(spec))
    )
    script = "set -e\n" + "\n".join(request.setup) + "\nexec " + launcher + "\n"
    shell = BASH if os.access(BASH, os.X_OK) else "/bin/sh"
    return [shell, "-c", script]


def resolve_python(python: str, env: dict[str, str]) -> str | None:
    """The interpreter `python` names on the run's PATH (or as a path), None when not found."""
    expanded = os.path.expanduser(python)
    if "/" in expanded:
        return expanded if os.access(expanded, os.X_OK) else None
    return shutil.which(expanded, path=env.get("PATH") or os.defpath)


def write_python_record(run_dir: str, request: StartRequest, env: dict[str, str]) -> None:
    """What OP_RUN_PYTHON needs to list the run's packages: the resolved python, its env."""
    record: dict[str, Any] = {
        "python": request.python,
        "executable": resolve_python(request.python, env),
        "env_key": request.env_key,
        "env": env,
    }
    path = os.path.join(run_dir, PYTHON_RECORD)
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, path)


class EnvReader:
    """Collects the launcher's environment line from the pipe, without blocking."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buf = b""
        self.env: dict[str, str] | None = None
        self.closed = False

    def read(self) -> bool:
        """Read what is there; True once the environment has arrived."""
        while self.env is None and not self.closed:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                break
            self._buf += chunk
            if ENV_END in self._buf:
                line = self._buf.split(ENV_END, 1)[0]
                self._buf = b""
                try:
                    found = json.loads(line.decode("utf-8"))
                except ValueError:
                    found = None
                self.env = found if isinstance(found, dict) else {}
                self.close()
        return self.env is not None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)
