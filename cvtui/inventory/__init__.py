"""inventory.yaml: the lab's hosts and policy, read with file:line:column errors and watched live.

model: the frozen dataclasses; parser: the file's keys and rules; paths: which file is meant and
reading it; watch: live reload. Callers import from here.
"""

from cvtui.inventory.model import (
    DEFAULT_SIMULATED_MEMORY,
    FOREIGN_PROCESS_MODES,
    HOST_KEY_MODES,
    MAX_SIMULATED_GPUS,
    Host,
    Inventory,
    JumpHop,
    NotifyTarget,
    Policy,
    SimulateSpec,
    parse_jump,
    simulated_memory_for,
)
from cvtui.inventory.parser import parse_inventory
from cvtui.inventory.paths import default_inventory_path, load_inventory
from cvtui.inventory.watch import watch_inventory

__all__ = [
    "DEFAULT_SIMULATED_MEMORY",
    "FOREIGN_PROCESS_MODES",
    "HOST_KEY_MODES",
    "MAX_SIMULATED_GPUS",
    "Host",
    "Inventory",
    "JumpHop",
    "NotifyTarget",
    "Policy",
    "SimulateSpec",
    "default_inventory_path",
    "load_inventory",
    "parse_inventory",
    "parse_jump",
    "simulated_memory_for",
    "watch_inventory",
]
