"""Catalog writes and reads on real SQLite files: hosts, telemetry, reports, two connections."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cvtui.catalog import HOST_STATES, Catalog, CatalogError
from remote_agent.protocol import GpuProcess, Hello

from .samples import GIB, InventoryHost, gpu, telemetry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_is_0700_and_files_0600_even_with_an_open_umask(tmp_path: Path) -> None:
    home = tmp_path / "data" / "cvtui"
    old_umask = os.umask(0)
    try:
        with Catalog.open_home(home) as cat:
            cat.sync_hosts([InventoryHost("a")])  # a write, so the -wal file exists
            assert cat.path == home / "catalog.db"
            assert mode(home) == 0o700
            for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm"):
                assert mode(home / name) == 0o600, name
    finally:
        os.umask(old_umask)


def test_reopening_tightens_loose_wal_and_shm_files(catalog_path: Path) -> None:
    with Catalog(catalog_path) as writer:
        writer.sync_hosts([InventoryHost("a")])
        wal, shm = Path(f"{catalog_path}-wal"), Path(f"{catalog_path}-shm")
        wal.chmod(0o644)
        shm.chmod(0o666)
        with Catalog(catalog_path):
            assert (mode(wal), mode(shm)) == (0o600, 0o600)


def test_open_home_on_a_file_is_a_catalog_error(tmp_path: Path) -> None:
    (tmp_path / "home").write_text("")
    with pytest.raises(CatalogError, match="not a directory"):
        Catalog.open_home(tmp_path / "home")


def test_wal_busy_timeout_and_synchronous(catalog: Catalog) -> None:
    conn = catalog.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (5000,)
    assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL


def test_sync_hosts_adds_updates_and_removes_with_their_rows(catalog: Catalog) -> None:
    catalog.sync_hosts(
        [InventoryHost("a", tags=("a100", "big")), InventoryHost("b"), InventoryHost("c")]
    )
    catalog.record_telemetry(
        [("a", telemetry()), ("b", telemetry()), ("c", telemetry())], received=100.0
    )
    catalog.record_telemetry([("b", telemetry(1001.0))], received=101.0)
    catalog.sync_hosts([InventoryHost("a", tags=("a100", "big")), InventoryHost("c", port=2222)])

    def hosts_in(table: str, column: str = "host") -> set[str]:
        return {r[0] for r in catalog.db.execute(f"SELECT DISTINCT {column} FROM {table}")}

    assert hosts_in("hosts", "name") == {"a", "c"}
    for table in ("gpus", "telemetry_raw"):
        assert hosts_in(table) == {"a", "c"}, table
    row = catalog.db.table("hosts").get("c")
    # The inventory fields follow the file; what the engine learned is kept.
    assert (row["port"], row["state"], row["last_seen"]) == (2222, "healthy", 100.0)
    assert json.loads(catalog.db.table("hosts").get("a")["tags"]) == ["a100", "big"]
    catalog.sync_hosts([InventoryHost("d")])
    assert catalog.db.table("hosts").get("d")["state"] == "connecting"
    assert hosts_in("hosts", "name") == {"d"}
    assert catalog.db.execute("SELECT count(*) FROM telemetry_raw").fetchone() == (0,)


def test_removing_a_host_drops_its_processes(catalog: Catalog) -> None:
    proc = GpuProcess(pid=7, user="u", command="python", container=None, mem=GIB, run_id=None)
    catalog.sync_hosts([InventoryHost("a"), InventoryHost("b")])
    sample = telemetry(gpus=(gpu(0, processes=(proc,)),))
    catalog.record_telemetry([("a", sample), ("b", sample)], received=5.0)
    catalog.sync_hosts([InventoryHost("a")])
    assert [r["host"] for r in catalog.db.table("gpu_processes").rows] == ["a"]


def test_record_telemetry_then_hosts_report_is_the_documented_shape(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("gpu-01", tags=("a100",))])
    ours = GpuProcess(
        pid=4242,
        user="alice",
        command="python train.py --lr 0.1",
        container=None,
        mem=30 * GIB,
        run_id="01J9ZK3Q8V5W0000000000",
    )
    foreign = GpuProcess(
        pid=99, user=None, command="", container="3f2a9c1b7e", mem=None, run_id=None
    )
    sample = telemetry(
        agent_time=5.0,  # the agent's clock is far off: the report uses the controller's
        gpus=(
            gpu(0, util=97.5, mem_used=31 * GIB, processes=(ours, foreign)),
            gpu(1, util=None, mem_used=None),
        ),
    )
    catalog.record_telemetry([("gpu-01", sample)], received=1_700_000_000.25)

    assert catalog.hosts_report(now=1_700_000_001.0) == [
        {
            "name": "gpu-01",
            "state": "healthy",
            "reason": None,
            "drained": False,
            "backend": "simulated",
            "last_seen": 1_700_000_000.25,
            "cpu_percent": 12.5,
            "mem_used": 64 * GIB,
            "mem_total": 512 * GIB,
            "disk_free": 2_000 * GIB,
            "gpus": [
                {
                    "index": 0,
                    "uuid": "GPU-00000000",
                    "pci_bus_id": None,
                    "name": "A100-SXM4-80GB",
                    "util": 97.5,
                    "mem_used": 31 * GIB,
                    "mem_total": 80 * GIB,
                    "temperature": 40.0,
                    "power": 100.0,
                    "processes": [
                        {
                            "pid": 4242,
                            "user": "alice",
                            "command": "python train.py --lr 0.1",
                            "container": None,
                            "mem": 30 * GIB,
                            "run_id": "01J9ZK3Q8V5W0000000000",
                        },
                        {
                            "pid": 99,
                            "user": None,
                            "command": "",
                            "container": "3f2a9c1b7e",
                            "mem": None,
                            "run_id": None,
                        },
                    ],
                    "leased_by": None,
                    "idle_held": False,
                    "idle_since": None,
                },
                {
                    "index": 1,
                    "uuid": "GPU-00000001",
                    "pci_bus_id": None,
                    "name": "A100-SXM4-80GB",
                    "util": None,
                    "mem_used": None,
                    "mem_total": 80 * GIB,
                    "temperature": 41.0,
                    "power": 101.0,
                    "processes": [],
                    "leased_by": None,
                    "idle_held": False,
                    "idle_since": None,
                },
            ],
        }
    ]
    host = catalog.db.table("hosts").get("gpu-01")
    assert (host["load1"], host["disk_total"]) == (1.5, 4_000 * GIB)
    gpu_row = catalog.db.table("gpus").get(("gpu-01", 0))
    assert (gpu_row["power_limit"], gpu_row["fan"], gpu_row["backend"]) == (
        400.0,
        None,
        "simulated",
    )


def test_hosts_report_orders_by_name_and_filters_by_names(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost(n) for n in ("c", "a", "b")])
    catalog.record_telemetry([("b", telemetry(gpu_count=3))], received=10.0)
    report = catalog.hosts_report(now=11.0)
    assert [(h["name"], h["state"], len(h["gpus"])) for h in report] == [
        ("a", "connecting", 0),
        ("b", "healthy", 3),
        ("c", "connecting", 0),
    ]
    assert [h["name"] for h in catalog.hosts_report(now=11.0, names=["c", "b", "zz"])] == [
        "b",
        "c",
    ]
    assert catalog.hosts_report(names=[]) == []
    [only_b] = catalog.hosts_report(now=11.0, names=["b"])
    assert [g["index"] for g in only_b["gpus"]] == [0, 1, 2]


@pytest.mark.parametrize(
    ("now", "state", "reason"),
    [
        (1_003.0, "healthy", None),
        (1_005.0, "healthy", None),  # exactly stale_after_s is not yet older than it
        (1_006.5, "stale", "no telemetry for 6 s"),
        (1_030.0, "stale", "no telemetry for 30 s"),
        (1_031.0, "disconnected", "no telemetry for 31 s"),
    ],
)
def test_a_healthy_host_reads_stale_then_disconnected(
    catalog: Catalog, now: float, state: str, reason: str | None
) -> None:
    catalog.sync_hosts([InventoryHost("a")])
    catalog.record_telemetry([("a", telemetry())], received=1_000.0)
    [host] = catalog.hosts_report(now=now)
    assert (host["state"], host["reason"]) == (state, reason)
    assert catalog.db.table("hosts").get("a")["state"] == "healthy"  # derived, not stored


def test_thresholds_are_the_callers_and_other_states_are_returned_as_stored(
    catalog: Catalog,
) -> None:
    catalog.sync_hosts([InventoryHost("a"), InventoryHost("b")])
    catalog.record_telemetry([("a", telemetry()), ("b", telemetry())], received=1_000.0)
    catalog.set_host_state("b", "error", "host key changed: run `cvtui trust b`", now=1_001.0)
    report = catalog.hosts_report(now=1_003.0, stale_after_s=1.0, disconnected_after_s=2.0)
    assert [(h["state"], h["reason"]) for h in report] == [
        ("disconnected", "no telemetry for 3 s"),
        ("error", "host key changed: run `cvtui trust b`"),
    ]
    # Fresh telemetry clears an error: the host answers again.
    catalog.record_telemetry([("b", telemetry())], received=1_004.0)
    assert catalog.hosts_report(now=1_004.0, names=["b"])[0]["state"] == "healthy"


def test_set_host_state_checks_the_state_and_ignores_unknown_hosts(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a")])
    with pytest.raises(ValueError, match="unknown host state 'sleepy'"):
        catalog.set_host_state("a", "sleepy")
    for state in HOST_STATES:
        catalog.set_host_state("a", state, f"because {state}", now=3.0)
        row = catalog.db.table("hosts").get("a")
        assert (row["state"], row["reason"], row["updated"]) == (state, f"because {state}", 3.0)
    catalog.set_host_state("ghost", "healthy")
    assert catalog.db.table("hosts").count == 1


def test_record_hello_stores_what_the_agent_said(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a")])
    hello = Hello(
        protocol=1,
        python="3.8.10",
        hostname="gpu-01.lab",
        user="researcher",
        pid=321,
        backend="nvml",
        gpu_count=8,
    )
    catalog.record_hello("a", hello, "3f9ab0c1d2e4f5a6b7c8d9e0f1a2b3c4", now=77.0)
    row = catalog.db.table("hosts").get("a")
    assert {
        k: row[k]
        for k in ("backend", "hostname", "python", "gpu_count", "agent_hash", "connected_at")
    } == {
        "backend": "nvml",
        "hostname": "gpu-01.lab",
        "python": "3.8.10",
        "gpu_count": 8,
        "agent_hash": "3f9ab0c1d2e4f5a6b7c8d9e0f1a2b3c4",
        "connected_at": 77.0,
    }


def test_processes_and_vanished_gpus_are_replaced_not_accumulated(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a")])

    def proc(pid: int) -> GpuProcess:
        return GpuProcess(
            pid=pid, user="u", command=f"job {pid}", container=None, mem=GIB, run_id=None
        )

    first = telemetry(gpus=(gpu(0, processes=(proc(1), proc(2))), gpu(1, processes=(proc(3),))))
    second = telemetry(1001.0, gpus=(gpu(0, processes=(proc(4),)),))  # GPU 1 fell off the bus
    catalog.record_telemetry([("a", first)], received=1.0)
    catalog.record_telemetry([("a", second)], received=2.0)
    [host] = catalog.hosts_report(now=2.0)
    assert [(g["index"], [p["pid"] for p in g["processes"]]) for g in host["gpus"]] == [(0, [4])]
    assert catalog.db.table("gpu_processes").count == 1
    assert catalog.db.table("gpus").count == 1


def test_telemetry_for_a_host_not_in_the_catalog_is_skipped(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a")])
    catalog.record_telemetry([("ghost", telemetry()), ("a", telemetry())], received=1.0)
    for table in ("gpus", "telemetry_raw"):
        assert {r["host"] for r in catalog.db.table(table).rows} == {"a"}
    assert catalog.db.table("hosts").count == 1


def test_history_rows_per_gpu_and_host_on_the_controller_clock(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a")])
    # Two samples of one host in one batch: the newest gets `received`, the older keeps
    # its distance on the agent's clock; current tables show the newest.
    older = telemetry(500.0, gpus=(gpu(0, util=10.0, mem_used=GIB),), cpu_percent=5.0)
    newer = telemetry(501.0, gpus=(gpu(0, util=20.0, mem_used=2 * GIB),), cpu_percent=6.0)
    catalog.record_telemetry([("a", newer), ("a", older)], received=2_000.0)
    assert catalog.telemetry_history("a", 0, since=0.0) == [
        (1_999.0, 10.0, GIB),
        (2_000.0, 20.0, 2 * GIB),
    ]
    assert catalog.telemetry_history("a", -1, since=1_999.5) == [(2_000.0, 6.0, 64 * GIB)]
    assert catalog.telemetry_history("a", 1, since=0.0) == []
    assert catalog.hosts_report(now=2_000.0)[0]["gpus"][0]["util"] == 20.0


def test_a_reader_sees_the_writers_commits_and_data_version(catalog_path: Path) -> None:
    with Catalog(catalog_path) as writer, Catalog(catalog_path) as reader:
        writer.sync_hosts([InventoryHost("a")])
        seen = reader.data_version()
        own = writer.data_version()
        assert reader.data_version() == seen  # nothing new: polling is stable
        writer.record_telemetry([("a", telemetry())], received=50.0)
        assert reader.data_version() != seen
        assert writer.data_version() == own  # only other connections' commits count
        assert reader.hosts_report(now=50.0)[0]["state"] == "healthy"


def test_a_reader_sees_a_writer_in_another_process(catalog_path: Path) -> None:
    with Catalog(catalog_path) as reader:
        seen = reader.data_version()
        # The writer gets its sample in wire form, as the engine does from an agent.
        script = (
            "import json, sys, types\n"
            "from cvtui.catalog import Catalog\n"
            "from remote_agent.protocol import Telemetry\n"
            "sample = Telemetry.from_wire(json.loads(sys.argv[2]))\n"
            "host = types.SimpleNamespace(name='far', address='10.0.0.9', port=22, user=None,"
            " tags=[])\n"
            "with Catalog(sys.argv[1]) as cat:\n"
            "    cat.sync_hosts([host])\n"
            "    cat.record_telemetry([('far', sample)], received=9.0)\n"
        )
        wire = json.dumps(telemetry(gpu_count=4).to_wire())
        subprocess.run([sys.executable, "-c", script, str(catalog_path), wire], check=True)
        assert reader.data_version() != seen
        [host] = reader.hosts_report(now=10.0)
        assert (host["name"], host["state"], len(host["gpus"])) == ("far", "healthy", 4)


def test_one_catalog_shared_by_a_writer_thread_and_a_reader(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a"), InventoryHost("b")])
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for n in range(100):
                catalog.record_telemetry([("a", telemetry()), ("b", telemetry())], received=n)
        except BaseException as exc:  # handed to the main thread's assert
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    while writer.is_alive():
        report = catalog.hosts_report(now=0.0)
        # Each report is one snapshot: both hosts come from the same committed batch.
        assert report[0]["last_seen"] == report[1]["last_seen"]
    writer.join()
    assert errors == []
    assert catalog.telemetry_history("a", 0, since=0.0)[-1][0] == 99.0
