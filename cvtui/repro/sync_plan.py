"""Which side wins for each path of `cvtui components sync`: conflict types and the plan.

Pure: the engine (cvtui/engine/components_sync.py) lists the host, asks the catalog, and
carries the plan out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

STRATEGIES = ("server-authoritative", "local-priority", "interactive", "dry-run")
DECISIONS = ("store", "host", "skip")  # interactive: which side wins for one path

# Conflict types of one path, host copy against the store's active version.
SAME = "same"
STORE_ONLY = "store_only"  # active in the store, absent on the host
STORE_NEWER = "store_newer"  # the host has a version the store knows, not the active one
HOST_NEWER = "host_newer"  # an edit on the host: content the store never saw for this path,
# or saw only as an import from a host, newer than the active version and never adopted
HOST_ONLY = "host_only"  # on the host; the store holds no version of it but host imports

# What is done for a path (after every host edit was imported into the store).
NOTHING = "none"  # the same on both sides
REPORT = "report"  # dry run: a conflict, left as it is
SKIP = "skip"  # interactive: left as it is
WRITE_HOST = "write_host"  # the store's active version is written to the host
DELETE_HOST = "delete_host"  # the store has no active version: the host file is removed
USE_HOST = "use_host"  # the host's version becomes active and is written to the local dir
REMOVE_LOCAL = "remove_local"  # the host lacks it: deactivated in the store, removed locally


@dataclass(frozen=True)
class HostFile:
    """A file of the host's copy, as listed by the agent."""

    path: str
    size: int  # bytes
    executable: bool
    digest: str  # hex, in the listing's algorithm
    hash: str | None  # xxh3_128 of the content when known (the store's name for it)


@dataclass(frozen=True)
class StoreFile:
    """The active version of a path in the store."""

    hash: str  # xxh3_128
    size: int  # bytes
    executable: bool
    created: float = 0.0  # unix seconds: when the store first saw this version


@dataclass(frozen=True)
class KnownVersion:
    """Any version of a path the store holds."""

    created: float  # unix seconds: when the store first saw it
    from_host: bool  # first seen on a host (imported by a sync), not in the local code dir


@dataclass(frozen=True)
class PlanItem:
    path: str
    conflict: str  # SAME, STORE_ONLY, ...
    action: str  # NOTHING, WRITE_HOST, ...
    import_first: bool  # host content the store lacks: copied into the store before anything
    host: HostFile | None
    store: StoreFile | None


def classify(
    host: HostFile | None, store: StoreFile | None, versions: Mapping[str, KnownVersion]
) -> str:
    """The conflict type of one path; `versions` is every version the store holds of it.

    A host edit imported by an earlier sync but not adopted is still the host's edit: it
    counts as the store's (store_newer) only once the store's active version is newer.
    """
    if host is None:
        return STORE_ONLY if store is not None else SAME
    if store is not None and host.hash == store.hash:
        return SAME
    seen = versions.get(host.hash) if host.hash is not None else None
    if seen is not None and not (
        seen.from_host and (store is None or seen.created >= store.created)
    ):
        return STORE_NEWER  # the store moved on (or removed the file) since the host had it
    if store is not None or any(not v.from_host for v in versions.values()):
        return HOST_NEWER
    return HOST_ONLY


def plan(
    host: Mapping[str, HostFile],
    active: Mapping[str, StoreFile],
    known: Mapping[str, Mapping[str, KnownVersion]],
    strategy: str,
    decisions: Mapping[str, str] | None = None,
) -> list[PlanItem]:
    """What to do for every path of the host copy or the store's active set, sorted by path.

    Pure: the listing and the catalog's view in, decisions out. A dry run only reports; every
    other strategy imports host edits first, whatever it decides for the path afterwards.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    items = []
    for path in sorted(set(host) | set(active)):
        found, wanted = host.get(path), active.get(path)
        versions = known.get(path, {})
        conflict = classify(found, wanted, versions)
        if conflict == SAME:
            items.append(PlanItem(path, SAME, NOTHING, False, found, wanted))
            continue
        if strategy == "dry-run":
            items.append(PlanItem(path, conflict, REPORT, False, found, wanted))
            continue
        if strategy == "server-authoritative":
            decision = "store"
        elif strategy == "local-priority":
            decision = "host" if conflict in (HOST_NEWER, HOST_ONLY) else "store"
        else:
            decision = (decisions or {}).get(path, "skip")
        if decision == "store":
            action = WRITE_HOST if wanted is not None else DELETE_HOST
        elif decision == "host":
            action = USE_HOST if found is not None else REMOVE_LOCAL
        else:
            action = SKIP
        imports = conflict in (HOST_NEWER, HOST_ONLY) and (
            found is not None and (found.hash is None or found.hash not in versions)
        )
        items.append(PlanItem(path, conflict, action, imports, found, wanted))
    return items
