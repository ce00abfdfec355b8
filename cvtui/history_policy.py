"""Telemetry history policy: the tiers `policy.history` names and their rules.

Shared vocabulary of the inventory (which parses a lab's tiers) and the catalog (which keeps
history by them); neither imports the other for it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

DAY_S = 86400.0


class HistoryTier(NamedTuple):
    """Keep history at one resolution for a while; step 0 keeps every sample."""

    step_s: float
    keep_s: float


DEFAULT_HISTORY = (
    HistoryTier(0.0, 3600.0),  # every sample for an hour
    HistoryTier(10.0, DAY_S),  # 10 s buckets for a day
    HistoryTier(60.0, 30 * DAY_S),  # 1 min for 30 days
    HistoryTier(3600.0, 730 * DAY_S),  # 1 h for 2 years
)


def check_tiers(tiers: Sequence[tuple[float, float]]) -> str | None:
    """What is wrong with a tier list, or None: raw first, steps and retentions growing."""
    if not tiers:
        return "needs at least one tier"
    if tiers[0][0] != 0:
        return "the first tier must keep every sample (every: sample)"
    for (step, keep), (next_step, next_keep) in itertools.pairwise(tiers):
        if next_step <= step:
            return f"tier steps must grow: {next_step:g}s after {step:g}s"
        if next_keep <= keep:
            return f"a coarser tier must keep longer: {next_keep:g}s after {keep:g}s"
    for step, _ in tiers[1:]:
        if step < 1:
            return f"a tier step must be at least 1s, got {step:g}s"
    # Each tier is computed from the one before it, which is exact when buckets nest.
    for (step, _), (next_step, _) in itertools.pairwise(tiers[1:]):
        if next_step % step:
            return (
                f"each tier step must be a multiple of the one before: "
                f"{next_step:g}s after {step:g}s"
            )
    return None
