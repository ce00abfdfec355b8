"""Fuzz of the protocol decoders: whatever a host sends, the controller gets either checked
dataclasses or a ProtocolError naming the problem, never another exception."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remote_agent import protocol, wire_decode
from remote_agent.protocol import (
    FileEntry,
    FileListing,
    Hello,
    ProtocolError,
    RunStatus,
    Telemetry,
    WorkspaceListing,
)
from remote_agent.wire_fields import INT64_MAX, INT64_MIN, FieldError

# Values a hostile or broken agent may put anywhere: edge numbers, wrong types, long text.
edge_ints = st.sampled_from([-5, -1, 0, 1, 2**31, 2**63 - 1, 2**63, 10**30, -(10**30)])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    edge_ints,
    st.floats(),
    st.text(max_size=8),
    st.sampled_from(["", "..", "/etc/passwd", "a/../b", "x\0y", "ok.log", "a" * 5000]),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


def mutated(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """base with some fields replaced by anything, some dropped, some added."""
    return st.builds(
        lambda changes, dropped: {
            **{k: v for k, v in base.items() if k not in dropped},
            **changes,
        },
        st.dictionaries(st.sampled_from([*base, "extra"]), json_values, max_size=3),
        st.sets(st.sampled_from(list(base)), max_size=2),
    )


GOOD_ENTRY = {"path": "out/m.csv", "size": 10, "mtime_ns": 1_700_000_000_000_000_000, "ino": 7}
GOOD_GPU = {
    "index": 0, "uuid": "GPU-1", "name": "A100", "util": 50.0, "mem_used": 1, "mem_total": 2,
    "temperature": 40.0, "power": 100.0, "power_limit": 300.0, "fan": 30.0,
    "processes": [{"pid": 5, "user": "u", "command": "python", "container": None, "mem": 1,
                   "run_id": None}],
    "leased_by": None,
}  # fmt: skip
GOOD_HOST = {
    "cpu_percent": 1.0, "load1": 0.5, "load5": 0.5, "load15": 0.5, "mem_used": 1,
    "mem_total": 2, "disk_free": 3, "disk_total": 4,
}  # fmt: skip
GOOD_HELLO = {
    "protocol": 1, "python": "3.8.10", "hostname": "h", "user": "u", "pid": 9,
    "backend": "simulated", "backend_errors": [], "gpu_count": 1,
    "hash_algorithms": ["xxh3_128"], "root": "/r",
}  # fmt: skip
GOOD_STATUS = {
    "run_id": "01hzz", "state": "running", "run_dir": "/r/runs/01hzz", "gpus": [0],
    "supervisor_pid": 10, "supervisor_start": 5, "pid": 11, "pgid": 11, "uid": 1000,
    "started": 1.7e9, "ended": None, "heartbeat": 1.7e9, "exit_code": None, "progress": 5.0,
    "progress_msg": "x", "reason": None, "log_size": 3,
}  # fmt: skip
GOOD_WORKSPACE_FILE = {
    "path": "a.py", "size": 1, "mtime_ns": 1, "executable": False, "hash": "ab12",
}  # fmt: skip


def sound_int(value: Any, low: int = INT64_MIN, high: int = INT64_MAX) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def sound_number(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isfinite(value))


def sound_path(path: Any) -> bool:
    parts = path.split("/") if isinstance(path, str) else [""]
    return not path.startswith("/") and ".." not in parts and "" not in parts and "\0" not in path


def check_entry(entry: FileEntry) -> None:
    assert sound_path(entry.path)
    assert sound_int(entry.size, 0) and sound_int(entry.mtime_ns) and sound_int(entry.ino, 0)
    assert isinstance(entry.link, bool)


def decoded(decode: Any, data: Any) -> Any:
    """decode(data), or None when it raised ProtocolError; any other exception fails."""
    try:
        return decode(data)
    except ProtocolError as exc:
        assert str(exc)  # a reason is named
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(mutated(GOOD_ENTRY), json_values), max_size=6), json_values)
def test_a_file_listing_keeps_every_good_entry_and_names_each_bad_one(
    entries: list[Any], truncated: Any
) -> None:
    listing = decoded(FileListing.from_wire, {"files": [GOOD_ENTRY, *entries, GOOD_ENTRY]})
    assert listing is not None
    for entry in listing.files:
        check_entry(entry)
    assert len(listing.files) + len(listing.rejected) == len(entries) + 2
    assert listing.files[0] == listing.files[-1] == FileEntry(**GOOD_ENTRY)
    assert all(r.reason.startswith("refused from the host: ") for r in listing.rejected)
    decoded(FileListing.from_wire, {"files": entries, "truncated": truncated})


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.one_of(mutated(GOOD_GPU), json_values), max_size=4),
    st.one_of(mutated(GOOD_HOST), json_values),
    json_values,
)
def test_telemetry_values_are_checked_or_unknown(gpus: list[Any], host: Any, time: Any) -> None:
    for data in ({"time": 1.7e9, "backend": "nvml", "host": host, "gpus": gpus}, {"time": time}):
        sample = decoded(Telemetry.from_wire, data)
        if sample is None:
            continue
        for name in ("cpu_percent", "load1", "load5", "load15"):
            assert sound_number(getattr(sample.host, name))
        for name in ("mem_used", "mem_total", "disk_free", "disk_total"):
            value = getattr(sample.host, name)
            assert value is None or sound_int(value, 0)
        indexes = [g.index for g in sample.gpus]
        assert len(set(indexes)) == len(indexes)
        for gpu in sample.gpus:
            assert sound_int(gpu.index, 0, 4095) and isinstance(gpu.uuid, str)
            assert all(sound_number(getattr(gpu, n)) for n in ("util", "temperature", "power"))
            assert gpu.mem_used is None or sound_int(gpu.mem_used, 0)
            for process in gpu.processes:
                assert sound_int(process.pid, 0) and isinstance(process.command, str)
                assert process.mem is None or sound_int(process.mem, 0)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.one_of(mutated(GOOD_GPU), st.just(GOOD_GPU), json_values), max_size=4),
    st.one_of(mutated(GOOD_HOST), st.just(GOOD_HOST), json_values),
    st.lists(mutated(GOOD_GPU["processes"][0]), max_size=3),
)
def test_the_fast_telemetry_readers_agree_with_the_checked_ones(
    gpus: list[Any], host: Any, processes: list[Any]
) -> None:
    # The fast path reads an ordinary entry itself and leaves anything else to the checked
    # readers: whatever the entry, the result (and every problem named) is theirs.
    assert wire_decode._plain_gpu(GOOD_GPU) is not None  # an agent's entry takes the fast path
    assert wire_decode._plain_host(GOOD_HOST) is not None
    gpus = [*gpus, dict(GOOD_GPU, index=9, processes=processes)]
    data = {"time": 1.7e9, "backend": "nvml", "host": host, "gpus": gpus}
    problems: list[str] = []
    try:
        slow_host = wire_decode.host_sample(host, problems)
    except FieldError:
        with pytest.raises(ProtocolError):  # refused as a whole, as the checked reader does
            wire_decode.telemetry(data)
        return
    fast = wire_decode.telemetry(data)
    slow_gpus: dict[int, Any] = {}
    for raw in gpus:
        try:
            gpu = wire_decode.gpu_sample(raw, problems)
        except FieldError as exc:
            problems.append(f"a GPU refused: {exc}")
            continue
        if gpu.index in slow_gpus:
            problems.append(f"GPU {gpu.index} listed twice: the second left out")
            continue
        slow_gpus[gpu.index] = gpu
    assert fast.host == slow_host and fast.gpus == tuple(slow_gpus.values())
    assert fast.problems == tuple(problems)


@settings(max_examples=300, deadline=None)
@given(mutated(GOOD_STATUS))
def test_a_run_status_is_all_checked_or_refused(data: dict[str, Any]) -> None:
    status = decoded(RunStatus.from_wire, data)
    if status is None:
        return
    assert status.state in protocol.RUN_STATES and isinstance(status.run_id, str)
    assert all(sound_int(g, 0, 4095) for g in status.gpus)
    for name in ("started", "ended", "heartbeat", "progress"):
        assert sound_number(getattr(status, name))
    for name in ("supervisor_pid", "pid", "pgid", "uid", "exit_code", "supervisor_start"):
        value = getattr(status, name)
        assert value is None or sound_int(value)
    assert sound_int(status.log_size, 0)


@settings(max_examples=200, deadline=None)
@given(mutated(GOOD_HELLO), st.lists(mutated(GOOD_WORKSPACE_FILE), max_size=4))
def test_hello_and_workspace_listings(hello: dict[str, Any], files: list[Any]) -> None:
    said = decoded(Hello.from_wire, hello)
    if said is not None:
        assert sound_int(said.pid, 0) and sound_int(said.gpu_count, 0)
        assert all(isinstance(a, str) for a in said.hash_algorithms)
    listing = decoded(
        WorkspaceListing.from_wire, {"dir": "/w", "exists": True, "algo": "x", "files": files}
    )
    assert listing is not None and len(listing.files) + len(listing.skipped) == len(files)
    for file in listing.files:
        assert sound_path(file.path) and sound_int(file.size, 0) and sound_int(file.mtime_ns)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())))
def test_any_line_decodes_to_an_object_or_a_protocol_error(line: bytes) -> None:
    message = decoded(protocol.decode, line)
    assert message is None or isinstance(message, dict)


def test_every_run_status_field_has_its_check() -> None:
    # A field added to RunStatus must be checked when it comes from a host.
    fields = {f.name for f in dataclasses.fields(RunStatus)}
    assert fields == set(wire_decode.RUN_STATUS_FIELDS)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"size": -5}, "size -5 is out of range [0, 2^63-1]"),
        ({"mtime_ns": 10**30}, "mtime_ns 1000000000000000000000000000000 is out of range"),
        ({"path": "../x"}, "path '../x' is not a relative path inside the directory"),
        ({"size": True}, "size True is not an integer"),
        ({"path": None}, "path None is not a string"),
    ],
)
def test_each_refusal_names_the_field_and_value(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ProtocolError, match="bad file entry") as raised:
        FileEntry.from_wire({**GOOD_ENTRY, **change})
    assert reason in str(raised.value)


def test_a_wrong_measurement_reads_as_unknown_and_is_named() -> None:
    gpu = {**GOOD_GPU, "temperature": 1e300, "mem_used": -1, "processes": [{"pid": "x"}]}
    sample = Telemetry.from_wire({"time": 1.7e9, "backend": "nvml", "host": GOOD_HOST,
                                  "gpus": [gpu, {"index": -1}]})  # fmt: skip
    [kept] = sample.gpus
    assert kept.temperature is None and kept.mem_used is None and kept.processes == ()
    assert kept.util == 50.0
    assert [p.split(":")[0] for p in sample.problems] == ["GPU 0"] * 3 + ["a GPU refused"]
    assert any("temperature 1e+300 is out of range [-273.15, 1000]" in p for p in sample.problems)
    assert "problems" not in sample.to_wire()
    assert dataclasses.replace(sample, problems=()) == Telemetry.from_wire(
        {**sample.to_wire(), "gpus": [dataclasses.asdict(kept)]}
    )
