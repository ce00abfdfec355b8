"""Slurm hosts in the engine: a run naming a cluster is submitted as soon as the cluster can
take it (Slurm queues and places it, cvtui does not second-guess it), a pending job is a queued
run held by the cluster with Slurm's reason, and a cluster whose Slurm cannot be asked is in
error while the runs meant for it wait in cvtui's queue.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import asyncssh

from cvtui.catalog.rebuild import CONTROLLER_KEY
from cvtui.engine.agent_client import AgentClosedError
from cvtui.engine.inputs import InputsRefused
from cvtui.engine.provenance import capture_run_python, record_dispatch
from cvtui.engine.scheduler import Placement
from cvtui.engine.start_request import REFUSALS, start_request
from cvtui.repro.blobstore import BlobError
from cvtui.runspec import RunSpec
from cvtui.slurm_settings import job_settings
from remote_agent import protocol
from remote_agent.protocol import Hello, RemoteError, RunStatus, StartRequest, Telemetry
from remote_agent.slurm import job_options

if TYPE_CHECKING:
    from cvtui.catalog.run_inputs import RunInput
    from cvtui.engine.engine import HostSession
    from cvtui.engine.host_kinds import QueueEntry
    from cvtui.engine.runner import RunController
    from cvtui.inventory import Host

log = logging.getLogger("cvtui.engine.slurm")

SUBMIT_TIMEOUT_S = 30.0  # the agent gives sbatch 20 s of it


@dataclass(frozen=True)
class Submitted:
    """What a run's provenance needs again once Slurm says which GPUs it got."""

    command: str | list[str]
    links: list[Any]
    env_key: str


