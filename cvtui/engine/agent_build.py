"""Build agent.pyz (remote_agent + the bundled pynvml) as deterministic, content-addressed bytes."""

from __future__ import annotations

import functools
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import xxhash

import remote_agent
from cvtui.errors import CvtuiError

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: same sources, same bytes
ZIP_FILE_MODE = 0o100644  # regular file, rw-r--r--

# The zipapp's entry point. runpy (not an import of remote_agent.agent) so that
# remote_agent/__main__.py's version check runs first, and it must parse on any old python.
ZIPAPP_MAIN = b'''"""Run cvtui's host agent from its zipapp: python3 agent.pyz serve ..."""
import runpy

runpy.run_module("remote_agent", run_name="__main__", alter_sys=True)
'''


@dataclass(frozen=True)
class AgentBundle:
    """The zipapp's bytes and their hash, which names its directory on every host."""

    data: bytes
    hash: str  # xxh3_128 hexdigest of data


def _agent_sources() -> list[tuple[str, bytes]]:
    """(name inside the zip, content) for every remote_agent source file, sorted."""
    package = Path(remote_agent.__file__).parent
    files = [
        (f"remote_agent/{path.relative_to(package).as_posix()}", path.read_bytes())
        for path in package.rglob("*.py")
        if "__pycache__" not in path.parts
    ]
    return sorted(files)


def _pynvml_source() -> bytes:
    spec = importlib.util.find_spec("pynvml")
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise CvtuiError(
            "cannot bundle NVML support: the nvidia-ml-py package (module pynvml) is not "
            "installed as a .py file; reinstall cvtui with its dependencies"
        )
    return Path(spec.origin).read_bytes()


def zip_entries(entries: list[tuple[str, bytes]]) -> bytes:
    """A zip of (name, content) entries that depends only on them: sorted, fixed dates and modes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so external_attr carries the mode below
            info.external_attr = ZIP_FILE_MODE << 16
            archive.writestr(info, content, compresslevel=9)
    return buffer.getvalue()


@functools.cache
def build_agent() -> AgentBundle:
    """The agent zipapp for this cvtui install (built once per process)."""
    entries = [
        ("__main__.py", ZIPAPP_MAIN),
        ("pynvml.py", _pynvml_source()),
        *_agent_sources(),
    ]
    data = zip_entries(entries)
    return AgentBundle(data=data, hash=xxhash.xxh3_128_hexdigest(data))


def remote_agent_path(root: str, bundle: AgentBundle) -> str:
    """Where the bundle lives on a host under the agent root: <root>/agent/<hash>/agent.pyz."""
    return f"{root.rstrip('/')}/agent/{bundle.hash}/agent.pyz"
