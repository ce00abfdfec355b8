"""Reproduce a run: queue it again with the exact code, config, command and env it ran with."""

from __future__ import annotations

import getpass
import json
import os
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from cvtui.catalog import Catalog, new_run_id
from cvtui.catalog.run_inputs import RunInput
from cvtui.errors import CvtuiError, UnknownHostError
from cvtui.paths import snapshot_archive
from cvtui.repro.blobstore import BlobStore, hash_file
from cvtui.repro.inputs import InputError, verify_inputs
from cvtui.repro.snapshot import SnapshotFile, snapshot_hash, write_snapshot_tar
from cvtui.runspec import RunSpec, with_overrides

ARCHIVE_PRESENT = "present"  # the tar under <home>/code is byte-identical to the manifest's
ARCHIVE_MISSING = "missing"  # it is not there: rebuilt from the store before queueing
ARCHIVE_DIFFERS = "differs"  # it is there but not what the manifest says: rebuilt
ARCHIVE_NONE = "none"  # the run had no code snapshot


class ReproduceError(CvtuiError):
    """A run that cannot be reproduced exactly; nothing was queued."""


@dataclass(frozen=True)
class Reproduction:
    """What `cvtui reproduce` will queue, checked against the content store."""

    source: dict[str, Any]  # the run reproduced, as the catalog has it
    code_hash: str | None
    files: tuple[SnapshotFile, ...]  # the exact file versions, in snapshot order
    manifest_from: str  # "run manifest", "snapshot manifest", or "" without code
    archive: Path | None  # <home>/code/<hash>.tar
    archive_state: str  # ARCHIVE_*
    provenance: dict[str, Any] | None  # the source's run_provenance row
    row: dict[str, Any]  # the runs row to insert
    inputs: tuple[RunInput, ...] = ()  # the source's inputs (a retry's checkpoint included)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def exact_files(catalog: Catalog, run: dict[str, Any]) -> tuple[tuple[SnapshotFile, ...], str]:
    """The file versions run shipped (manifest first, else its snapshot), and which said so.

    Refuses when the catalog cannot say exactly, or its manifests disagree with the name.
    """
    code_hash = run.get("code_hash")
    if not code_hash:
        return (), ""
    short = run["id"][:12]
    snapshot = catalog.snapshot_manifest(code_hash)
    if snapshot is None:
        raise ReproduceError(
            f"cannot reproduce {short}: code snapshot {code_hash} is not in the catalog "
            "(submitted before cvtui kept code versions)"
        )
    files = tuple(
        sorted(
            (SnapshotFile(e.path, e.size, e.executable, e.hash) for e in snapshot),
            key=lambda f: f.path,
        )
    )
    if snapshot_hash(files) != code_hash:
        raise ReproduceError(
            f"cannot reproduce {short}: the catalog's manifest of code {code_hash} "
            "does not hash to that name"
        )
    shipped = catalog.run_manifest(run["id"])
    if not shipped:
        return files, "snapshot manifest"
    recorded = {f.path: f.hash for f in files}
    if shipped != recorded:
        differ = sorted(
            p for p in shipped.keys() | recorded.keys() if shipped.get(p) != recorded.get(p)
        )
        raise ReproduceError(
            f"cannot reproduce {short}: its run manifest and code snapshot {code_hash} "
            f"disagree on {differ[0]}"
        )
    return files, "run manifest"


