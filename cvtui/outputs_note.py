"""What to tell a user whose ended run shows no outputs or no metrics: which globs matched
nothing, so a run that wrote outside its work dir (an absolute log_dir) is not silently empty."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cvtui.metrics_parse import metrics_kind
from cvtui.states import FINAL_STATES as FINAL
from remote_agent.protocol import OWN_FILES_PREFIX


def outputs_note(run: Mapping[str, Any], files: Sequence[Mapping[str, Any]]) -> str | None:
    """One line saying what an ended run did not produce, or None when there is nothing to say.

    files: the run's catalog file rows (each with a "path").
    """
    if run.get("state") not in FINAL or run.get("outputs_unmatched") is None:
        return None  # still running, or never listed (an old catalog): nothing known yet
    unmatched = [g for g in run["outputs_unmatched"] if not g.startswith(OWN_FILES_PREFIX)]
    outputs = [f["path"] for f in files if not f["path"].startswith(OWN_FILES_PREFIX)]
    globs = ", ".join(unmatched)
    short = str(run["id"])[:12]
    if not outputs:
        return (
            f"run {short} produced no output file: none of {globs or 'its output globs'} "
            "matched in its work dir; files written elsewhere (an absolute log_dir, say) are "
            "not synced"
        )
    if not any(metrics_kind(path) for path in outputs):
        return f"run {short} wrote no metric file (CSV or JSONL) among its outputs" + (
            f"; nothing matched {globs}" if globs else ""
        )
    if unmatched:
        return f"output globs of run {short} that matched nothing: {globs}"
    return None
