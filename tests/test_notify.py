"""Notifications: event text and JSON, the `notify:` inventory list, real commands and webhooks."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cvtui.engine.notify import (
    Notifier,
    NotifyEvent,
    deliver,
    gpu_idle_event,
    host_down_event,
    host_up_event,
    run_event,
)
from cvtui.errors import InventoryError
from cvtui.inventory import NotifyTarget, parse_inventory
from cvtui.units import duration

RUN = {
    "id": "01j9zk3q8v5w0000000000abcd",
    "name": "resnet-lr0.1",
    "project": "vision",
    "user": "alice",
    "state": "succeeded",
    "priority": "normal",
    "host": "gpu-01",
    "gpus": [0, 3],
    "exit_code": 0,
    "reason": None,
    "submitted": 1_000.0,
    "started": 1_010.0,
    "ended": 1_010.0 + 3 * 3600 + 125,
    "run_dir": "/home/alice/.cache/cvtui/runs/01j9zk3q8v5w0000000000abcd",
    "spec": {"not": "sent"},
}


def test_durations_read_like_a_person_would_say_them() -> None:
    assert [duration(s) for s in (0.34, 42.9, 192, 7500, 90000, -5)] == [
        "0.3s",
        "42s",
        "3m12s",
        "2h05m",
        "1d01h",
        "0.0s",
    ]


def test_run_events_say_what_happened_where_and_how_long() -> None:
    done = run_event(RUN, now=5.0)
    assert done is not None and done.kind == "run_succeeded"
    assert (
        done.text
        == "cvtui: run resnet-lr0.1 (01j9zk3q8v5w) succeeded on gpu-01 (GPUs 0,3) after 3h02m"
    )
    payload = json.loads(done.body())
    assert payload["event"] == "run_succeeded" and payload["time"] == 5.0
    assert payload["text"] == done.text
    assert payload["run"]["duration_s"] == 3 * 3600 + 125
    assert payload["run"]["gpus"] == [0, 3] and "spec" not in payload["run"]
    assert done.body().endswith(b"\n") and done.body().count(b"\n") == 1

    failed = run_event({**RUN, "state": "failed", "exit_code": 137, "reason": "killed by SIGKILL"})
    assert failed is not None and failed.kind == "run_failed"
    assert failed.text.endswith(
        "failed on gpu-01 (GPUs 0,3) with exit code 137 after 3h02m: killed by SIGKILL"
    )
    lost = run_event({**RUN, "state": "lost", "gpus": [1], "reason": "supervisor gone"})
    assert lost is not None and lost.kind == "run_lost"
    assert lost.text.endswith("was lost on gpu-01 (GPU 1): supervisor gone")
    never_started = run_event({**RUN, "state": "failed", "started": None, "exit_code": None})
    assert never_started is not None and "after" not in never_started.text
    assert run_event({**RUN, "state": "cancelled"}) is None
    assert run_event({**RUN, "state": "running"}) is None


def test_host_events() -> None:
    down = host_down_event("gpu-02", "disconnected", "connection lost", now=10.0)
    assert down.text == "cvtui: host gpu-02 is down (disconnected: connection lost)"
    assert down.payload() == {
        "event": "host_down",
        "time": 10.0,
        "text": down.text,
        "host": "gpu-02",
        "run": None,
        "state": "disconnected",
        "reason": "connection lost",
        "gpu": None,
    }
    up = host_up_event("gpu-02", 10.0, now=10.0 + 754)
    assert up.text == "cvtui: host gpu-02 is back after 12m34s down"
    assert up.state == "healthy"


# -- the inventory's notify list ----------------------------------------------------------

HOSTS = "hosts: {gpu-01: {}}\n"


def test_inventory_notify_targets() -> None:
    inventory = parse_inventory(
        HOSTS
        + "notify:\n"
        + "  - command: \"notify-send 'run ended'\"\n"
        + "  - webhook: https://hooks.slack.com/services/T0/B0/x\n"
    )
    assert inventory.notify == (
        NotifyTarget(command="notify-send 'run ended'"),
        NotifyTarget(webhook="https://hooks.slack.com/services/T0/B0/x"),
    )
    assert inventory.notify[0].argv() == ["notify-send", "run ended"]
    assert [t.line for t in inventory.notify] == [3, 4]
    assert parse_inventory(HOSTS).notify == ()
    assert parse_inventory(HOSTS + "notify:\n").notify == ()


@pytest.mark.parametrize(
    ("notify", "where", "problem"),
    [
        ("notify: {command: x}", "2:9", "notify: expected a list like"),
        ("notify:\n  - x", "3:5", "notify: expected an entry like"),
        ("notify:\n  - {command: a, webhook: 'http://h'}", "3:5", "exactly one of"),
        ("notify:\n  - {}", "3:5", "exactly one of"),
        ("notify:\n  - {comand: a}", "3:6", "unknown key 'comand' in notify entry (did you mean"),
        ('notify:\n  - {command: "a \'b"}', "3:15", "notify.command: cannot split it"),
        ("notify:\n  - {command: '  '}", "3:15", "notify.command: expected a non-empty string"),
        ("notify:\n  - {webhook: 'ftp://h/x'}", "3:15", "expected an http:// or https:// URL"),
        ("notify:\n  - {webhook: 'https://'}", "3:15", "expected an http:// or https:// URL"),
    ],
)
def test_inventory_notify_errors_point_at_the_entry(notify: str, where: str, problem: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(HOSTS + notify + "\n", "inventory.yaml")
    assert str(caught.value).startswith(f"inventory.yaml:{where}: ")
    assert problem in str(caught.value)


# -- real deliveries ----------------------------------------------------------------------


class Hook:
    """A real HTTP server on loopback that records what is POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[tuple[str, str, dict]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
                self.send_response(hook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/lab"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


def append_stdin_to(path: Path) -> NotifyTarget:
    """A real command that appends what it reads on stdin to path."""
    return NotifyTarget(command=f"sh -c {shlex.quote(f'cat >> {shlex.quote(str(path))}')}")


async def test_a_command_gets_the_event_on_stdin_and_a_webhook_gets_it_posted(
    tmp_path: Path, hook: Hook
) -> None:
    out = tmp_path / "events.jsonl"
    event = run_event(RUN)
    assert event is not None
    assert await deliver(append_stdin_to(out), event)
    assert await deliver(NotifyTarget(webhook=hook.url), event)
    assert json.loads(out.read_text()) == event.payload()
    [(path, content_type, body)] = hook.received
    assert (path, content_type) == ("/hooks/lab", "application/json")
    assert body["text"] == event.text  # what Slack shows
    assert body == event.payload()


async def test_failed_deliveries_are_logged_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    event = host_down_event("gpu-01", "error", "auth failed", now=1.0)
    refused = Hook(status=500)
    try:
        caplog.set_level(logging.WARNING, "cvtui.engine.notify")
        missing = NotifyTarget(command=str(tmp_path / "no-such-program"))
        failing = NotifyTarget(
            command=f"{shlex.quote(sys.executable)} -c 'import sys; sys.exit(\"boom\")'"
        )
        assert not await deliver(missing, event)
        assert not await deliver(failing, event)
        assert not await deliver(NotifyTarget(webhook=refused.url), event)
        assert not await deliver(NotifyTarget(webhook="http://127.0.0.1:9/nothing-listens"), event)
        hanging = NotifyTarget(command="sleep 30")
        assert not await deliver(hanging, event, command_timeout_s=0.3)
    finally:
        refused.close()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 5
    assert "no-such-program" in messages[0] and "cannot run" in messages[0]
    assert "exited with 1: boom" in messages[1]
    assert "answered HTTP 500" in messages[2]
    assert "nothing-listens" in messages[3]
    assert "did not finish within 0.3 s" in messages[4]
    assert all(r.event == "notify_failed" and r.host == "gpu-01" for r in caplog.records)


async def test_notifier_tells_of_a_host_going_down_once_and_coming_back(
    tmp_path: Path, hook: Hook
) -> None:
    out = tmp_path / "events.jsonl"
    targets = [append_stdin_to(out), NotifyTarget(webhook=hook.url)]
    notifier = Notifier(lambda: targets)
    notifier.host_failed("gpu-02", "error", "auth failed")  # never seen up: nothing to tell
    notifier.host_seen("gpu-01")
    notifier.host_seen("gpu-01")
    notifier.host_failed("gpu-01", "stale", None)  # not down
    notifier.host_failed("gpu-01", "disconnected", "connection lost")
    notifier.host_failed("gpu-01", "disconnected", "connection refused")  # reconnects failing
    notifier.host_seen("gpu-01")
    notifier.host_seen("gpu-01")
    notifier.run_ended({**RUN, "state": "cancelled"})  # nobody is told of cancels
    notifier.run_ended({**RUN, "state": "failed", "exit_code": 2})
    notifier.run_ended(None)
    await notifier.close()
    assert notifier.pending == 0
    # Deliveries run in parallel, so the file's order is not the events' order.
    events = sorted(
        (json.loads(line) for line in out.read_text().splitlines()), key=lambda e: e["time"]
    )
    assert [(e["event"], e["host"]) for e in events] == [
        ("host_down", "gpu-01"),
        ("host_up", "gpu-01"),
        ("run_failed", "gpu-01"),
    ]
    assert events[0]["reason"] == "connection lost"
    assert sorted(body["event"] for _, _, body in hook.received) == [
        "host_down",
        "host_up",
        "run_failed",
    ]


async def test_close_cancels_what_does_not_finish_in_time(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    slow = NotifyTarget(command=f"sh -c 'touch {marker}; sleep 30'")
    notifier = Notifier(lambda: [slow])
    notifier.send(NotifyEvent("host_up", 1.0, "cvtui: host a is back", "a"))
    assert notifier.pending == 1
    await notifier.close(wait_s=0.5)
    assert notifier.pending == 0
    assert marker.exists()


def test_gpu_idle_events_name_the_gpu_its_holder_and_how_long() -> None:
    held = gpu_idle_event(
        "gpu-01",
        3,
        user="alice",
        run=RUN,
        since=1_000.0,
        util=0.4,
        mem_used=12 * 2**30,
        simulated=False,
        now=1_000.0 + 1900,
    )
    assert held.text == (
        "cvtui: GPU 3 on gpu-01 held idle by run resnet-lr0.1 (01j9zk3q8v5w) of alice "
        "for 31m40s at 0.4% util with 12.0GiB allocated"
    )
    payload = json.loads(held.body())
    assert payload["event"] == "gpu_idle" and payload["gpu"] == 3 and payload["host"] == "gpu-01"
    assert payload["run"]["id"] == RUN["id"] and payload["state"] == "idle"
    foreign = gpu_idle_event(
        "sim-01",
        0,
        user="bob",
        run=None,
        since=0.0,
        util=None,
        mem_used=None,
        simulated=True,
        now=3600.0,
    )
    assert foreign.text == "cvtui: GPU 0 on sim-01 (simulated) held idle by bob for 1h00m"
    assert foreign.run is None
