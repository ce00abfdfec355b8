"""The host half of run provenance, asked of the agents: GPUs and their models, the GPU
driver, the python a run used and its packages. The submit half is cvtui.repro.provenance.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cvtui.repro.blobstore import BlobStore
from remote_agent import protocol
from remote_agent.protocol import BACKEND_SIMULATED, RemoteError

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.engine.engine import HostSession
    from cvtui.engine.scheduler import Placement

log = logging.getLogger("cvtui.engine.provenance")

ENVIRONMENT_TIMEOUT_S = 30.0  # the agent gives its package listing 20 s
ENVIRONMENT_POLL_S = 0.25  # how often the agent is asked again while it reads
ENVIRONMENT_FRESH_S = 3600.0  # a host's environment younger than this is not read again
RUN_PYTHON_TIMEOUT_S = 60.0  # the run's setup may take a while before its python is known
SIMULATED_MARK = " [simulated]"  # after a GPU model, so a simulated GPU never reads as real


def record_dispatch(
    catalog: Catalog,
    run: dict[str, Any],
    session: HostSession,
    placement: Placement,
    command: str | Sequence[str],
    *,
    links: Sequence[Mapping[str, Any]] = (),
    gpu_uuids: Sequence[str] = (),
    env_key: str | None = None,
) -> None:
    """The host half of a run's provenance and its file manifest, once it has started.

    The python and its packages are the run's own, recorded by capture_run_python once the
    run environment is set up. Never raises: a run that started keeps running whatever its
    bookkeeping does.
    """
    try:
        _record_dispatch(
            catalog, run, session, placement, command, list(links), list(gpu_uuids), env_key
        )
    except Exception:
        log.exception("run %s: provenance not recorded", run.get("id"))


def _record_dispatch(
    catalog: Catalog,
    run: dict[str, Any],
    session: HostSession,
    placement: Placement,
    command: str | Sequence[str],
    links: list[Mapping[str, Any]],
    gpu_uuids: list[str],
    env_key: str | None,
) -> None:
    run_id = run["id"]
    if run.get("code_hash"):
        catalog.write_run_manifest(run_id, run["code_hash"])
    host = placement.host
    names: dict[int, str] = {}
    backend = None
    if session.latest is not None:
        backend = session.latest.backend
        names = {g.index: g.name for g in session.latest.gpus}
    if any(i not in names for i in placement.gpus):
        stored = catalog.gpu_models()
        names.update({i: stored[(host, i)] for i in placement.gpus if (host, i) in stored})
    if backend is None and session.hello is not None:
        backend = session.hello.backend
    mark = SIMULATED_MARK if backend == BACKEND_SIMULATED else ""
    models = [f"{names[i]}{mark}" if i in names else None for i in placement.gpus]
    now = time.time()
    env = fresh_environment(catalog, host, session.hello.python if session.hello else None, now)
    catalog.write_dispatch_provenance(
        run,
        {
            "run_id": run_id,
            "host": host,
            "gpus": json.dumps(list(placement.gpus)),
            "gpu_models": json.dumps(models),
            "driver": env.get("driver"),
            "command": json.dumps(command if isinstance(command, str) else list(command)),
            "dispatched_at": now,
            "links": json.dumps(links),
            "gpu_uuids": json.dumps(gpu_uuids),
            "env_key": env_key,
        },
    )


def fresh_environment(
    catalog: Catalog, host: str, python: str | None, now: float
) -> dict[str, Any]:
    """The host_environments row when it was taken for this python within the hour, else {}."""
    env = catalog.host_environment(host)
    if env is None or env["python"] != python or now - env["taken"] >= ENVIRONMENT_FRESH_S:
        return {}
    return env


def _store_packages(catalog: Catalog, packages: object) -> str | None:
    """The blob of a package listing (`pip freeze` form), stored; None when there is none."""
    if not isinstance(packages, str):
        return None
    data = packages.encode()
    freeze_hash = BlobStore.in_home(catalog.path.parent).put_bytes(data)
    catalog.record_blobs([(freeze_hash, len(data))], "pip_freeze")
    return freeze_hash


async def capture_host_environment(
    catalog: Catalog, session: HostSession, since: float | None = None
) -> None:
    """Once per connection, in the background: the GPU driver and the interpreter's packages.

    Asked of the agent (OP_ENVIRONMENT: a child interpreter lists the installed distributions
    like `pip freeze`, about 0.1 s); skipped when the catalog has an answer for the same python
    younger than an hour. Runs dispatched to the host since `since` (default: now) get its
    driver. Never raises (but lets itself be cancelled): dispatch never waits.
    """
    hello = session.hello
    client = session.client
    if hello is None or client is None:
        return
    name = session.host.name
    since = time.time() if since is None else since
    try:
        env = catalog.host_environment(name)
        if (
            env is not None
            and env["python"] == hello.python
            and since - env["taken"] < ENVIRONMENT_FRESH_S
        ):
            return
        reply: dict[str, Any] = {"pending": True}
        deadline = time.monotonic() + ENVIRONMENT_TIMEOUT_S
        try:
            while reply.get("pending"):
                if time.monotonic() > deadline:
                    reply = {"packages": None, "packages_reason": "the host took too long"}
                    break
                reply = await client.call(protocol.OP_ENVIRONMENT, timeout_s=10)
                if reply.get("pending"):
                    await asyncio.sleep(ENVIRONMENT_POLL_S)
        except RemoteError as exc:  # an agent from before the op: say so, keep going
            reply = {"packages": None, "packages_reason": exc.message}
        freeze_hash = _store_packages(catalog, reply.get("packages"))
        driver = reply.get("driver")
        catalog.store_host_environment(
            name,
            hello.python,
            freeze_hash,
            None if freeze_hash else str(reply.get("packages_reason") or "no package list"),
            driver=str(driver) if driver else None,
            taken=time.time(),
            since=since,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the connection went away, or the catalog is busy
        log.info("host %s: environment not recorded: %r", name, exc)


async def capture_run_python(catalog: Catalog, session: HostSession, run_id: str) -> None:
    """The interpreter a run's environment resolved (after its setup), its version and its
    packages, into the run's provenance. The agent lists them once per environment.

    Never raises (but lets itself be cancelled): a run's bookkeeping never stops it.
    """
    client = session.client
    if client is None:
        return
    try:
        reply: dict[str, Any] = {"pending": True}
        deadline = time.monotonic() + RUN_PYTHON_TIMEOUT_S
        while reply.get("pending"):
            if time.monotonic() > deadline:
                return
            reply = await client.call(protocol.OP_RUN_PYTHON, run_id=run_id, timeout_s=10)
            if reply.get("pending"):
                await asyncio.sleep(ENVIRONMENT_POLL_S)
        freeze_hash = _store_packages(catalog, reply.get("packages"))
        catalog.set_run_python(run_id, reply.get("python"), reply.get("executable"), freeze_hash)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the connection went away, an old agent, a busy catalog
        log.info("run %s: its python not recorded: %r", run_id, exc)
