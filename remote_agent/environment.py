"""The host's software environment for run provenance: GPU driver and installed packages.

Packages are listed by a child interpreter through importlib.metadata (what `pip freeze`
prints, without importing pip: about 0.1 s instead of 0.7 s), so the agent itself never loads
the metadata machinery and stays small.
"""

import subprocess
import sys
import threading
from typing import Any, Callable, Dict, Optional

from remote_agent.protocol import OP_ENVIRONMENT

PACKAGES_TIMEOUT_S = 20.0

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


def list_packages(python: str = sys.executable) -> Dict[str, Any]:
    """{"packages": text} or {"packages": None, "packages_reason": why not}."""
    try:
        done = subprocess.run(
            [python, "-c", _LIST_PACKAGES],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PACKAGES_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"packages": None, "packages_reason": f"took over {PACKAGES_TIMEOUT_S:g} s"}
    except OSError as exc:
        return {"packages": None, "packages_reason": str(exc)}
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = said[-1] if said else f"exit {done.returncode}"
        return {"packages": None, "packages_reason": reason[:300]}
    return {"packages": done.stdout.decode("utf-8", "replace"), "packages_reason": None}


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
