"""The commented inventory.yaml shipped at the top of the repo parses as documented."""

from __future__ import annotations

from pathlib import Path

from cvtui.inventory import load_inventory

EXAMPLE = Path(__file__).resolve().parent.parent / "inventory.yaml"


def test_example_inventory_parses() -> None:
    inventory = load_inventory(EXAMPLE)
    assert inventory.names() == ["gpu-01", "gpu-02"]
    assert inventory.host("gpu-02").tags == ("3090",)
    assert inventory.policy.host_keys == "strict"
