"""Disk usage scans in the catalog: newer scans replace older, per host and path; sums per user."""

from __future__ import annotations

from cvtui.catalog import Catalog
from remote_agent.disk_usage import DirUsage, PathUsage

from .samples import InventoryHost

GIB = 1 << 30


def scan(path: str, at: float, *entries: DirUsage, partial: bool = False) -> PathUsage:
    return PathUsage(path, at, entries, partial)


def test_latest_scan_per_host_and_path_and_sums_per_user(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a"), InventoryHost("b")])
    home_a = scan(
        "/home",
        100.0,
        DirUsage("alice", 1000, "alice", 3 * GIB, 10, 99.0),
        DirUsage("bob", 1001, "1001", GIB, 2, 98.0, True, "permission denied: /home/bob/x"),
        partial=True,
    )
    assert catalog.record_disk_usage("a", [home_a], ["/home", "/data"]) == 1
    data_b = scan("/data", 50.0, DirUsage("alice", 1000, "alice", 2 * GIB, 5, 50.0))
    assert catalog.record_disk_usage("b", [data_b], ["/data"]) == 1
    assert catalog.record_disk_usage("b", [data_b], ["/data"]) == 0  # the same scan again

    by_host = catalog.disk_usage_by_host()
    (home,) = by_host["a"]
    assert (home["path"], home["scanned_at"], home["partial"]) == ("/home", 100.0, True)
    assert [e["entry"] for e in home["entries"]] == ["alice", "bob"]  # biggest first
    assert home["entries"][1]["reason"] == "permission denied: /home/bob/x"
    assert catalog.disk_usage_by_host(["b"]).keys() == {"b"}

    users = catalog.disk_usage_by_user()
    assert [(u["user"], u["bytes"], u["files"], u["hosts"], u["partial"]) for u in users] == [
        ("alice", 5 * GIB, 15, 2, False),
        ("1001", GIB, 2, 1, True),
    ]
    assert [u["bytes"] for u in catalog.disk_usage_by_user(["a"])] == [3 * GIB, GIB]

    # A newer scan replaces the path's rows whole: bob's dir is gone.
    newer = scan("/home", 200.0, DirUsage("alice", 1000, "alice", 4 * GIB, 11, 200.0))
    catalog.record_disk_usage("a", [newer], ["/home"])
    assert [e["bytes"] for e in catalog.disk_usage_by_host()["a"][0]["entries"]] == [4 * GIB]
    # An older one (another engine's late answer) does not.
    catalog.record_disk_usage("a", [home_a], ["/home"])
    assert catalog.disk_usage_by_host()["a"][0]["scanned_at"] == 200.0

    # A path no longer configured, and a host no longer in the inventory, are forgotten.
    catalog.record_disk_usage("b", [], [])
    assert "b" not in catalog.disk_usage_by_host()
    catalog.sync_hosts([InventoryHost("b")])
    assert catalog.disk_usage_by_host() == {} and catalog.disk_usage_by_user() == []