def verify_blobs(blobs: BlobStore, run_id: str, files: Sequence[SnapshotFile]) -> None:
    """Refuse, naming the path and hash, unless every file's blob is present and intact."""
    problems = []
    for item in files:
        if blobs.verify(item.hash):
            continue
        if blobs.has(item.hash):
            problems.append(
                f"{item.path} (blob {item.hash}) is corrupt in {blobs.root}: "
                "its content no longer matches its hash"
            )
        else:
            problems.append(f"{item.path} (blob {item.hash}) is missing from {blobs.root}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ReproduceError(f"cannot reproduce {run_id[:12]}: {problems[0]}{more}")


class _HashingSink:
    """A write-only file that keeps only the xxh3_128 and length of what it was given."""

    def __init__(self) -> None:
        self.hasher = xxhash.xxh3_128()
        self.length = 0  # bytes

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        self.length += len(data)
        return len(data)

    def tell(self) -> int:
        return self.length


def archive_state(
    home: Path, blobs: BlobStore, code_hash: str, files: Sequence[SnapshotFile]
) -> str:
    """Whether <home>/code/<hash>.tar is byte-identical to the tar the blobs make."""
    path = snapshot_archive(home, code_hash)
    if not path.exists():
        return ARCHIVE_MISSING
    sink = _HashingSink()
    write_snapshot_tar(sink, files, lambda f: blobs.read(f.hash))  # type: ignore[arg-type]
    found, size = hash_file(path)
    same = found == sink.hasher.hexdigest() and size == sink.length
    return ARCHIVE_PRESENT if same else ARCHIVE_DIFFERS


def rebuild_archive(
    home: Path, blobs: BlobStore, code_hash: str, files: Sequence[SnapshotFile]
) -> Path:
    """Write <home>/code/<hash>.tar from the store: the same bytes `cvtui run` wrote."""
    path = snapshot_archive(home, code_hash)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            write_snapshot_tar(out, files, lambda f: blobs.read(f.hash))
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def plan_reproduction(
    catalog: Catalog,
    home: Path,
    run: dict[str, Any],
    *,
    host: str | None = None,
    known_hosts: Sequence[str] | None = None,
) -> Reproduction:
    """Check that run can be reproduced exactly and describe the run that would be queued.

    Reads only: every blob is verified here, the archive is rebuilt by queue_reproduction.
    """
    if host is not None and known_hosts is not None and host not in known_hosts:
        raise UnknownHostError(host, list(known_hosts))
    blobs = BlobStore.in_home(home)
    files, manifest_from = exact_files(catalog, run)
    verify_blobs(blobs, run["id"], files)
    inputs = tuple(catalog.run_inputs(run["id"]))
    try:
        verify_inputs(blobs, run["id"], inputs)
    except InputError as exc:
        raise ReproduceError(str(exc)) from None
    code_hash = run.get("code_hash") or None
    archive = None
    state = ARCHIVE_NONE
    if code_hash:
        archive = snapshot_archive(home, code_hash)
        state = archive_state(home, blobs, code_hash, files)
    spec_json = dict(run["spec"] or {})
    resources = dict(run["resources"] or {})
    if host is not None:
        try:
            spec = with_overrides(RunSpec.from_json(spec_json), hosts=(host,))
        except (KeyError, TypeError):
            raise ReproduceError(
                f"cannot pin {run['id'][:12]} to {host}: it has no run spec"
            ) from None
        spec_json = spec.to_json()
        resources = {**resources, "hosts": [host]}
    row = {
        "id": new_run_id(),
        "name": run["name"],
        "project": run["project"],
        "user": getpass.getuser(),
        "priority": run["priority"],
        "command": run["command"],
        "params": run["params"],
        "config": run["config"],
        "spec": spec_json,
        "resources": resources,
        "retries": run["retries"],
        "code_hash": code_hash,
    }
    return Reproduction(
        source=run,
        code_hash=code_hash,
        files=files,
        manifest_from=manifest_from,
        archive=archive,
        archive_state=state,
        provenance=catalog.run_provenance(run["id"]),
        row=row,
        inputs=inputs,
    )


def queue_reproduction(catalog: Catalog, home: Path, plan: Reproduction) -> str:
    """Queue the planned run (rebuilding its code archive first when needed); its id."""
    if plan.code_hash and plan.archive_state != ARCHIVE_PRESENT:
        rebuild_archive(home, BlobStore.in_home(home), plan.code_hash, plan.files)
    now = time.time()
    row = {**plan.row, "submitted": now}
    [run_id] = catalog.insert_runs([row])
    catalog.set_run_reproduces(run_id, plan.source["id"])
    catalog.record_run_inputs(
        RunInput(run_id, i.name, i.kind, i.source, i.path, i.hash, i.size) for i in plan.inputs
    )
    earlier = plan.provenance or {}
    spec = plan.source.get("spec") or {}
    catalog.write_submit_provenance(
        [
            {
                "run_id": run_id,
                "code_hash": plan.code_hash,
                "code_root": earlier.get("code_root")
                or catalog.snapshot_root(plan.code_hash or ""),
                "git_head": earlier.get("git_head"),
                "git_dirty": earlier.get("git_dirty"),
                "git_diff_hash": earlier.get("git_diff_hash"),
                "command": json.dumps(plan.source["command"]),
                "config": json.dumps(plan.source["config"]),
                "env": json.dumps(
                    earlier["env"] if earlier.get("env") is not None else spec.get("env") or {}
                ),
                "submitted_at": now,
            }
        ],
    )
    return run_id


def describe(plan: Reproduction, *, dry_run: bool) -> str:
    """The provenance of the run reproduced and what is (or would be) queued, for a terminal."""
    run = plan.source
    prov = plan.provenance or {}
    lines = [f"reproduce {run['id']}  {run['name']}  ({run['state']})"]
    if plan.code_hash:
        lines.append(
            f"  code      {plan.code_hash}  {len(plan.files)} files, {plan.size} bytes, "
            f"from the {plan.manifest_from}; every blob verified"
        )
        archive = {
            ARCHIVE_PRESENT: "present",
            ARCHIVE_MISSING: "missing: rebuilt from the content store",
            ARCHIVE_DIFFERS: "differs from the manifest: rebuilt from the content store",
        }[plan.archive_state]
        if dry_run:
            archive = archive.replace("rebuilt", "would be rebuilt")
        lines.append(f"  archive   {plan.archive}  {archive}")
    else:
        lines.append("  code      none (the run had no code snapshot)")
    if prov.get("code_root"):
        lines.append(f"  code dir  {prov['code_root']}")
    if prov.get("git_head"):
        state = "clean" if prov.get("git_dirty") == 0 else "dirty" if prov.get("git_dirty") else "?"
        diff = f", diff blob {prov['git_diff_hash']}" if prov.get("git_diff_hash") else ""
        lines.append(f"  git       {prov['git_head']} ({state}{diff})")
    for item in plan.inputs:
        lines.append(f"  input     {item.name}: {item.source} -> {item.path}  blob {item.hash}")
    command: Any = prov["command"] if prov.get("command") is not None else run["command"]
    shown = command if isinstance(command, str) else shlex.join(str(a) for a in command)
    lines.append(f"  command   {shown}")
    lines.append(f"  config    {json.dumps(run['config'], sort_keys=True)}")
    env = prov.get("env") if prov.get("env") is not None else (run.get("spec") or {}).get("env")
    lines.append(f"  env       {json.dumps(env or {}, sort_keys=True)}")
    if prov.get("host"):
        models = ", ".join(m or "?" for m in prov.get("gpu_models") or []) or "no GPU"
        lines.append(
            f"  ran on    {prov['host']} GPUs {prov.get('gpus') or []} ({models}), "
            f"driver {prov.get('driver') or 'unknown'}, python {prov.get('python') or '?'}, "
            f"pip freeze {prov.get('pip_freeze_hash') or 'not recorded'}"
        )
    hosts = plan.row["resources"].get("hosts") or []
    where = ", ".join(hosts) if hosts else "any host"
    verb = "would queue" if dry_run else "queues"
    lines.append(f"{verb} {plan.row['name']} (priority {plan.row['priority']}) on {where}")
    if dry_run:
        lines.append("(dry run: nothing queued)")
    return "\n".join(lines)
