"""Staging a run's inputs on its host: each blob is uploaded once per host (SFTP), checked by
the agent against a digest computed here, and kept there under its content hash."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
import xxhash

from cvtui.catalog.run_inputs import RunInput
from cvtui.repro.blobstore import CHUNK_BYTES, BlobError, BlobStore
from cvtui.run_inputs import RESUME_INPUT
from remote_agent import protocol
from remote_agent.blocktree import ALGO_BLAKE2B, ALGO_XXH3, new_hasher

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.engine.engine import HostSession
    from cvtui.runspec import RunSpec

log = logging.getLogger("cvtui.engine.inputs")

STAGE_TIMEOUT_S = 30.0  # the agent's answer about a stored input, plus hashing time below
HASH_RATE_BPS = 100 << 20  # bytes per second the agent hashes at least (blake2b, one core)


def local_digest(path: Path, name: str, algo: str) -> str:
    """The digest the host must find for a blob, in algo, read once; the blob's own name is
    checked on the same pass, so corrupt local content is never sent."""
    named = xxhash.xxh3_128()
    other = None if algo == ALGO_XXH3 else new_hasher(algo)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                named.update(chunk)
                if other is not None:
                    other.update(chunk)
    except FileNotFoundError:
        raise BlobError(f"blob {name} is missing from {path.parent.parent}") from None
    if named.hexdigest() != name:
        raise BlobError(f"blob {name} in {path.parent.parent} is corrupt: its content changed")
    return name if other is None else str(other.hexdigest())


def common_algorithm(offered: Sequence[str]) -> str:
    """The hash the host verifies uploads with: xxh3_128 (the blob's own name) when it has the
    module, else blake2b-128, which every Python has."""
    return ALGO_XXH3 if ALGO_XXH3 in offered else ALGO_BLAKE2B


async def ensure_input(session: HostSession, blobs: BlobStore, hash_: str, size: int) -> None:
    """Make <root>/inputs/<hash> exist on the host with exactly the blob's bytes."""
    if hash_ in session.known_inputs:
        return
    client, hello = session.client, session.hello
    if client is None or hello is None:
        raise protocol.RemoteError(protocol.E_BAD_REQUEST, f"{session.host.name} is not connected")
    reply = await client.call(protocol.OP_INPUT_STAGE, hash=hash_, size=size)
    if not reply.get("present"):
        algo = common_algorithm(hello.hash_algorithms)
        digest = await asyncio.to_thread(local_digest, blobs.path(hash_), hash_, algo)
        sftp = await session.sftp()
        directory = f"{hello.root.rstrip('/')}/{protocol.INPUTS_DIR}"
        upload = f"{hash_}.{secrets.token_hex(6)}.part"  # one per uploader
        try:
            await sftp.makedirs(directory, exist_ok=True)
            await sftp.put(str(blobs.path(hash_)), f"{directory}/{upload}")
        except asyncssh.SFTPError as exc:  # a full disk, a quota: the run goes back to the queue
            raise protocol.RemoteError(
                protocol.E_INTERNAL, f"cannot upload input {hash_}: {exc.reason}"
            ) from exc
        reply = await client.call(
            protocol.OP_INPUT_STAGE,
            hash=hash_,
            size=size,
            algo=algo,
            digest=digest,
            upload=upload,
            timeout_s=STAGE_TIMEOUT_S + size / HASH_RATE_BPS,
        )
        log.info(
            "host %s: input %s uploaded (%d bytes) and verified (%s)",
            session.host.name,
            hash_,
            size,
            algo,
            extra={"event": "input_upload", "host": session.host.name},
        )
    if not reply.get("present"):
        raise protocol.RemoteError(protocol.E_BAD_INPUT, f"input {hash_} did not stay on the host")
    session.known_inputs.add(hash_)


async def stage_inputs(
    session: HostSession, blobs: BlobStore, inputs: Sequence[RunInput]
) -> list[dict[str, Any]]:
    """Every input on the host; StartRequest.inputs for them. A checkpoint a retry resumes
    from is copied into the work dir (the run may rewrite it); the rest are linked."""
    for hash_, size in dict((i.hash, i.size) for i in inputs).items():
        await ensure_input(session, blobs, hash_, size)
    return [{"path": i.path, "hash": i.hash, "copy": i.kind == RESUME_INPUT} for i in inputs]


def input_paths(work_dir: str, inputs: Sequence[RunInput]) -> dict[str, str]:
    """{name: absolute path on the host} of the config's inputs, for {inputs.NAME}."""
    return {i.name: f"{work_dir}/{i.path}" for i in inputs if i.kind != RESUME_INPUT}


class InputsRefused(Exception):
    """A run whose inputs can never be staged as they are (a corrupt or missing blob)."""


async def inputs_for_start(
    catalog: Catalog, home: Path, run: Mapping[str, Any], spec: RunSpec
) -> list[RunInput]:
    """The inputs a run starts with: those pinned at submit and, for a retry that resumes,
    the newest synced checkpoint of its earlier attempts (chosen once; its events say which)."""
    from cvtui.engine.resume import pin_checkpoint

    inputs = catalog.run_inputs(run["id"])
    missing = sorted(set(spec.inputs) - {i.name for i in inputs})
    if missing:
        raise InputsRefused(f"input {missing[0]} was not pinned to a blob when it was submitted")
    resuming = any(i.kind == RESUME_INPUT for i in inputs)
    if spec.resume is not None and int(run.get("attempt") or 1) > 1 and not resuming:
        attempts = catalog.run_attempts(run)
        pinned, said = await asyncio.to_thread(
            pin_checkpoint, catalog, home, run["id"], attempts, spec.resume.checkpoint
        )
        catalog.note_run_event(run["id"], said)
        log.info("run %s: %s", run["id"], said, extra={"event": "resume", "run": run["id"]})
        if pinned is not None:
            inputs.append(pinned)
    return inputs
