"""agent.pyz: deterministic bytes, the right contents, and a bundle that really serves."""

from __future__ import annotations

import importlib.util
import io
import json
import marshal
import subprocess
import sys
import zipfile
from pathlib import Path

import xxhash

from cvtui.engine.agent_build import (
    ZIP_DATE_TIME,
    AgentBundle,
    build_agent,
    compiled,
    remote_agent_path,
    zip_entries,
)
from remote_agent.protocol import BACKEND_SIMULATED, PROTOCOL_VERSION, Telemetry

REPO = Path(__file__).resolve().parents[2]


def test_bundle_hash_is_the_xxh3_of_its_bytes_and_cached() -> None:
    bundle = build_agent()
    assert bundle.hash == xxhash.xxh3_128_hexdigest(bundle.data)
    assert len(bundle.hash) == 32
    assert build_agent() is bundle


def test_same_sources_give_the_same_bytes() -> None:
    entries = [("b.py", b"print('b')\n"), ("a/x.py", b"x = 1\n")]
    first = zip_entries(entries)
    assert zip_entries(list(reversed(entries))) == first  # order of discovery does not matter
    assert zip_entries([("b.py", b"print('B')\n"), entries[1]]) != first
    # A fresh build from the same tree is byte-identical (no clock, no umask, no order leaks).
    build_agent.cache_clear()
    try:
        again = build_agent()
    finally:
        build_agent.cache_clear()
    assert again == build_agent()


def test_bytecode_is_the_same_on_every_build() -> None:
    # Sets of names compile to frozenset constants, which marshal writes in hash order: only
    # a seeded child interpreter gives the same bytes each time (the bundle's address).
    sources = [("m.py", b"def f(x):\n    return x in {'alpha', 'beta', 'gamma', 'delta'}\n")]
    first = compiled(sources)
    assert [name for name, _ in first] == ["m.pyc"]
    assert compiled(sources) == first
    namespace: dict[str, object] = {}
    exec(marshal.loads(first[0][1][16:]), namespace)
    assert namespace["f"]("beta") is True  # type: ignore[operator]


def test_bundle_contents() -> None:
    archive = zipfile.ZipFile(io.BytesIO(build_agent().data))
    names = archive.namelist()
    assert names == sorted(names)
    agent_files = sorted(f"remote_agent/{p.name}" for p in (REPO / "remote_agent").glob("*.py"))
    assert set(agent_files) <= set(names)
    assert "__main__.py" in names and "pynvml.py" in names
    assert not [name for name in names if "__pycache__" in name]
    # Beside each source, its bytecode for this python: unchecked hash-based, so the zip's
    # fixed dates never make it stale, and foreign to any other python version.
    sources = [name for name in names if name.endswith(".py")]
    assert sorted(name for name in names if name.endswith(".pyc")) == sorted(
        name + "c" for name in sources
    )
    for name in sources:
        pyc, source = archive.read(name + "c"), archive.read(name)
        assert pyc[:4] == importlib.util.MAGIC_NUMBER and pyc[4:8] == (1).to_bytes(4, "little")
        assert pyc[8:16] == importlib.util.source_hash(source)
    spec = importlib.util.find_spec("pynvml")
    assert spec is not None and spec.origin is not None
    assert archive.read("pynvml.py") == Path(spec.origin).read_bytes()
    for name in agent_files:
        assert archive.read(name) == (REPO / name).read_bytes()
    for info in archive.infolist():
        assert info.date_time == ZIP_DATE_TIME
        assert info.external_attr >> 16 == 0o100644
    main = archive.read("__main__.py").decode()
    compile(main, "__main__.py", "exec")
    assert "runpy.run_module" in main


def test_remote_agent_path() -> None:
    bundle = AgentBundle(data=b"", hash="ab" * 16)
    assert (
        remote_agent_path("~/.cache/cvtui", bundle) == f"~/.cache/cvtui/agent/{'ab' * 16}/agent.pyz"
    )
    assert remote_agent_path("/srv/cvtui/", bundle) == f"/srv/cvtui/agent/{'ab' * 16}/agent.pyz"


def test_the_built_zipapp_serves(tmp_path: Path) -> None:
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(build_agent().data)
    requests = b'{"id": 1, "op": "ping"}\n{"id": 2, "op": "shutdown"}\n'
    # -I -S and a neutral cwd: nothing but the zipapp and the standard library is importable,
    # the way it is on a bare GPU host.
    argv = [sys.executable, "-I", "-S", str(pyz), "serve", "--root", str(tmp_path / "root")]
    argv += ["--simulate", '{"gpus": 2}', "--leases-dir", str(tmp_path / "leases")]
    done = subprocess.run(
        argv,
        input=requests,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    hello, first = lines[0], lines[1]
    assert hello["event"] == "hello" and hello["protocol"] == PROTOCOL_VERSION
    assert hello["hash_algorithms"] == ["blake2b-128"]  # no xxhash on a bare host
    telemetry = Telemetry.from_wire({k: v for k, v in first.items() if k != "event"})
    assert telemetry.backend == BACKEND_SIMULATED and len(telemetry.gpus) == 2
    replies = [line for line in lines if "id" in line]
    assert [(r["id"], r["ok"]) for r in replies] == [(1, True), (2, True)]


def test_a_python_of_another_version_compiles_the_sources(tmp_path: Path) -> None:
    # The same bundle with every .pyc's magic number changed, as another python sees it.
    archive = zipfile.ZipFile(io.BytesIO(build_agent().data))
    entries = []
    for name in archive.namelist():
        content = archive.read(name)
        if name.endswith(".pyc"):
            content = b"\x00\x00\r\n" + content[4:]
        entries.append((name, content))
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(zip_entries(entries))
    code = "import sys; sys.path.insert(0, sys.argv[1]); import remote_agent.agent as a; "
    code += "print(a.__file__)"
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(pyz)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("remote_agent/agent.py")  # from source
    pyz.write_bytes(build_agent().data)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(pyz)], capture_output=True, text=True
    )
    assert done.stdout.strip().endswith("remote_agent/agent.pyc")  # this python: bytecode


def test_the_built_zipapp_loads_its_own_pynvml(tmp_path: Path) -> None:
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(build_agent().data)
    done = subprocess.run(
        [sys.executable, "-I", "-S", str(pyz), "serve", "--root", str(tmp_path / "root")],
        input=b"",
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    hello = json.loads(done.stdout.splitlines()[0])
    # pynvml came from the bundle: NVML failed for want of the driver, not of the module.
    assert not any("pynvml module not available" in e for e in hello["backend_errors"])
    assert hello["backend_errors"][0].startswith("NVML: ")
