"""The words of a run's life, defined once: its states and the queue's priorities."""

from __future__ import annotations

RUN_STATES = ("queued", "dispatching", "running", "succeeded", "failed", "cancelled", "lost")
ACTIVE_STATES = RUN_STATES[:3]  # the run still needs the engine
FINAL_STATES = RUN_STATES[3:]  # a run in one of these never changes again (but a correction)
PRIORITIES = ("urgent", "high", "normal", "low")  # a priority's rank is its index here
