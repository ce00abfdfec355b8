"""Build agent.pyz (remote_agent + the bundled pynvml) as deterministic, content-addressed bytes.

The zip holds the sources and, beside each, its bytecode for this controller's Python
(`name.pyc`, hash-based and unchecked): a host whose python is the same version loads that
and skips compiling ~9,000 lines at every agent start (about 40-80 ms of its CPU); any other
python finds the bytecode's magic number foreign and compiles the source, as before.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import xxhash

import remote_agent
from cvtui.errors import CvtuiError

log = logging.getLogger("cvtui.engine.deploy")

ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: same sources, same bytes
ZIP_FILE_MODE = 0o100644  # regular file, rw-r--r--
COMPILE_TIMEOUT_S = 60.0

# Run by this controller's python with PYTHONHASHSEED=0 in a fresh process: marshal writes
# set constants in hash order and shares objects by refcount, so only a fresh, seeded
# interpreter gives the same bytes every time (and the bundle its content address).
# stdin: {name: source}; stdout: {name + "c": base64 of an unchecked hash-based .pyc}.
_COMPILE = """
import base64, importlib.util, json, marshal, sys
out = {}
for name, text in sorted(json.load(sys.stdin).items()):
    data = text.encode()
    code = compile(data, name, "exec", dont_inherit=True)
    pyc = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little")
    pyc += importlib.util.source_hash(data) + marshal.dumps(code)
    out[name + "c"] = base64.b64encode(pyc).decode()
json.dump(out, sys.stdout)
"""

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
            # Bytecode compresses 4x slower than source at level 9, for 1% smaller.
            archive.writestr(info, content, compresslevel=6 if name.endswith(".pyc") else 9)
    return buffer.getvalue()


def compiled(sources: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """(name + "c", bytecode) of each source for this python; [] when it cannot be had.

    Compiled in a child process: see _COMPILE.
    """
    text = json.dumps({name: content.decode() for name, content in sources})
    try:
        done = subprocess.run(
            [sys.executable, "-S", "-c", _COMPILE],
            input=text.encode(),
            capture_output=True,
            env={"PYTHONHASHSEED": "0", "PATH": os.environ.get("PATH", "")},
            timeout=COMPILE_TIMEOUT_S,
            check=True,
        )
        found = json.loads(done.stdout)
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.warning("agent bytecode not built (hosts compile the sources): %s", exc)
        return []
    return [(name, base64.b64decode(found[name])) for name in sorted(found)]


def _cache_file(sources: list[tuple[str, bytes]]) -> Path:
    """Where the bundle built from these sources by this python is kept between processes."""
    import platformdirs

    key = xxhash.xxh3_128()
    key.update(sys.version.encode() + importlib.util.MAGIC_NUMBER)
    for name, content in sources:
        key.update(f"{name}\0{len(content)}\0".encode() + content)
    return Path(platformdirs.user_cache_dir("cvtui")) / "agent" / f"{key.hexdigest()}.pyz"


@functools.cache
def build_agent() -> AgentBundle:
    """The agent zipapp for this cvtui install (built once per process).

    Building it (bytecode, compression) takes about half a second, so the result is kept in
    the user cache dir under the hash of its sources and python: an engine start reads it.
    """
    sources = [
        ("__main__.py", ZIPAPP_MAIN),
        ("pynvml.py", _pynvml_source()),
        *_agent_sources(),
    ]
    cache = _cache_file(sources)
    try:
        data = cache.read_bytes()
    except OSError:
        bytecode = compiled(sources)
        data = zip_entries(sources + bytecode)
        if bytecode:  # a bundle without bytecode is not the one to keep
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                part = cache.with_name(f"{cache.name}.{os.getpid()}.part")
                part.write_bytes(data)
                part.replace(cache)
            except OSError as exc:  # a read-only home: build it again next time
                log.debug("agent bundle not cached: %s", exc)
    return AgentBundle(data=data, hash=xxhash.xxh3_128_hexdigest(data))


def remote_agent_path(root: str, bundle: AgentBundle) -> str:
    """Where the bundle lives on a host under the agent root: <root>/agent/<hash>/agent.pyz."""
    return f"{root.rstrip('/')}/agent/{bundle.hash}/agent.pyz"
