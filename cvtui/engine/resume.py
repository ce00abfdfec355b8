"""Retries that resume: the newest synced and verified checkpoint of the attempts before a run,
pinned to the content store, is staged into the retry's work dir and named in its command."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.catalog.run_inputs import RunInput
from cvtui.repro.blobstore import BlobStore
from cvtui.run_inputs import RESUME_INPUT, RUN_PREFIX, Resume
from remote_agent.outputs import matches

if TYPE_CHECKING:
    from cvtui.catalog import Catalog

log = logging.getLogger("cvtui.engine.resume")

# A retry waits in the queue at most this long for the final sync of the attempt before it
# (which brings its last checkpoints); a host that went away never finishes that sync.
SYNC_WAIT_S = 120.0


@dataclass(frozen=True)
class Checkpoint:
    """A synced checkpoint of an earlier attempt."""

    run_id: str
    attempt: int
    path: str  # relative to the work dir, as synced
    mtime: float  # host clock, unix seconds
    size: int  # bytes


def candidates(catalog: Catalog, attempt: Mapping[str, Any], glob: str) -> list[Checkpoint]:
    """An attempt's checkpoints that were synced and verified (a whole-file digest recorded),
    newest first."""
    found = [
        Checkpoint(
            attempt["id"],
            int(attempt["attempt"] or 1),
            row["path"],
            float(row["mtime"] or 0.0),
            int(row["synced_size"] or 0),
        )
        for row in catalog.files_of(attempt["id"])
        if row["sync_status"] == "synced" and row["hash"] and matches(row["path"], [glob])
    ]
    return sorted(found, key=lambda c: (c.mtime, c.path), reverse=True)


def pin_checkpoint(
    catalog: Catalog, home: Path, run_id: str, attempts: Sequence[Mapping[str, Any]], glob: str
) -> tuple[RunInput | None, str]:
    """The newest checkpoint of the attempts before run_id (later attempts first, since they
    went further), copied into the content store and recorded as the run's `resume` input;
    and what happened, in words, for the run's events. Reads and hashes: call in a thread."""
    from cvtui.repro.models import ModelError, synced_copy

    blobs = BlobStore.in_home(home)
    earlier = [a for a in attempts if a["id"] != run_id]
    for attempt in reversed(earlier):
        for checkpoint in candidates(catalog, attempt, glob):
            try:
                local, before = synced_copy(catalog, home, dict(attempt), checkpoint.path)
                hash_, size = blobs.store_file(local)
            except (ModelError, OSError) as exc:
                log.info("run %s: checkpoint %s skipped: %s", run_id, checkpoint.path, exc)
                continue
            if size != before.st_size:
                continue  # rewritten under us: a copy of another one follows
            pinned = RunInput(
                run_id=run_id,
                name=RESUME_INPUT,
                kind=RESUME_INPUT,
                source=f"{RUN_PREFIX}{checkpoint.run_id}:{checkpoint.path}",
                path=checkpoint.path,
                hash=hash_,
                size=size,
            )
            catalog.record_run_inputs([pinned])
            said = (
                f"resumes from {checkpoint.path} of attempt {checkpoint.attempt} "
                f"({checkpoint.run_id}), {size} bytes, blob {hash_}"
            )
            return pinned, said
    tried = len(earlier)
    return None, (
        f"no synced checkpoint matches {glob} in the {tried} attempt(s) before: "
        "starts from the beginning"
    )


def resume_of(spec: Mapping[str, Any] | None) -> Resume | None:
    return Resume.from_json((spec or {}).get("resume"))
