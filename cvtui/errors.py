"""One error hierarchy: every expected failure carries a message fit to print on one line."""

from __future__ import annotations


class CvtuiError(Exception):
    """An expected failure; the CLI prints ``str(err)`` and exits with ``exit_code``."""

    exit_code = 1


class InventoryError(CvtuiError):
    """A problem in inventory.yaml, located as ``path:line:column: problem``."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, column: int | None, problem: str) -> None:
        self.path = path
        self.line = line  # 1-based, None when the whole file is at fault
        self.column = column  # 1-based
        self.problem = problem
        where = path if line is None else f"{path}:{line}:{column or 1}"
        super().__init__(f"{where}: {problem}")


class InventoryErrors(InventoryError):
    """Every problem found in one inventory file, in file order; located like the first."""

    def __init__(self, errors: list[InventoryError]) -> None:
        first = errors[0]
        super().__init__(first.path, first.line, first.column, first.problem)
        self.errors = errors
        lines = "".join(f"\n  {error}" for error in errors)
        self.args = (f"{first.path}: {len(errors)} errors, in file order:{lines}",)

    @staticmethod
    def of(errors: list[InventoryError]) -> InventoryError:
        """The one error itself, or all of them sorted by line and column."""
        if len(errors) == 1:
            return errors[0]
        return InventoryErrors(sorted(errors, key=lambda e: (e.line or 0, e.column or 0)))


class UnknownHostError(CvtuiError):
    """A host name that the inventory does not list."""

    exit_code = 2

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown host {name!r} (inventory hosts: {listing})")


class HostError(CvtuiError):
    """A host that could not be reached or used; ``reason`` is its catalog state reason."""

    exit_code = 3

    def __init__(self, host: str, reason: str) -> None:
        self.host = host
        self.reason = reason
        super().__init__(f"{host}: {reason}")


class EngineLockedError(CvtuiError):
    """Another engine already owns this catalog."""

    def __init__(self, lock_path: str, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"an engine ({who}) already holds {lock_path}")


class ConfigError(InventoryError):
    """A problem in a run config YAML or a --set override, located as ``path:line:column: problem``.

    It is an InventoryError so the run config parser can reuse the inventory's YAML node walker;
    ``path`` is the config file, or the option (``--set``, ``--gpus``, ...) at fault.
    """

    exit_code = 2
