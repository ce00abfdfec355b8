"""What the CLI and the TUI do to runs (resolve, submit, cancel, reprioritise), written once.

Everything here writes through Catalog methods; the engine (in this process or a daemon) picks
the results up from the catalog. No click, no textual: both front ends import this.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.errors import CvtuiError
from cvtui.states import ACTIVE_STATES, PRIORITIES

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.inventory import Inventory
    from cvtui.runspec import RunSpec

ACTIVE = ACTIVE_STATES
PRIORITY_ORDER = PRIORITIES  # the catalog's ranks 0..3
DEFAULT_GRACE_S = 10.0  # SIGTERM to SIGKILL


def resolve_run(catalog: Catalog, ref: str) -> dict[str, Any]:
    """The one run a user's reference (id, id prefix or name) names, or a CvtuiError."""
    return catalog.resolve_run(ref)


@dataclass(frozen=True)
class CancelOutcome:
    """What cancelling one run did: ended it in the catalog, asked the engine, or nothing."""

    run_id: str
    name: str
    outcome: str  # "cancelled (was queued)", "already succeeded", "cancel requested"
    command_id: int | None = None  # the engine command, when the run was on a host


def cancel_runs(
    catalog: Catalog,
    runs: Iterable[dict[str, Any]],
    *,
    by: str,
    grace_s: float = DEFAULT_GRACE_S,
    now: float | None = None,
) -> list[CancelOutcome]:
    """Cancel runs: queued ones leave the queue at once (all in one transaction; an engine
    logs them at its next pass), placed ones get an engine command.

    The engine sends SIGTERM to the run's process group, SIGKILL after ``grace_s``. A run
    listed twice is cancelled once.
    """
    unique = {r["id"]: r for r in runs}
    # A queued run with a host is held in that host's own queue (a pending Slurm job): the
    # engine cancels it there. The others leave the queue here, all in one transaction.
    queued = [
        run_id for run_id, run in unique.items() if run["state"] == "queued" and not run["host"]
    ]
    dequeued = set(
        catalog.cancel_queued(queued, detail=f"by {by}", ended=time.time() if now is None else now)
    )
    outcomes = []
    for run in unique.values():
        if run["id"] in dequeued:
            outcomes.append(CancelOutcome(run["id"], run["name"], "cancelled (was queued)"))
            continue
        if run["state"] not in ACTIVE:
            outcomes.append(CancelOutcome(run["id"], run["name"], f"already {run['state']}"))
            continue
        command_id = catalog.submit_command(
            "cancel", {"run_id": run["id"], "grace": grace_s, "by": by}, now=now
        )
        outcomes.append(CancelOutcome(run["id"], run["name"], "cancel requested", command_id))
    return outcomes


def set_priority(catalog: Catalog, run_id: str, priority: str) -> None:
    """Give a queued run a new priority; a CvtuiError when it is not queued any more."""
    if priority not in PRIORITY_ORDER:
        raise CvtuiError(f"unknown priority {priority!r}; use one of {', '.join(PRIORITY_ORDER)}")
    if not catalog.set_run_priority(run_id, priority):
        run = catalog.get_run(run_id)
        state = "gone from the catalog" if run is None else f"{run['state']}, not queued"
        raise CvtuiError(f"run {run_id[:12]} is {state}: its priority cannot change")


def shift_priority(catalog: Catalog, run_id: str, steps: int) -> str:
    """Move a queued run ``steps`` priorities up (positive) or down; return the new one.

    The ends stay put: raising an urgent run keeps it urgent.
    """
    run = catalog.get_run(run_id)
    if run is None:
        raise CvtuiError(f"run {run_id[:12]} is gone from the catalog")
    rank = PRIORITY_ORDER.index(run["priority"])
    new = PRIORITY_ORDER[max(0, min(len(PRIORITY_ORDER) - 1, rank - steps))]
    if new != run["priority"] or run["state"] != "queued":
        set_priority(catalog, run_id, new)
    return new


@dataclass(frozen=True)
class Submission:
    """A config expanded into runs, with the `--dry-run` text that shows what would happen."""

    config: Path
    specs: tuple[RunSpec, ...]
    dry_run: str


def plan_submission(
    catalog: Catalog,
    inventory: Inventory,
    config: str | Path,
    *,
    overrides: Sequence[str] = (),
    gpus: int | None = None,
    priority: str | None = None,
    hosts: Sequence[str] = (),
) -> Submission:
    """Expand ``config`` as `cvtui run` would and describe it; nothing is queued yet."""
    from cvtui.dry_run import describe_dry_run, plan_dry_run
    from cvtui.submit import prepare_runs

    path = Path(config).expanduser()
    if not path.is_file():
        raise CvtuiError(f"no run config at {path}")
    specs = prepare_runs(
        path, inventory, overrides=overrides, gpus=gpus, priority=priority, hosts=hosts
    )
    if not specs:
        raise CvtuiError(f"{path} expands to no runs")
    plan = plan_dry_run(specs, inventory, catalog)
    return Submission(path, tuple(specs), describe_dry_run(plan))


def submit_runs(catalog: Catalog, home: Path, submission: Submission) -> list[str]:
    """Queue a planned submission (code snapshots saved under home); return the run ids."""
    from cvtui.submit import submit

    return submit(catalog, home, submission.specs)
