"""The words of a run's life, defined once: its states and the queue's priorities."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RUN_STATES = ("queued", "dispatching", "running", "succeeded", "failed", "cancelled", "lost")
ACTIVE_STATES = RUN_STATES[:3]  # the run still needs the engine
FINAL_STATES = RUN_STATES[3:]  # a run in one of these never changes again (but a correction)
PRIORITIES = ("urgent", "high", "normal", "low")  # a priority's rank is its index here
RETRIED_STATES = ("failed", "lost")  # an attempt that ends so is retried while `retries` allow
PREEMPTED_REASON = "cancelled by preemption"  # how a preempted run's reason begins


def preempted(reason: str | None) -> bool:
    """Whether a cancelled run's reason says it was preempted: it is retried (as a resume),
    not counted against its retries."""
    return (reason or "").startswith(PREEMPTED_REASON)


def retry_due(run: Mapping[str, Any]) -> bool:
    """Whether the engine queues another attempt of this ended run (a preempted run is
    retried only when it declared how to resume)."""
    if run.get("state") == "cancelled":
        return preempted(run.get("reason")) and bool((run.get("spec") or {}).get("resume"))
    attempt = int(run.get("attempt") or 1)
    retries = int(run.get("retries") or 0)
    return run.get("state") in RETRIED_STATES and attempt <= retries
