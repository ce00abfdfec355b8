"""`cvtui daemon --metrics ADDR`: the engine's view of the lab at /metrics, for Prometheus.

Served by prometheus-client's own HTTP server thread; every scrape reads the catalog (the
engine's connection is thread-safe) and a few engine figures, so nothing is kept twice and
a scrape never waits on the event loop. The address is 127.0.0.1 unless one is named.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cvtui.catalog import HOST_STATES, RUN_STATES
from cvtui.errors import CvtuiError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from cvtui.engine.engine import Engine

log = logging.getLogger("cvtui.engine.prometheus")

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 9469
GPU_LABELS = ("host", "gpu", "model", "user", "run", "simulated")
_BRACKETED_RE = re.compile(r"\[([0-9A-Fa-f:.]+)\]:(\d+)")  # [IPv6]:PORT


class MetricsAddressError(CvtuiError):
    """--metrics got something that is not [ADDRESS:]PORT."""


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """ADDRESS:PORT, [IPv6]:PORT, :PORT or PORT; no address means 127.0.0.1."""
    text = text.strip()
    bracketed = _BRACKETED_RE.fullmatch(text)
    if bracketed:
        host, port_text = bracketed[1], bracketed[2]
    elif text.isdigit():
        host, port_text = "", text
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or ":" in host:
            host, port_text = "", ""
    port = int(port_text) if port_text.isdigit() else -1
    if not 0 < port < 65536:
        raise MetricsAddressError(
            f"--metrics: expected [ADDRESS:]PORT such as 127.0.0.1:{DEFAULT_PORT}, got {text!r}"
        )
    return ListenAddress(host or DEFAULT_ADDRESS, port)


def _label(value: Any) -> str:
    return "" if value is None else str(value)


class EngineCollector(Collector):
    """Reads the catalog and the engine at each scrape and yields gauge families."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        engine, catalog = self.engine, self.engine.catalog
        now = time.time()
        policy = engine.inventory.policy
        report = catalog.hosts_report(
            now=now,
            stale_after_s=policy.stale_after_s,
            disconnected_after_s=policy.disconnected_after_s,
        )
        families = {
            "util": GaugeMetricFamily(
                "cvtui_gpu_utilization_percent", "GPU utilisation (%).", labels=GPU_LABELS
            ),
            "mem": GaugeMetricFamily(
                "cvtui_gpu_memory_used_bytes", "GPU memory in use (bytes).", labels=GPU_LABELS
            ),
            "total": GaugeMetricFamily(
                "cvtui_gpu_memory_total_bytes", "GPU memory (bytes).", labels=GPU_LABELS
            ),
            "temp": GaugeMetricFamily(
                "cvtui_gpu_temperature_celsius", "GPU temperature (C).", labels=GPU_LABELS
            ),
            "power": GaugeMetricFamily(
                "cvtui_gpu_power_watts", "GPU power draw (W).", labels=GPU_LABELS
            ),
            "idle": GaugeMetricFamily(
                "cvtui_gpu_idle_held",
                "1 when the GPU is held (run or process) with memory but idle for a while.",
                labels=GPU_LABELS,
            ),
        }
        states = GaugeMetricFamily(
            "cvtui_host_state", "1 for the host's current state.", labels=("host", "state")
        )
        run_users = self._run_users(report)
        for host in report:
            for state in HOST_STATES:
                states.add_metric([host["name"], state], 1.0 if host["state"] == state else 0.0)
            if host["state"] not in ("healthy", "stale"):
                continue  # its last values would read as current
            simulated = "true" if host.get("backend") == "simulated" else "false"
            for gpu in host["gpus"]:
                user, run = _holder(gpu["processes"], run_users)
                labels = [host["name"], str(gpu["index"]), gpu["name"] or "", user, run, simulated]
                for key, value in (
                    ("util", gpu["util"]),
                    ("mem", gpu["mem_used"]),
                    ("total", gpu["mem_total"]),
                    ("temp", gpu["temperature"]),
                    ("power", gpu["power"]),
                    ("idle", 1.0 if gpu.get("idle_held") else 0.0),
                ):
                    if value is not None:
                        families[key].add_metric(labels, float(value))
        yield from families.values()
        yield states
        runs = GaugeMetricFamily("cvtui_runs", "Runs in the catalog by state.", labels=("state",))
        summary = catalog.runs_summary()
        for state in RUN_STATES:
            runs.add_metric([state], float(summary.get(state, 0)))
        yield runs
        queued, oldest = catalog.queue_figures(now)
        yield GaugeMetricFamily("cvtui_queue_length", "Runs waiting in the queue.", value=queued)
        yield GaugeMetricFamily(
            "cvtui_queue_oldest_wait_seconds",
            "How long the oldest queued run has waited.",
            value=oldest,
        )
        yield GaugeMetricFamily(
            "cvtui_sync_lag_seconds",
            "Age of the oldest change of a running run's outputs not yet synced locally.",
            value=catalog.sync_lag(now),
        )
        yield GaugeMetricFamily(
            "cvtui_engine_loop_lag_seconds",
            "How late the engine's event loop ran its last timer.",
            value=engine.loop_lag_s,
        )

    def _run_users(self, report: list[dict[str, Any]]) -> dict[str, str]:
        ids = {
            p["run_id"] for h in report for g in h["gpus"] for p in g["processes"] if p["run_id"]
        }
        runs = {run_id: self.engine.catalog.get_run(run_id) for run_id in ids}
        return {run_id: run.get("user") or "" for run_id, run in runs.items() if run}


def _holder(processes: list[dict[str, Any]], run_users: dict[str, str]) -> tuple[str, str]:
    """(user, run id) of the process with the most memory; a run's user is its submitter."""
    if not processes:
        return "", ""
    top = max(processes, key=lambda p: (p["run_id"] is not None, p["mem"] or 0))
    run = _label(top["run_id"])
    return run_users.get(run) or _label(top["user"]), run


class MetricsServer:
    """The /metrics endpoint of one engine; start() binds, stop() closes the socket."""

    def __init__(self, engine: Engine, address: ListenAddress) -> None:
        self.address = address
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(engine))
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(
                self.address.port, addr=self.address.host, registry=self.registry
            )
        except OSError as exc:
            raise MetricsAddressError(f"cannot serve metrics on {self.address}: {exc}") from exc
        log.info("metrics at http://%s/metrics", self.address, extra={"event": "metrics"})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
