"""The host's software environment for run provenance: GPU driver and installed packages.

Packages are listed by a child interpreter through importlib.metadata (what `pip freeze`
prints, without importing pip: about 0.1 s instead of 0.7 s), so the agent itself never loads
the metadata machinery and stays small.
"""

import subprocess
import sys
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
    """OP_ENVIRONMENT, answered once per agent process (the environment does not move much)."""

    def __init__(self, driver: Callable[[], Optional[str]]) -> None:
        self._driver = driver
        self._cached: Optional[Dict[str, Any]] = None
        self.ops = {OP_ENVIRONMENT: self.environment}

    def environment(self, message: Dict[str, Any]) -> Dict[str, Any]:
        if self._cached is None:
            found: Dict[str, Any] = {
                "python": sys.version.split()[0],
                "executable": sys.executable,
            }
            try:
                found["driver"] = self._driver()
            except Exception as exc:  # a driver query must not fail the whole answer
                found["driver"] = None
                found["driver_reason"] = f"{type(exc).__name__}: {exc}"
            found.update(list_packages())
            self._cached = found
        return dict(self._cached)