class SlurmKind:
    """A Slurm cluster reached through its login node."""

    name = "slurm"
    places_runs = False

    def __init__(self) -> None:
        self.submitted: dict[str, Submitted] = {}  # run id -> its submit, until it runs
        self.python_asked: set[str] = set()  # runs whose python capture was started

    def agent_options(self, host: Host) -> list[str]:
        return ["--slurm"]

    def start_request(
        self,
        run: Mapping[str, Any],
        spec: RunSpec,
        host: Host,
        hello: Hello,
        gpus: Sequence[int],
        inputs: Sequence[RunInput] = (),
        staged: Sequence[Mapping[str, Any]] = (),
    ) -> StartRequest:
        """The run's request with its sbatch settings; `{gpus}` is 0..N-1, the devices the
        job's CUDA sees (Slurm picks the node's GPUs and sets CUDA_VISIBLE_DEVICES)."""
        count = spec.resources.gpus
        request = start_request(run, spec, host, hello, tuple(range(count)), inputs, staged)
        settings = job_settings(
            host.slurm,
            spec.resources.slurm,
            gpus=count,
            priority=str(run["priority"]),
            name=str(run["name"]),
        )
        return replace(request, gpus=(), slurm=settings)

    def health(self, sample: Telemetry) -> str | None:
        if sample.cluster is None:
            return "slurm: the agent sent no cluster state"
        return sample.cluster.error

    def exec_command(
        self,
        host: Host,
        agent: str | None,
        argv: Sequence[str],
        gpus: Sequence[int],
        tty: bool = False,
    ) -> str:
        """srun on the cluster, with as many GPUs as asked for (Slurm picks which); tty: the
        job's task gets a pty of its own (srun --pty), for an interactive command."""
        settings = job_settings(host.slurm, {}, gpus=len(gpus), priority="urgent", name="exec")
        srun = ["srun", "--job-name=cvtui-exec", "--quiet", *job_options(settings)]
        if tty:
            srun.append("--pty")
        return "exec " + shlex.join([*srun, *argv])

    # -- dispatch -------------------------------------------------------------------------

    def dispatch(self, controller: RunController, entries: list[QueueEntry]) -> None:
        """Submit every queued run meant for a cluster that can take it now; the others wait
        with the cluster's reason."""
        held = controller.catalog.held_runs()
        waiting: dict[str, str] = {}
        for run_id, _priority, _submitted, resources in entries:
            if run_id in held:
                continue  # pending in Slurm already
            host = controller.slurm_host(resources)
            if host is None:
                continue
            session = controller.engine.sessions.get(host)
            why = self.not_ready(controller, host, session)
            if why is not None or session is None:
                waiting[run_id] = why or f"{host} is not connected"
                continue
            run = controller.catalog.get_run(run_id)
            if run is not None and controller.catalog.transition_run(
                run_id,
                "dispatching",
                expect=["queued"],
                detail=f"submitting to {host}",
                host=host,
                gpus=None,
                dispatched=time.time(),
                reason=None,
            ):
                controller.spawn(self.submit(controller, session, run))
        controller.note_waiting(waiting)

    def not_ready(
        self, controller: RunController, host: str, session: HostSession | None
    ) -> str | None:
        if session is None:
            return f"{host} is not in the inventory"
        if host in controller.engine.drained:
            return f"{host} is drained"
        if session.client is None or session.hello is None or session.latest is None:
            return f"waiting for {host} to connect"
        why = self.health(session.latest)
        return None if why is None else f"{host} cannot take jobs: {why}"

    async def submit(
        self, controller: RunController, session: HostSession, run: dict[str, Any]
    ) -> None:
        """sbatch the run through the login node's agent: pending there, or failed at submit."""
        run_id, host = run["id"], session.host.name
        client = session.client
        if client is None or session.hello is None:
            controller.requeue(run_id, f"{host} went away before the submit")
            return
        try:
            spec = RunSpec.from_json(run["spec"])
            if run["code_hash"]:
                await controller.ensure_code(session, run["code_hash"])
            # Inputs are staged on the login node's root, which the compute nodes share.
            inputs, staged = await controller.stage_run_inputs(session, run, spec)
            stamped = {**run, CONTROLLER_KEY: controller.controller_id}
            request = self.start_request(
                stamped, spec, session.host, session.hello, (), inputs, staged
            )
            reply = await client.call(
                protocol.OP_START, timeout_s=SUBMIT_TIMEOUT_S, **request.to_wire()
            )
        except (InputsRefused, BlobError) as exc:
            controller.refuse(run, f"cannot submit to {host}: {exc}")
            return
        except RemoteError as exc:
            message = exc.message.removeprefix(f"{protocol.OP_START}: ")
            if exc.code == protocol.E_RUN_EXISTS:
                await controller.reconcile(session, [run_id])
            elif exc.code == protocol.E_SUBMIT_REFUSED:
                controller.refuse(run, f"sbatch refused it on {host}: {message}")
            elif exc.code in REFUSALS:
                controller.refuse(run, f"cannot submit to {host}: {message}")
            else:
                controller.forget_stale(session, run, exc.code)
                controller.requeue(run_id, f"submit to {host} refused: {message}")
            return
        except (TimeoutError, AgentClosedError, asyncssh.Error, OSError) as exc:
            # sbatch may or may not have queued it: reconnecting reconciles from the run dir.
            log.warning("run %s: submit to %s interrupted: %r", run_id, host, exc)
            return
        job = str(reply.get("job_id") or "")
        links = list(reply.get("links") or [])
        self.submitted[run_id] = Submitted(request.command, links, request.env_key)
        record_dispatch(
            controller.catalog,
            run,
            session,
            Placement(run_id, host, ()),
            request.command,
            links=links,
            env_key=request.env_key,
        )
        controller.catalog.update_run(
            run_id, slurm_job=job, run_dir=reply.get("run_dir"), work_dir=reply.get("work_dir")
        )
        controller.catalog.transition_run(
            run_id,
            "queued",
            expect=["dispatching"],
            detail=f"Slurm job {job}",
            reason=f"PENDING (submitted as job {job})",
        )
        log.info(
            "run %s: submitted to %s as Slurm job %s",
            run_id,
            host,
            job,
            extra={"event": "submit", "host": host, "run": run_id},
        )

    # -- status ---------------------------------------------------------------------------

    def on_pending(
        self, controller: RunController, host: str, run: dict[str, Any], status: RunStatus
    ) -> None:
        """A job waiting in Slurm's queue: the run is queued, held by its host, with Slurm's
        reason (PENDING (Resources), PENDING (Priority), ...)."""
        reason = status.reason or "PENDING"
        if run["state"] == "dispatching":
            controller.catalog.transition_run(
                run["id"],
                "queued",
                expect=["dispatching"],
                detail=f"Slurm job {status.job_id}",
                reason=reason,
                slurm_job=status.job_id,
                run_dir=status.run_dir or run["run_dir"],
            )
        elif run["state"] == "queued" and (run["reason"] != reason or run["host"] != host):
            # (A run the catalog had not seen handed over is held by the host all the same.)
            controller.catalog.update_run(
                run["id"], reason=reason, slurm_job=status.job_id, host=host
            )

    def on_running(self, controller: RunController, session: HostSession, run_id: str) -> None:
        """The job started: its provenance gets the GPUs Slurm gave it, and its python."""
        run = controller.catalog.get_run(run_id)
        noted = self.submitted.pop(run_id, None)
        if run is not None and noted is not None and run["gpus"]:
            record_dispatch(
                controller.catalog,
                run,
                session,
                Placement(run_id, session.host.name, tuple(run["gpus"])),
                noted.command,
                links=noted.links,
                env_key=noted.env_key,
            )
        if run_id not in self.python_asked:
            self.python_asked.add(run_id)
            controller.spawn(capture_run_python(controller.catalog, session, run_id))
