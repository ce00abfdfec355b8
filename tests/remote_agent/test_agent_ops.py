"""The agent's request handling and argument parsing, in-process."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from remote_agent.agent import (
    Agent,
    Options,
    parse_args,
    parse_request_line,
    safe_encode,
    telemetry_wire,
)
from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_INTERNAL,
    E_MALFORMED,
    OP_SET_INTERVAL,
    ProtocolError,
    reply_error,
)
from remote_agent.simulated import SimulatedBackend


def _agent(tmp_path: Path) -> Agent:
    root = str(tmp_path / "root")
    backend = SimulatedBackend.from_config({"gpus": 2}, root, "lab")
    return Agent(
        Options(root, str(tmp_path / "leases"), 1.0, {"gpus": 2}), backend, [], io.BytesIO()
    )


def test_an_op_that_raises_gets_an_internal_error_and_serving_goes_on(tmp_path: Path) -> None:
    agent = _agent(tmp_path)

    def explode(message: dict[str, object]) -> dict[str, object]:
        raise OSError(28, "No space left on device")

    agent.ops["explode"] = explode
    reply = agent.handle_line(b'{"id": 3, "op": "explode"}')
    assert reply == reply_error(
        3, E_INTERNAL, "explode: OSError: [Errno 28] No space left on device"
    )
    assert agent.handle_line(b'{"id": 4, "op": "ping"}')["ok"] is True


def test_set_interval_validates_its_argument(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    for bad in ('"1"', "0", "100000", "true", "null"):
        line = b'{"id": 1, "op": "%s", "interval": %s}' % (OP_SET_INTERVAL.encode(), bad.encode())
        assert agent.handle_line(line)["error"]["code"] == E_BAD_REQUEST, bad
    assert agent.handle_line(b'{"id": 2, "op": "set_interval", "interval": 2}') == {
        "id": 2,
        "ok": True,
    }


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"\xc3\x28", "not UTF-8"),
        (b'{"a": 1}\x00', "NUL"),
        (b'{\x00"\x00}\x00', "NUL"),  # would otherwise be guessed as UTF-16
        (b"[" * 100_000, "nested too deeply"),
        (b"[]", "JSON object"),
        (b"{", "not JSON"),
    ],
)
def test_parse_request_line_rejects(line: bytes, why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        parse_request_line(line)


def test_safe_encode_escapes_what_utf8_cannot_carry() -> None:
    data = safe_encode(reply_error("\ud800", E_MALFORMED, "bad \udcff byte"))
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert json.loads(data)["id"] == "\ud800"
    assert (
        safe_encode({"id": 1, "ok": True, "text": "héllo"})
        == '{"id":1,"ok":true,"text":"héllo"}\n'.encode()
    )


def test_fast_wire_form_equals_to_wire(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    (tmp_path / "root" / "simulate").mkdir(parents=True)
    (tmp_path / "root" / "simulate" / "foreign.json").write_text(
        json.dumps([{"gpu": 1, "pid": 5, "user": "bob", "command": "train", "mem": 7}])
    )
    sample = agent.telemetry()
    assert sample.gpus[1].processes
    assert telemetry_wire(sample) == sample.to_wire()


def test_parse_args() -> None:
    options = parse_args(
        ["serve", "--root", "/srv/x", "--interval", "0.5", "--simulate", '{"gpus": 3}']
    )
    assert options == Options("/srv/x", "/tmp/cvtui-leases", 0.5, {"gpus": 3})
    assert parse_args(["serve"]).simulate is None


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["serve", "--interval", "0"], "--interval"),
        (["serve", "--interval", "soon"], "invalid float"),
        (["serve", "--simulate", "{gpus: 3}"], "not JSON"),
        (["serve", "--simulate", "[3]"], "JSON object"),
        (["run"], "invalid choice"),
        ([], "required"),
        (["serve", "--bogus"], "unrecognized"),
    ],
)
def test_parse_args_errors(argv: list[str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_args(argv)
