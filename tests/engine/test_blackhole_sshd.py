"""A blackholed link (a dropped VPN or Wi-Fi): packets stop, nothing closes. The host is marked
disconnected by SSH keepalive, the run goes on, and after the link returns the host reconnects
and reconciles with every output line and metric exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from pathlib import Path

import pytest
import yaml
from support import catalog_intact, running, wait_for

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.inventory import load_inventory
from cvtui.lab import Lab, LabHostSpec, known_hosts_line
from cvtui.submit import prepare_runs, submit

pytestmark = pytest.mark.sshd

DISCONNECTED_WITHIN_S = 15.0

JOB = r"""
import os, sys, time
progress, stop = sys.argv[1], sys.argv[2]
with open("metrics.csv", "w") as fh:
    fh.write("step,loss\n")
step = 0
while not os.path.exists(stop) and step < 5000:
    with open("metrics.csv", "a") as fh:
        fh.write(f"{step},{1 / (step + 1):.6f}\n")
    print("step", step, flush=True)
    with open(progress, "w") as fh:  # outside the run dir: the test reads it on the host
        fh.write(str(step + 1))
    step += 1
    time.sleep(0.2)
"""


class Blackhole:
    """A TCP proxy in front of one port that can stop forwarding without closing anything:
    bytes in flight wait, new connections are accepted and then hear nothing."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._relay(reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
        )

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self.flowing.wait()
                data = await source.read(65536)
                if not data:
                    break
                await self.flowing.wait()  # read just before the cut: held, as a router would
                sink.write(data)
                await sink.drain()
        finally:
            sink.close()

    def cut(self) -> None:
        self.flowing.clear()

    def restore(self) -> None:
        self.flowing.set()

    async def close(self) -> None:
        self.restore()
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks, return_exceptions=True)


def host_state(catalog: Catalog) -> str:
    [host] = catalog.hosts_report(now=time.time())
    return str(host["state"])


def host_reason(catalog: Catalog) -> str:
    [host] = catalog.hosts_report(now=time.time())
    return str(host["reason"])


def steps_done(progress: Path) -> int:
    try:
        return int(progress.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


async def blackholed_rounds(lab: Lab, home: Path, tmp_path: Path, rounds: int) -> None:
    code = tmp_path / "project"
    code.mkdir()
    (code / "job.py").write_text(JOB)
    progress, stop = tmp_path / "progress", tmp_path / "stop"
    config = code / "run.yaml"
    config.write_text(
        yaml.safe_dump({"name": "blackhole", "command": f"python3 job.py {progress} {stop}"})
    )
    proxy = Blackhole(lab.servers["gpu-01"].port)
    await proxy.start()
    # The engine reaches the host through the proxy, and knows its key under the proxy's port.
    with lab.known_hosts.open("a") as fh:
        fh.write(known_hosts_line(proxy.port, lab.servers["gpu-01"].host_pub) + "\n")
    inventory = load_inventory(lab.inventory_path)
    host = dataclasses.replace(inventory.host("gpu-01"), port=proxy.port)
    inventory = dataclasses.replace(inventory, hosts=(host,))
    timed_out = f"timeout: no SSH answer from 127.0.0.1:{proxy.port} within 10 s"
    try:
        with Catalog.open_home(home) as catalog:
            [run_id] = submit(catalog, home, prepare_runs(config, inventory))
            engine = Engine(inventory, catalog)
            async with running(engine.run):
                await wait_for(lambda: steps_done(progress) >= 5, 30)
                for _ in range(rounds):
                    await wait_for(lambda: host_state(catalog) == "healthy", 60)
                    cut_at = time.monotonic()
                    proxy.cut()
                    await wait_for(
                        lambda: host_state(catalog) == "disconnected", DISCONNECTED_WITHIN_S + 5
                    )
                    took_s = time.monotonic() - cut_at
                    assert took_s <= DISCONNECTED_WITHIN_S, f"disconnected after {took_s:.1f} s"
                    before = steps_done(progress)
                    # Reconnecting meets a link that accepts and then says nothing: a timeout.
                    await wait_for(lambda: host_reason(catalog).startswith(timed_out), 25)
                    assert steps_done(progress) > before  # the run goes on without us
                    assert catalog.get_run(run_id)["state"] == "running"
                    restored_at = time.monotonic()
                    proxy.restore()
                    await wait_for(lambda: host_state(catalog) == "healthy", 60)
                    back_s = time.monotonic() - restored_at
                    print(f"blackhole: disconnected after {took_s:.1f} s, healthy {back_s:.1f} s")
                stop.touch()
                await wait_for(lambda: catalog.get_run(run_id)["state"] == "succeeded", 60)
                await wait_for(
                    lambda: (
                        not engine.runs.pulls and catalog.get_run(run_id)["sync_status"] == "synced"
                    ),
                    60,
                )
            steps = steps_done(progress)
            output = (home / "runs" / run_id / ".cvtui" / "output.log").read_text()
            assert output == "".join(f"step {i}\n" for i in range(steps))  # each line once
            rows = sorted(
                (int(step), key, value)
                for step, key, path, value, _ in catalog.metric_rows(run_id)
                if path == "metrics.csv"
            )
            assert rows == [(i, "loss", round(1 / (i + 1), 6)) for i in range(steps)]
            events = [e["state"] for e in catalog.run_events(run_id)]
            assert events.count("running") == 1  # reconciled, never started again
            assert catalog_intact(catalog)
    finally:
        stop.touch()
        await proxy.close()


async def test_blackholed_link_short(lab_factory, home: Path, tmp_path: Path) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    await blackholed_rounds(lab, home, tmp_path, rounds=1)


@pytest.mark.faults
@pytest.mark.timeout(600)
async def test_blackholed_link_many_rounds(lab_factory, home: Path, tmp_path: Path) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    await blackholed_rounds(lab, home, tmp_path, rounds=5)
