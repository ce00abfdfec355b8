"""The host's software environment for run provenance: GPU driver and installed packages.

Packages are listed by a child interpreter through importlib.metadata (what `pip freeze`
prints, without importing pip: about 0.1 s instead of 0.7 s), so the agent itself never loads
the metadata machinery and stays small.
"""

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from remote_agent.protocol import E_NO_SUCH_RUN, OP_ENVIRONMENT, OP_RUN_PYTHON, RemoteError
from remote_agent.rundir import PYTHON_RECORD, RUN_ID

PACKAGES_TIMEOUT_S = 20.0
RUN_PYTHON_FRESH_S = 3600.0  # a run environment's listing is reused this long
RECORD_WAIT_S = 30.0  # a run that wrote no python record by then never will (setup failed)

# Prints the interpreter's version on the first line (what a run's provenance names).
_VERSION_AND_PACKAGES = "import platform\nprint(platform.python_version())\n"

# Prints `name==version` per installed distribution, sorted like `pip freeze`.
_LIST_PACKAGES = (
    "import importlib.metadata as m\n"
    "seen = {}\n"
    "for d in m.distributions():\n"
    "    name = d.metadata['Name']\n"
    "    if name and name.lower() not in seen:\n"
    "        seen[name.lower()] = name + '==' + str(d.version)\n"
    "print('\\n'.join(seen[k] for k in sorted(seen)))\n"
)


def list_packages(
    python: str = sys.executable, env: Optional[Dict[str, str]] = None
) -> Dict[str, Any]:
    """{"packages": text} or {"packages": None, "packages_reason": why not}; with env (a
    run's environment), also {"python": its version}."""
    code = _LIST_PACKAGES if env is None else _VERSION_AND_PACKAGES + _LIST_PACKAGES
    try:
        done = subprocess.run(
            [python, "-c", code],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PACKAGES_TIMEOUT_S,
            env=env,
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        return {"packages": None, "packages_reason": f"took over {PACKAGES_TIMEOUT_S:g} s"}
    except OSError as exc:
        return {"packages": None, "packages_reason": str(exc)}
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = said[-1] if said else f"exit {done.returncode}"
        return {"packages": None, "packages_reason": reason[:300]}
    text = done.stdout.decode("utf-8", "replace")
    if env is None:
        return {"packages": text, "packages_reason": None}
    version, _, packages = text.partition("\n")
    return {"python": version.strip(), "packages": packages, "packages_reason": None}


class EnvironmentOps:
    """OP_ENVIRONMENT, read once per agent process in a thread of its own.

    Listing packages takes a child interpreter 0.1 s to seconds on a busy host; the request
    thread must not wait for it (starts and cancels queue behind it), so the first asks get
    {"pending": true} and the controller asks again.
    """

    def __init__(self, driver: Callable[[], Optional[str]]) -> None:
        self._driver = driver
        self._cached: Optional[Dict[str, Any]] = None
        self._lock = threading.Lock()
        self._reader: Optional[threading.Thread] = None
        self.ops = {OP_ENVIRONMENT: self.environment}

    def environment(self, message: Dict[str, Any]) -> Dict[str, Any]:
        with self._lock:
            if self._cached is not None:
                return dict(self._cached)
            if self._reader is None:
                self._reader = threading.Thread(target=self._read, name="environment", daemon=True)
                self._reader.start()
        return {"pending": True}

    def wait(self, timeout_s: float) -> None:
        """For tests and callers on a thread of their own: until the answer is ready."""
        reader = self._reader
        if reader is not None:
            reader.join(timeout_s)

    def _read(self) -> None:
        found: Dict[str, Any] = {
            "python": sys.version.split()[0],
            "executable": sys.executable,
        }
        try:
            found["driver"] = self._driver()
        except Exception as exc:  # a driver query must not fail the whole answer
            found["driver"] = None
            found["driver_reason"] = f"{type(exc).__name__}: {exc}"
        try:
            found.update(list_packages())
        except Exception as exc:
            found.update(packages=None, packages_reason=f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._cached = found


class RunPythonOps:
    """OP_RUN_PYTHON: the interpreter a run's environment resolves, and its packages.

    Listed once per environment (the supervisor's record names it) and reused for an hour, in
    a thread of its own; asks meanwhile get {"pending": true}.
    """

    def __init__(self, root: str) -> None:
        self.runs_dir = os.path.join(root, "runs")
        self._lock = threading.Lock()
        self._cache: Dict[Tuple[str, str], Dict[str, Any]] = {}  # (env key, executable) ->
        self._taken: Dict[Tuple[str, str], float] = {}
        self._readers: Dict[Tuple[str, str], threading.Thread] = {}
        self.ops = {OP_RUN_PYTHON: self.run_python}

    def run_python(self, message: Dict[str, Any]) -> Dict[str, Any]:
        run_id = message.get("run_id")
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            raise RemoteError(E_NO_SUCH_RUN, f"run id {str(run_id)[:80]!r} is not a run id")
        run_dir = os.path.join(self.runs_dir, run_id)
        try:
            with open(os.path.join(run_dir, PYTHON_RECORD), "rb") as f:
                record = json.loads(f.read(4 << 20).decode("utf-8"))
        except FileNotFoundError:
            try:
                age = time.time() - os.stat(run_dir).st_mtime
            except OSError:
                raise RemoteError(E_NO_SUCH_RUN, f"no run {run_id} at {run_dir}") from None
            if age < RECORD_WAIT_S:
                return {"pending": True}
            return {"python": None, "reason": "the run environment never came up"}
        except (OSError, ValueError, RecursionError) as exc:
            return {"python": None, "reason": f"unreadable {PYTHON_RECORD}: {exc}"}
        if not isinstance(record, dict):
            return {"python": None, "reason": f"unreadable {PYTHON_RECORD}"}
        executable = record.get("executable")
        common = {"executable": executable, "env_key": record.get("env_key") or ""}
        if not isinstance(executable, str) or not executable:
            named = record.get("python")
            return dict(common, python=None, reason=f"{named} not found on the run's PATH")
        key = (str(common["env_key"]), executable)
        with self._lock:
            found = self._cache.get(key)
            if found is not None and time.time() - self._taken[key] < RUN_PYTHON_FRESH_S:
                return dict(common, **found)
            if key not in self._readers or not self._readers[key].is_alive():
                env = record.get("env") if isinstance(record.get("env"), dict) else None
                reader = threading.Thread(
                    target=self._read, args=(key, env), name="run-python", daemon=True
                )
                self._readers[key] = reader
                reader.start()
        return {"pending": True}

    def _read(self, key: Tuple[str, str], env: Optional[Dict[str, str]]) -> None:
        clean = {str(k): str(v) for k, v in (env or dict(os.environ)).items()}
        try:
            found = list_packages(key[1], clean)
        except Exception as exc:
            found = {"python": None, "packages": None, "packages_reason": str(exc)}
        found.setdefault("python", None)
        with self._lock:
            self._cache[key] = found
            self._taken[key] = time.time()
