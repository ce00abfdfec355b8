"""The metrics endpoint's pieces: addresses, what a scrape yields, and the shipped dashboard."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from catalog.samples import GIB, InventoryHost, gpu, telemetry

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.engine.prometheus import (
    ListenAddress,
    MetricsAddressError,
    MetricsServer,
    parse_listen,
)
from cvtui.inventory import load_inventory
from cvtui.lab import free_port
from remote_agent.protocol import GpuProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9469", ListenAddress("127.0.0.1", 9469)),
        ("9469", ListenAddress("127.0.0.1", 9469)),
        (":9469", ListenAddress("127.0.0.1", 9469)),
        ("0.0.0.0:9100", ListenAddress("0.0.0.0", 9100)),
        ("[::1]:9469", ListenAddress("::1", 9469)),
        ("metrics.lab:9469", ListenAddress("metrics.lab", 9469)),
    ],
)
def test_listen_addresses_default_to_localhost(text: str, expected: ListenAddress) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "127.0.0.1:", "127.0.0.1:0", "1:2:3", "99999"])
def test_malformed_listen_addresses_say_what_is_expected(text: str) -> None:
    with pytest.raises(MetricsAddressError, match=r"expected \[ADDRESS:\]PORT"):
        parse_listen(text)


def engine_with_a_host(tmp_path: Path) -> Engine:
    inventory_path = tmp_path / "inventory.yaml"
    inventory_path.write_text("hosts:\n  gpu-01: {address: 127.0.0.1, simulate: {gpus: 2}}\n")
    catalog = Catalog(tmp_path / "catalog.db")
    catalog.sync_hosts([InventoryHost("gpu-01")])
    proc = GpuProcess(7, "bob", "jupyter", None, 3 * GIB, None)
    sample = telemetry(gpus=(gpu(0, util=42.0), gpu(1, processes=(proc,))))
    catalog.record_telemetry([("gpu-01", sample)])
    return Engine(load_inventory(inventory_path), catalog)


def test_a_scrape_serves_every_gpu_with_labels_and_the_engine_figures(tmp_path: Path) -> None:
    engine = engine_with_a_host(tmp_path)
    server = MetricsServer(engine, ListenAddress("127.0.0.1", free_port()))
    server.start()
    try:
        url = f"http://127.0.0.1:{server.address.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    finally:
        server.stop()
        engine.catalog.close()
    assert (
        'cvtui_gpu_utilization_percent{gpu="0",host="gpu-01",model="A100-SXM4-80GB",'
        'run="",simulated="true",user=""} 42.0' in text
    )
    assert 'gpu="1",host="gpu-01",model="A100-SXM4-80GB",run="",simulated="true",user="bob"' in text
    assert 'cvtui_host_state{host="gpu-01",state="healthy"} 1.0' in text
    assert 'cvtui_runs{state="queued"} 0.0' in text
    for name in ("queue_length", "queue_oldest_wait_seconds", "sync_lag_seconds"):
        assert f"cvtui_{name} 0.0" in text
    assert "cvtui_engine_loop_lag_seconds" in text


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    engine = engine_with_a_host(tmp_path)
    first = MetricsServer(engine, ListenAddress("127.0.0.1", free_port()))
    first.start()
    try:
        with pytest.raises(MetricsAddressError, match=r"cannot serve metrics on 127\.0\.0\.1:"):
            MetricsServer(engine, first.address).start()
    finally:
        first.stop()
        engine.catalog.close()


def test_the_grafana_dashboard_uses_only_served_metrics() -> None:
    dashboard = json.loads((ROOT / "contrib" / "grafana" / "cvtui-dashboard.json").read_text())
    served = set(re.findall(r"`(cvtui_\w+)`", (ROOT / "docs" / "prometheus.md").read_text()))
    source = (ROOT / "cvtui" / "engine" / "prometheus.py").read_text()
    assert served and all(f'"{name}"' in source for name in served)
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"cvtui_\w+", target["expr"])
    }
    assert used and used <= served
