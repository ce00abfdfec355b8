"""Which inventory file is meant (--inventory, $CVTUI_INVENTORY, ., config dir), and reading it."""

from __future__ import annotations

import os
import pathlib

from cvtui.errors import InventoryError
from cvtui.inventory.model import Inventory
from cvtui.inventory.parser import parse_inventory


def read_inventory_bytes(path: str) -> bytes:
    """The file's bytes; every way reading it can fail is an InventoryError."""
    try:
        return pathlib.Path(path).read_bytes()
    except FileNotFoundError as exc:
        problem = "no such file (write one, or name another with --inventory or $CVTUI_INVENTORY)"
        raise InventoryError(path, None, None, problem) from exc
    except IsADirectoryError as exc:
        raise InventoryError(path, None, None, "is a directory, not an inventory file") from exc
    except OSError as exc:
        raise InventoryError(path, None, None, f"cannot read: {exc.strerror}") from exc


def decode_inventory(data: bytes, path: str) -> Inventory:
    try:
        text = data.decode("utf-8-sig")  # Windows editors may add a BOM
    except UnicodeDecodeError as exc:
        raise InventoryError(path, None, None, f"not UTF-8 text (byte {exc.start})") from exc
    return parse_inventory(text, path)


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """The inventory in the file at path (~ expanded, also in the errors and Inventory.path)."""
    expanded = str(pathlib.Path(path).expanduser())
    return decode_inventory(read_inventory_bytes(expanded), expanded)


def default_inventory_path(explicit: str | None = None) -> pathlib.Path:
    """explicit (--inventory), else $CVTUI_INVENTORY, else ./inventory.yaml if it exists, else
    the user config dir's: the more deliberate choice wins, as with KUBECONFIG."""
    if explicit:
        return pathlib.Path(explicit).expanduser()
    from_env = os.environ.get("CVTUI_INVENTORY")
    if from_env:
        return pathlib.Path(from_env).expanduser()
    local = pathlib.Path.cwd() / "inventory.yaml"
    if local.is_file():
        return local
    import platformdirs

    return pathlib.Path(platformdirs.user_config_dir("cvtui")) / "inventory.yaml"
