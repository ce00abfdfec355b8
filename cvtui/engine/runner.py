"""Runs on hosts: start queued runs, follow their status, cancel, reconcile, mirror logs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any

import asyncssh

from cvtui.catalog import new_run_id
from cvtui.catalog.rebuild import CONTROLLER_KEY
from cvtui.engine import scheduler
from cvtui.engine.agent_client import AgentClosedError
from cvtui.engine.deploy import remote_path
from cvtui.engine.host_kinds import HostKind, QueueEntry, engine_kinds
from cvtui.engine.inputs import InputsRefused, inputs_for_start, stage_inputs
from cvtui.engine.preempt import Preemption
from cvtui.engine.provenance import capture_run_python, record_dispatch
from cvtui.engine.resume import SYNC_WAIT_S
from cvtui.engine.start_request import REFUSALS
from cvtui.engine.syncer import Syncer
from cvtui.engine.tasks import TaskSet
from cvtui.paths import controller_id, snapshot_archive
from cvtui.repro.blobstore import BlobError, BlobStore
from cvtui.runspec import RunSpec
from cvtui.states import ACTIVE_STATES, preempted
from remote_agent import protocol
from remote_agent.protocol import GpuSample, RemoteError, RunStatus

if TYPE_CHECKING:
    from cvtui.catalog.run_inputs import RunInput
    from cvtui.engine.engine import Engine, HostSession

log = logging.getLogger("cvtui.engine.runs")

POLL_S = 0.05  # how often the catalog's data_version is checked for new work
PASS_EVERY_S = 1.0  # a dispatch pass also runs this often (GPUs free up with telemetry)
START_TIMEOUT_S = 30.0
# How long after a run ended its lease and processes in telemetry are taken for gone: its
# supervisor releases the lease right after the end state, and a start waits that out.
LEASE_RELEASE_S = 3.0
RECHECK_LOST_S = 7 * 86400.0  # lost runs this recent are asked about again at each reconnect


CANCEL_LINES = 20  # more runs cancelled while queued in one pass are logged as one line


class RunController:
    """The engine's run half: everything between a `queued` row and a final state."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.catalog = engine.catalog
        self.home = engine.catalog.path.parent
        self.controller_id = controller_id(self.home)  # stamped on each run's record
        self.wake = asyncio.Event()
        self.waiting_reasons: dict[str, str] = {}
        self.sync = Syncer(engine)
        self.pulls: dict[str, asyncio.Task[None]] = self.sync.tasks  # in-flight syncs, by run
        self.tasks = TaskSet(log)  # starts, bookkeeping, commands being served
        self.reconciled: set[str] = set()  # hosts reconciled since this engine started
        self.just_ended: dict[str, float] = {}  # run id -> monotonic time it reached a final state
        # (host, GPU) -> the telemetry time (HostSession.latest_at) when a start there was refused
        # as busy: the GPU counts as leased until a newer sample shows who holds it.
        self.refused: dict[tuple[str, int], float] = {}
        self.passes = 0  # dispatch passes done: a decision waits for one after its request
        self.passes_begun = 0  # passes started (one more than passes while one runs)
        self._priorities: dict[str, str] = {}  # queued run -> priority at the last pass
        self._drained: set[str] | None = None  # drained hosts at the last pass
        self._pass_done = asyncio.Event()  # replaced after each pass, so waiters wake once
        self.kinds = engine_kinds()  # how runs start on each kind of host (host_kinds.py)
        self.uploads: dict[tuple[str, str], asyncio.Lock] = {}  # (host, code hash) in upload
        # Retries that resume, held in the queue until the attempt before them is synced (its
        # last checkpoints are in): retry id -> (that attempt's id, monotonic time queued).
        self.resume_holds: dict[str, tuple[str, float]] = {}
        self.preemption = Preemption(self)

    # -- the loop -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        version = -1
        last_pass = 0.0
        while not stop.is_set():
            woken = False  # this engine freed GPUs or requeued a run: its own writes do not
            with contextlib.suppress(asyncio.TimeoutError):  # change data_version
                woken = await asyncio.wait_for(self.wake.wait(), POLL_S)
            self.wake.clear()
            now = time.monotonic()
            current = self.catalog.data_version()
            if not woken and current == version and now - last_pass < PASS_EVERY_S:
                continue
            version, last_pass = current, now
            self.passes_begun += 1
            try:
                await self.process_commands()
                self.dispatch_pass()
            except Exception:  # one bad row must not stop the engine
                log.exception("run pass failed")
            self.passes += 1
            done, self._pass_done = self._pass_done, asyncio.Event()
            done.set()

    async def decide(self, run_ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
        """Each run as the engine decided it: placed (host, GPUs) or waiting (the reason).

        A run still queued counts as decided once a dispatch pass has run after this call
        and every host has answered (connected or failed), so the reason is never that a
        host is still connecting; a run submitted to a cluster once the cluster holds it (a
        pending job, with Slurm's reason) or refused it; at most timeout_s.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s

        def rows() -> list[dict[str, Any]]:
            return [r for r in (self.catalog.get_run(i) for i in run_ids) if r is not None]

        def waiting(found: list[dict[str, Any]]) -> bool:  # in our queue: a pass decides
            return any(r["state"] == "queued" and not r["host"] for r in found)

        def submitting(found: list[dict[str, Any]]) -> bool:  # to a cluster: its answer decides
            return any(
                r["state"] == "dispatching" and r["host"] and not self.kind(r["host"]).places_runs
                for r in found
            )

        self.wake.set()
        if waiting(rows()):
            # A pass that began before every host answered may have said 'connecting':
            # the decision is the first pass begun after they all did.
            await self.engine.wait_answered(max(0.0, deadline - loop.time()))
        informed_from = self.passes_begun
        self.wake.set()
        while loop.time() < deadline:
            found = rows()
            to_cluster = submitting(found)
            if not to_cluster and not (waiting(found) and self.passes <= informed_from):
                break
            # a cluster's answer comes between passes: look again soon
            wait_s = deadline - loop.time() if not to_cluster else 0.2
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._pass_done.wait(), max(0.0, min(wait_s, deadline - loop.time()))
                )
        found = rows()
        keys = ("id", "name", "state", "host", "gpus", "reason")
        return [{k: r[k] for k in keys} for r in found]

    async def wait_commands(self, command_ids: list[int], timeout_s: float) -> list[dict[str, Any]]:
        """The commands once the engine finished them (or as they are after timeout_s)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self.wake.set()
        while True:
            rows = [self.catalog.get_command(i) for i in command_ids]
            if all(r is None or r["state"] != "pending" for r in rows) or loop.time() > deadline:
                return [r for r in rows if r is not None]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._pass_done.wait(), max(0.0, min(1.0, deadline - loop.time()))
                )

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run coro in the background, held until it ends; cancelled by close()."""
        self.tasks.spawn(coro)

    async def close(self) -> None:
        pulls = list(self.pulls.values())
        for task in pulls:
            task.cancel()
        await self.tasks.cancel_all()
        await asyncio.gather(*pulls, return_exceptions=True)

    # -- placement and start --------------------------------------------------------------
    def host_states(self) -> list[scheduler.HostState]:
        policy = self.engine.inventory.policy
        now = time.time()
        busy: dict[str, int] = {}
        # GPUs of our placed runs are taken even before telemetry shows their leases.
        held: dict[tuple[str, int], str] = {}
        for run in self.catalog.list_runs(states=["dispatching", "running"]):
            if run["host"]:
                busy[run["host"]] = busy.get(run["host"], 0) + 1
                for index in run["gpus"] or ():
                    held[(run["host"], index)] = run["id"]
        horizon = time.monotonic() - LEASE_RELEASE_S
        for run_id in [i for i, at in self.just_ended.items() if at < horizon]:
            del self.just_ended[run_id]
        drained = self.engine.drained
        states = []
        for name, session in self.engine.sessions.items():
            host = session.host
            if not self.kinds[host.kind].places_runs:
                continue  # a cluster places its own jobs
            sample = session.latest
            fresh = (
                sample is not None
                and session.client is not None
                and now - session.latest_at < policy.stale_after_s
            )
            gpus: tuple[scheduler.GpuState, ...] = ()
            if sample is not None:
                gpus = tuple(self.gpu_state(name, g, session.latest_at, held) for g in sample.gpus)
            condition = "connecting" if sample is None else "stale"
            if session.client is None:
                condition = "disconnected" if sample is not None else "connecting"
            states.append(
                scheduler.HostState(
                    name=name,
                    healthy=fresh,
                    condition=condition,
                    drained=name in drained,
                    tags=host.tags,
                    max_runs=host.max_runs,
                    running=busy.get(name, 0),
                    allowed_gpus=host.gpus,
                    gpu_order=host.gpu_order,
                    gpus=gpus,
                )
            )
        return states

    def gpu_state(
        self, host: str, gpu: GpuSample, seen_at: float, held: dict[tuple[str, int], str]
    ) -> scheduler.GpuState:
        """One GPU for the scheduler: telemetry, corrected by what this engine knows newer."""
        ended = self.just_ended
        leased_by = None if gpu.leased_by in ended else gpu.leased_by
        leased_by = leased_by or held.get((host, gpu.index))
        refused_at = self.refused.get((host, gpu.index))
        if refused_at is not None:
            if refused_at == seen_at:
                leased_by = leased_by or "?"
            else:
                del self.refused[(host, gpu.index)]
        return scheduler.GpuState(
            index=gpu.index,
            mem_total=gpu.mem_total,
            mem_used=gpu.mem_used,
            util=gpu.util,
            leased_by=leased_by,
            foreign=any(p.run_id is None for p in gpu.processes),
            ours=any(p.run_id is not None and p.run_id not in ended for p in gpu.processes),
            telemetry_time=seen_at,
        )

    def note_changes(self, entries: list[tuple[str, str, float, dict[str, Any]]]) -> None:
        """Log the queue moves and drains made since the last pass (by the CLI or the TUI,
        straight in the catalog), so the daemon's log tells every change of plan."""
        priorities = {run_id: priority for run_id, priority, _, _ in entries}
        gone = [run_id for run_id in self._priorities if run_id not in priorities]
        if gone:
            self.note_dequeued(gone)
        for run_id, priority in priorities.items():
            before = self._priorities.get(run_id)
            if before is not None and before != priority:
                log.info(
                    "run %s: moved from %s to %s",
                    run_id,
                    before,
                    priority,
                    extra={"event": "queue_move", "run": run_id},
                )
        self._priorities = priorities
        drained = self.engine.drained
        if self._drained is not None:
            for name in sorted(drained - self._drained):
                log.info(
                    "host %s drained: no new runs there",
                    name,
                    extra={"event": "drain", "host": name},
                )
            for name in sorted(self._drained - drained):
                log.info(
                    "host %s undrained: it takes runs again",
                    name,
                    extra={"event": "undrain", "host": name},
                )
        self._drained = drained

    def note_dequeued(self, run_ids: list[str]) -> None:
        """Log the runs cancelled while queued (by the CLI or the TUI, straight in the
        catalog): one line each, or one line for a whole grid."""
        cancelled = [
            (i, d) for i, state, d in self.catalog.left_queue(run_ids) if state == "cancelled"
        ]
        if len(cancelled) > CANCEL_LINES:
            by = sorted({detail or "-" for _, detail in cancelled})
            log.info(
                "%d queued runs cancelled (%s)",
                len(cancelled),
                ", ".join(by[:3]) + (", ..." if len(by) > 3 else ""),
                extra={"event": "cancel"},
            )
            return
        for run_id, detail in cancelled:
            log.info(
                "run %s: cancelled while queued (%s)",
                run_id,
                detail or "-",
                extra={"event": "cancel", "run": run_id},
            )

    def kind(self, host: str) -> HostKind:
        """The kind of a host of the inventory (ssh for a name it no longer has)."""
        for entry in self.engine.inventory.hosts:
            if entry.name == host:
                return self.kinds[entry.kind]
        return self.kinds["ssh"]

    def slurm_host(self, resources: dict[str, Any]) -> str | None:
        """The first host a run names that places its own runs (a Slurm cluster), if any."""
        for name in resources.get("hosts", ()):
            if not self.kind(name).places_runs:
                return str(name)
        return None

    def resume_held(self, run_id: str) -> bool:
        """Whether a resuming retry still waits for the final sync of the attempt before it."""
        hold = self.resume_holds.get(run_id)
        if hold is None:
            return False
        before, since = hold
        if self.settled([before]) or time.monotonic() - since > SYNC_WAIT_S:
            del self.resume_holds[run_id]
            return False
        return True

    def dispatch_pass(self) -> None:
        """Hand each queued run to its kind of host: the scheduler places runs on ssh hosts,
        runs naming a cluster go to its own queue."""
        entries = self.catalog.queue_entries()
        self.note_changes(entries)
        held = {e[0] for e in entries if e[0] in self.resume_holds and self.resume_held(e[0])}
        if held:
            entries = [e for e in entries if e[0] not in held]
            reason = "waits for the last checkpoints of the attempt before it to sync"
            changed = {i: reason for i in held if self.waiting_reasons.get(i) != reason}
            self.waiting_reasons.update(changed)
            self.catalog.set_waiting_reasons(changed)
        if not entries:
            return
        by_kind: dict[str, list[QueueEntry]] = {}
        for entry in entries:
            host = self.slurm_host(entry[3])
            by_kind.setdefault(self.kind(host).name if host else "ssh", []).append(entry)
        for name, chosen in by_kind.items():
            self.kinds[name].dispatch(self, chosen)

    def note_waiting(self, reasons: dict[str, str]) -> None:
        """Why queued runs wait, written when it changed."""
        changed = {
            run_id: reason
            for run_id, reason in reasons.items()
            if self.waiting_reasons.get(run_id) != reason
        }
        self.waiting_reasons.update(changed)
        self.catalog.set_waiting_reasons(changed)

    def place(self, entries: list[QueueEntry]) -> None:
        """Place queued runs on ssh hosts' GPUs (the scheduler) and start them."""
        queue = [
            scheduler.QueuedRun(
                run_id=run_id,
                priority=priority,
                submitted=submitted,
                gpus=int(resources.get("gpus", 0)),
                min_free_mem=int(resources.get("min_free_mem", 0)),
                hosts=tuple(resources.get("hosts", ())),
                tags=tuple(resources.get("tags", ())),
            )
            for run_id, priority, submitted, resources in entries
        ]
        states = self.host_states()
        policy = self.engine.inventory.policy
        plan = scheduler.plan(queue, states, foreign_processes=policy.foreign_processes)
        if policy.preempt:
            self.preemption.consider(queue, states, plan)
        self.note_waiting(dict(plan.waiting))
        for placement in plan.placements:
            self.waiting_reasons.pop(placement.run_id, None)
            run = self.catalog.get_run(placement.run_id)
            if run is not None and self.catalog.transition_run(
                run["id"],
                "dispatching",
                expect=["queued"],
                detail=f"to {placement.host} gpus {list(placement.gpus)}",
                host=placement.host,
                gpus=list(placement.gpus),
                dispatched=time.time(),
                reason=None,
            ):
                log.info(
                    "run %s: dispatching to %s GPUs %s",
                    run["id"],
                    placement.host,
                    list(placement.gpus),
                    extra={"event": "dispatch", "host": placement.host, "run": run["id"]},
                )
                self.spawn(self.start_run(run, placement))

    async def stage_run_inputs(
        self, session: HostSession, run: dict[str, Any], spec: RunSpec
    ) -> tuple[list[RunInput], list[dict[str, Any]]]:
        """A run's inputs and where the host staged them (InputsRefused, BlobError when
        they cannot be)."""
        inputs = await inputs_for_start(self.catalog, self.home, run, spec)
        staged = await stage_inputs(session, BlobStore.in_home(self.home), inputs)
        return inputs, staged

    def forget_stale(self, session: HostSession, run: Mapping[str, Any], code: str) -> None:
        """What a refused start says of what the engine thought the host holds: an edited
        code snapshot is uploaded again, a removed input staged again, on the next try."""
        if code == protocol.E_CODE_CHANGED:
            session.known_code.discard(run["code_hash"])
        if code == protocol.E_NO_SUCH_FILE:
            session.known_inputs.clear()

    async def start_run(self, run: dict[str, Any], placement: scheduler.Placement) -> None:
        run_id = run["id"]
        session = self.engine.sessions.get(placement.host)
        client = session.client if session else None
        if session is None or client is None or session.hello is None:
            self.requeue(run_id, f"{placement.host} went away before the start")
            return
        try:
            spec = RunSpec.from_json(run["spec"])
            if run["code_hash"]:
                await self.ensure_code(session, run["code_hash"])
            inputs, staged = await self.stage_run_inputs(session, run, spec)
            kind = self.kinds[session.host.kind]
            request = kind.start_request(
                {**run, CONTROLLER_KEY: self.controller_id},
                spec,
                session.host,
                session.hello,
                placement.gpus,
                inputs,
                staged,
            )
            command = request.command
            reply = await client.call(
                protocol.OP_START, timeout_s=START_TIMEOUT_S, **request.to_wire()
            )
        except (InputsRefused, BlobError) as exc:
            self.refuse(run, f"cannot start: {exc}")
            return
        except RemoteError as exc:
            if exc.code == protocol.E_RUN_EXISTS:
                await self.reconcile(session, [run_id])  # an earlier start got there after all
            elif exc.code in REFUSALS:
                self.refuse(run, f"cannot start on {placement.host}: {exc.message}")
            else:
                if exc.code == protocol.E_GPU_BUSY:  # another engine's run holds it: leases rule
                    for index in placement.gpus:
                        self.refused[(placement.host, index)] = session.latest_at
                self.forget_stale(session, run, exc.code)
                self.requeue(run_id, f"start on {placement.host} refused: {exc.message}")
            return
        except (TimeoutError, AgentClosedError, asyncssh.Error, OSError) as exc:
            # The start may or may not have reached the host: reconnecting reconciles it.
            log.warning("run %s: start on %s interrupted: %r", run_id, placement.host, exc)
            return
        record_dispatch(
            self.catalog,
            run,
            session,
            placement,
            command,
            links=reply.get("links") or [],
            gpu_uuids=reply.get("gpu_uuids") or [],
            env_key=request.env_key,
        )
        self.catalog.transition_run(
            run_id,
            "running",
            expect=["dispatching"],
            detail=f"supervisor pid {reply.get('supervisor_pid')}",
            run_dir=reply.get("run_dir"),
            work_dir=reply.get("work_dir"),
            supervisor_pid=reply.get("supervisor_pid"),
            started=time.time(),
        )
        self.spawn(capture_run_python(self.catalog, session, run_id))

    def refuse(self, run: dict[str, Any], reason: str) -> None:
        """A start the host refused for good (a link target missing): the run failed there,
        nothing of it started; no retry would find the host different."""
        if self.catalog.transition_run(
            run["id"],
            "failed",
            expect=["dispatching"],
            detail=reason,
            reason=reason,
            ended=time.time(),
        ):
            log.warning(
                "run %s: %s", run["id"], reason, extra={"event": "refused", "run": run["id"]}
            )
            self.run_ended(run["id"])

    def correct(self, run: dict[str, Any], status: RunStatus) -> None:
        """A final state the supervisor recorded (from the command's own exit) replaces an
        earlier one that was inferred (lost, a run dir missing) or read from a file not
        written by the supervisor."""
        if (
            status.recorded_by != protocol.RECORDED_BY_SUPERVISOR
            or run["state"] not in protocol.RUN_FINAL_STATES
            or run["final_by"] == protocol.RECORDED_BY_SUPERVISOR
            or (run["state"], run["exit_code"]) == (status.state, status.exit_code)
        ):
            return
        detail = (
            f"corrected from {run['state']} (exit {run['exit_code']}): the supervisor "
            f"recorded {status.state} ({status.reason or 'exit code 0'})"
        )
        if not self.catalog.transition_run(
            run["id"],
            status.state,
            expect=[run["state"]],
            detail=detail,
            exit_code=status.exit_code,
            ended=status.ended or run["ended"],
            reason=status.reason,
            final_by=status.recorded_by,
        ):
            return
        log.warning("run %s: %s", run["id"], detail, extra={"event": "corrected", "run": run["id"]})
        if status.state not in (protocol.RUN_FAILED, protocol.RUN_LOST):
            for other in self.catalog.find_runs(run["name"]):  # a retry no longer due
                if (
                    other["state"] == "queued"
                    and other["submitted"] == run["submitted"]
                    and other["attempt"] == run["attempt"] + 1
                ):
                    self.catalog.transition_run(
                        other["id"],
                        "cancelled",
                        expect=["queued"],
                        reason=f"not needed: {run['id']} {status.state}",
                        ended=time.time(),
                    )

    def retry(self, run: dict[str, Any], why: str, *, preempted: bool = False) -> str | None:
        """Queue the next attempt of a failed, lost or preempted run while its `retries` allow
        one (a preemption is not the run's failure: it does not use one up).

        An attempt is a new run (new id, new run dir): a host never starts one run id twice.
        It gets the inputs pinned at submit; one that resumes waits in the queue until the
        attempt before it is synced, then starts from its newest checkpoint (start_run).
        """
        attempt = int(run.get("attempt") or 1)
        retries = int(run.get("retries") or 0) + (1 if preempted else 0)
        if attempt > retries:
            return None
        keep = ("name", "project", "user", "priority", "command", "params", "config", "spec")
        row = {key: run[key] for key in keep}
        row.update(
            id=new_run_id(),
            resources=run["resources"],
            retries=retries,
            code_hash=run["code_hash"],
            attempt=attempt + 1,
            submitted=run["submitted"],  # keeps its place in the queue
        )
        [new_id] = self.catalog.insert_runs([row])
        self.catalog.copy_run_inputs(run["id"], new_id, kinds=("model", "run"))
        self.catalog.note_run_event(
            new_id, f"attempt {attempt + 1} of at most {retries + 1}: {run['id']} {why}"
        )
        if (run.get("spec") or {}).get("resume"):
            self.resume_holds[new_id] = (run["id"], time.monotonic())
        log.info(
            "run %s: %s; attempt %d is run %s",
            run["id"],
            why,
            attempt + 1,
            new_id,
            extra={"event": "retry", "run": new_id},
        )
        return new_id

    def run_ended(self, run_id: str) -> None:
        """A run of ours reached a final state: free its GPUs now and tell whom it concerns."""
        self.just_ended[run_id] = time.monotonic()
        self.engine.notifier.run_ended(self.catalog.get_run(run_id))

    def requeue(self, run_id: str, reason: str) -> None:
        log.info(
            "run %s back to the queue: %s",
            run_id,
            reason,
            extra={"event": "requeue", "run": run_id},
        )
        self.catalog.transition_run(
            run_id,
            "queued",
            expect=["dispatching"],
            detail=reason,
            reason=reason,
            host=None,
            gpus=None,
        )
        self.wake.set()

    async def ensure_code(self, session: HostSession, code_hash: str) -> None:
        """Upload and unpack a code snapshot on the host unless it is already there (once,
        however many runs of a grid start at the same moment)."""
        if code_hash in session.known_code:
            return
        lock = self.uploads.setdefault((session.host.name, code_hash), asyncio.Lock())
        async with lock:
            await self._ensure_code(session, code_hash)

    async def _ensure_code(self, session: HostSession, code_hash: str) -> None:
        if code_hash in session.known_code:
            return
        root = remote_path(session.host.root).rstrip("/")
        sftp = await session.sftp()
        if not await sftp.exists(f"{root}/code/{code_hash}"):
            archive = snapshot_archive(self.home, code_hash)
            if not archive.exists():
                raise RemoteError(
                    protocol.E_BAD_REQUEST, f"code snapshot {code_hash} missing in {archive}"
                )
            await sftp.makedirs(f"{root}/code", exist_ok=True)
            part = f"code/{code_hash}.{secrets.token_hex(6)}.tar.part"  # one per uploader
            await sftp.put(str(archive), f"{root}/{part}")
            assert session.client is not None
            await session.client.call(protocol.OP_UNPACK_CODE, hash=code_hash, archive=part)
        session.known_code.add(code_hash)

    # -- status from hosts ----------------------------------------------------------------
    def on_run_status(self, host: str, status: RunStatus) -> None:
        run = self.catalog.get_run(status.run_id)
        if run is None:
            return  # a run of another catalog sharing this host root
        fields: dict[str, Any] = {
            "progress": status.progress,
            "progress_msg": status.progress_msg,
            "log_size": status.log_size,
        }
        if status.job_id is not None:
            fields["slurm_job"] = status.job_id
        if status.gpus and not run["gpus"]:  # a cluster's job: Slurm said which GPUs
            fields["gpus"] = list(status.gpus)
        held = run["state"] == "queued" and run["host"] == host  # in the host's own queue
        if (
            run["state"] == "cancelled"
            and status.job_id is not None
            and status.state in (protocol.RUN_PENDING, protocol.RUN_RUNNING)
        ):
            # Cancelled in the catalog while its submit was under way: cancel it there too.
            self.spawn(self.cancel_on_host(host, status.run_id))
            return
        if status.state == protocol.RUN_PENDING:
            from cvtui.engine.hosts_slurm import SlurmKind

            kind = self.kinds["slurm"]
            assert isinstance(kind, SlurmKind)  # only a Slurm login node's agent says pending
            kind.on_pending(self, host, run, status)
            return
        if status.state in protocol.RUN_FINAL_STATES:
            if status.started and not run["started"]:
                fields["started"] = status.started
            ended = self.catalog.transition_run(
                status.run_id,
                status.state,
                expect=list(ACTIVE_STATES),
                detail=status.reason,
                exit_code=status.exit_code,
                ended=status.ended or time.time(),
                reason=status.reason,
                run_dir=status.run_dir or run["run_dir"],
                work_dir=status.work_dir or run["work_dir"],
                final_by=status.recorded_by,
                pgid=status.pgid,
                **fields,
            )
            if ended:
                self.run_ended(status.run_id)
            if ended and status.state in (protocol.RUN_FAILED, protocol.RUN_LOST):
                self.retry(run, status.reason or status.state)
            elif ended and status.state == protocol.RUN_CANCELLED and preempted(status.reason):
                self.preemption.ended(run["id"])
                if (run.get("spec") or {}).get("resume"):
                    self.retry(run, status.reason or "preempted", preempted=True)
            if not ended:
                self.correct(run, status)
            self.wake.set()  # GPUs are free again
        elif status.state == protocol.RUN_RUNNING and (run["state"] == "dispatching" or held):
            started = self.catalog.transition_run(
                status.run_id,
                "running",
                expect=[run["state"]],
                run_dir=status.run_dir,
                work_dir=status.work_dir or None,
                supervisor_pid=status.supervisor_pid,
                pgid=status.pgid,
                started=status.started,
                reason=None,
                **fields,
            )
            session = self.engine.sessions.get(host)
            if started and session is not None:
                self.kinds[session.host.kind].on_running(self, session, status.run_id)
        else:
            self.catalog.update_run(status.run_id, pgid=status.pgid, **fields)
            session = self.engine.sessions.get(host)
            if "gpus" in fields and session is not None:
                self.kinds[session.host.kind].on_running(self, session, status.run_id)
        session = self.engine.sessions.get(host)
        if session is not None:
            self.sync.on_run_status(session, status)

    async def reconcile(self, session: HostSession, run_ids: list[str] | None = None) -> None:
        """Bring the catalog up to date with what the host says about our active runs."""
        client = session.client
        if client is None:
            return
        name = session.host.name
        whole_host = run_ids is None
        if whole_host:
            self.sync.host_ready(session)
        if run_ids is None:
            # Queued runs with a host are held in its own queue (Slurm jobs pending there).
            active = self.catalog.list_runs(states=list(ACTIVE_STATES), host=name)
            run_ids = [r["id"] for r in active]
            # Runs taken for lost (their supervisor looked gone, their run dir missing): the
            # host may have the supervisor's own record of how they ended by now.
            since = time.time() - RECHECK_LOST_S
            run_ids += [
                r["id"]
                for r in self.catalog.list_runs(states=["lost"], host=name)
                if r["final_by"] != protocol.RECORDED_BY_SUPERVISOR and (r["ended"] or 0) > since
            ]
        if not run_ids:
            self.reconciled.add(name)
            return
        reply = await client.call(protocol.OP_RUNS, run_ids=run_ids)
        statuses: dict[str, RunStatus] = {}
        unreadable: set[str] = set()  # runs the host answered nonsense for: left as they are
        for item in reply.get("runs", []):
            try:
                reported = RunStatus.from_wire(item)
            except protocol.ProtocolError as exc:
                log.warning("host %s: %s", name, exc)
                unreadable.add(str(item.get("run_id")) if isinstance(item, dict) else "")
                continue
            statuses[reported.run_id] = reported
        for run_id in run_ids:
            if run_id in unreadable:
                continue
            status = statuses.get(run_id)
            if status is not None:
                self.on_run_status(name, status)
                continue
            run = self.catalog.get_run(run_id)
            if run is None or run["state"] == "lost":
                continue
            if run["state"] == "dispatching":
                self.requeue(run_id, f"the start never reached {name}")
            elif run["state"] in ("running", "queued") and self.catalog.transition_run(
                run_id,
                "lost",
                expect=[run["state"]],
                reason=f"run dir missing on {name}",
                detail=f"run dir missing on {name}",
                ended=time.time(),
            ):
                self.run_ended(run_id)
                self.retry(run, f"run dir missing on {name}")
        still_active = [i for i, s in statuses.items() if s.state not in protocol.RUN_FINAL_STATES]
        if still_active:
            await client.call(protocol.OP_WATCH, run_ids=still_active)
        if whole_host:
            self.reconciled.add(name)

    async def refresh(self, run_ids: list[str], timeout_s: float) -> bool:
        """Ask each host of these running runs about them now (one round trip per host) and
        wait for the syncs that news started. False when a host did not answer in time."""
        by_host: dict[str, list[str]] = {}
        for run_id in run_ids:
            run = self.catalog.get_run(run_id)
            # dispatching runs are left out: their start may be in flight, and a host that
            # does not know them yet must not send them back to the queue
            if run is not None and run["state"] == "running" and run["host"]:
                by_host.setdefault(run["host"], []).append(run_id)

        async def ask(name: str, ids: list[str]) -> None:
            session = self.engine.sessions.get(name)
            if session is not None and session.client is not None:
                await self.reconcile(session, ids)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            results = await asyncio.wait_for(
                asyncio.gather(
                    *(ask(n, ids) for n, ids in by_host.items()), return_exceptions=True
                ),
                timeout_s,
            )
        except TimeoutError:
            return False
        fresh = not any(isinstance(r, BaseException) for r in results)
        while any(run_id in self.pulls for run_id in run_ids):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return fresh

    def settled(self, run_ids: list[str]) -> bool:
        """Whether these runs ended and their final sync is done (outputs all in)."""
        for run_id in run_ids:
            run = self.catalog.get_run(run_id)
            if run is None:
                continue
            if run["state"] not in protocol.RUN_FINAL_STATES:
                return False
            if run_id in self.pulls:
                return False
            if run_id not in self.sync.final_asked and run["sync_status"] == "syncing":
                return False  # ended before this engine: another engine's pass is running
        return True

    async def wait_settled(self, run_ids: list[str], timeout_s: float) -> bool:
        """settled(run_ids), waited for at most timeout_s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.settled(run_ids):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    # -- commands from the CLI and TUI ----------------------------------------------------
    async def process_commands(self) -> None:
        for command in self.catalog.pending_commands():
            if command["kind"] == "cancel":
                await self.cancel(command)
            elif command["kind"] == "sync":
                self.sync.start_command(command)
            elif command["kind"] == "components_sync":
                from cvtui.engine.components_sync import run_components_sync

                self.spawn(run_components_sync(self.engine, command))
            else:
                self.catalog.finish_command(
                    command["id"], ok=False, result=f"unknown command {command['kind']!r}"
                )

    async def cancel_on_host(self, host: str, run_id: str) -> None:
        session = self.engine.sessions.get(host)
        if session is None or session.client is None:
            return
        try:
            await session.client.call(protocol.OP_CANCEL, run_id=run_id)
        except (RemoteError, TimeoutError, AgentClosedError) as exc:
            log.warning("run %s: cancel on %s failed: %s", run_id, host, exc)

    async def cancel(self, command: dict[str, Any]) -> None:
        run_id = command["args"].get("run_id", "")
        run = self.catalog.get_run(run_id)
        if run is None:
            self.catalog.finish_command(command["id"], ok=False, result=f"no run {run_id}")
            return
        if run["state"] not in ACTIVE_STATES:
            self.catalog.finish_command(command["id"], ok=True, result=f"already {run['state']}")
            return
        by = command["args"].get("by")
        if (
            run["state"] == "queued"
            and not run["host"]
            and self.catalog.transition_run(
                run_id,
                "cancelled",
                expect=["queued"],
                reason="cancelled before it started",
                detail=by,
                ended=time.time(),
            )
        ):
            self.catalog.finish_command(command["id"], ok=True, result="cancelled while queued")
            log.info(
                "run %s: cancelled by %s while queued",
                run_id,
                by,
                extra={"event": "cancel", "run": run_id},
            )
            return
        if run["state"] == "dispatching":
            return  # its start is in flight: the host has no run dir yet; asked again next pass
        session = self.engine.sessions.get(run["host"] or "")
        if session is None or session.client is None:
            return  # stays pending until the host is back
        grace = float(command["args"].get("grace", 10.0))
        try:
            reply = await session.client.call(protocol.OP_CANCEL, run_id=run_id, grace=grace)
        except RemoteError as exc:
            self.catalog.finish_command(command["id"], ok=False, result=exc.message)
            return
        except (TimeoutError, AgentClosedError):
            return
        self.catalog.finish_command(command["id"], ok=True, result=reply.get("state"))
        log.info(
            "run %s: cancel by %s on %s (SIGTERM, SIGKILL after %g s): %s",
            run_id,
            by,
            run["host"],
            grace,
            reply.get("state"),
            extra={"event": "cancel", "host": run["host"], "run": run_id},
        )
