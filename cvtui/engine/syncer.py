"""The engine's sync half: keep running runs' outputs mirrored, and sync once more at their end.

One task per run at a time: requests (a run started running, the agent pushed changed files,
the run ended, `cvtui sync` asked) merge into what that task does next. A running run is
watched by its host's agent, which pushes EVENT_FILES on size/mtime changes; a final pass
verifies whole-file digests and parses last lines. When the host goes away the run's files
stay `outdated` until its session is back (reconcile then asks again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cvtui.engine.host_files import HostGone
from cvtui.engine.ssh_files import SshSource
from cvtui.engine.sync import RunSync, output_globs
from cvtui.engine.tasks import log_failure
from cvtui.engine.transfer import FileResult, Progress
from cvtui.mirror import UnsafePathError, write_run_record
from remote_agent import protocol
from remote_agent.protocol import FileEntry, FileListing, ProtocolError, RunStatus

if TYPE_CHECKING:
    from cvtui.engine.engine import Engine, HostSession

log = logging.getLogger("cvtui.engine.sync")

CONNECT_WAIT_S = 30.0  # how long a sync command waits for a host to connect
SETTLED_STATES = ("synced", "skipped", "vanished")


@dataclass
class SyncRequest:
    """What a run's sync task does next; requests for the same run merge."""

    watch: bool = False  # (re)start the agent's watch; its reply is a full listing
    full: bool = False  # list the run dir and sync whatever changed
    entries: dict[str, FileEntry] = field(default_factory=dict)  # changes the agent pushed
    verify: bool = False  # compare digests of every file, whatever the stats say
    final: bool = False  # the run ended: verify appended files, parse last lines

    def merge(self, other: SyncRequest) -> None:
        self.watch |= other.watch
        self.full |= other.full
        self.verify |= other.verify
        self.final |= other.final
        self.entries.update(other.entries)


@dataclass
class PassReport:
    """How a run's last sync pass went (the `sync` command's result, per run)."""

    files: int = 0  # files transferred or checked in this pass
    fetched: int = 0  # bytes read from the host
    fetched_by_file: dict[str, int] = field(default_factory=dict)  # files that cost bytes
    states: dict[str, int] = field(default_factory=dict)  # files per state, whole run
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "fetched": self.fetched,
            "fetched_by_file": self.fetched_by_file,
            "states": self.states,
            "error": self.error,
        }


class Syncer:
    """Runs' sync tasks for one engine; `tasks` is what `engine.runs.pulls` shows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.catalog = engine.catalog
        self.home = engine.catalog.path.parent
        self.tasks: dict[str, asyncio.Task[None]] = {}  # run id -> its sync task
        self.pending: dict[str, SyncRequest] = {}
        self.watching: dict[str, object] = {}  # run id -> the agent client that watches it
        self.final_asked: set[str] = set()  # runs whose final pass is queued or done
        self.commands: set[int] = set()  # sync commands being served
        self.progress = Progress()
        self.reports: dict[str, PassReport] = {}
        # Passes begun and ended per run (they run one at a time): a command waits for the end
        # of the first pass that began after its request, not for the run to go quiet.
        self.passes_begun: dict[str, int] = {}
        self.passes_ended: dict[str, int] = {}
        # Bytes fetched per run and file by ended passes, plus the pass running now: a command
        # reports what came for its runs while it waited, whichever pass fetched it.
        self.fetched_done: dict[str, dict[str, int]] = {}
        self.running_syncs: dict[str, RunSync] = {}
        self.recorded: dict[str, str] = {}  # run id -> its state in the mirrored record
        self._pass_ended = asyncio.Event()  # set (and replaced) whenever a pass or task ends

    # -- what the engine hears -------------------------------------------------------------

    def on_run_status(self, session: HostSession, status: RunStatus) -> None:
        run_id = status.run_id
        if status.state in protocol.RUN_FINAL_STATES:
            if run_id not in self.final_asked:
                self.final_asked.add(run_id)
                self.request(run_id, SyncRequest(full=True, final=True))
        elif (
            status.state == protocol.RUN_RUNNING
            and session.client is not None
            and self.watching.get(run_id) is not session.client
        ):
            self.watching[run_id] = session.client
            self.request(run_id, SyncRequest(watch=True))

    def on_files_event(self, host: str, message: dict[str, Any]) -> None:
        run_id = message.get("run_id")
        if not isinstance(run_id, str) or self.catalog.get_run(run_id) is None:
            return
        raw = message.get("files")
        entries: dict[str, FileEntry] = {}
        full = bool(message.get("removed"))
        for item in raw if isinstance(raw, list) else []:
            try:
                entry = FileEntry.from_wire(item)
            except ProtocolError as exc:
                # That entry fails alone: a full listing records it with its reason.
                log.warning("host %s: run %s: %s", host, run_id, exc)
                full = True
                continue
            entries[entry.path] = entry
        self.request(run_id, SyncRequest(entries=entries, full=full or not isinstance(raw, list)))

    def host_ready(self, session: HostSession) -> None:
        """A host (re)connected: finish what earlier passes left outdated on its ended runs."""
        for run in self.catalog.list_runs(host=session.host.name):
            if run["state"] in protocol.RUN_FINAL_STATES and run["sync_status"] in (
                "outdated",
                "syncing",
            ):
                self.final_asked.add(run["id"])
                self.request(run["id"], SyncRequest(full=True, final=True))

    # -- tasks ----------------------------------------------------------------------------

    def request(self, run_id: str, request: SyncRequest) -> None:
        if run_id in self.pending:
            self.pending[run_id].merge(request)
        else:
            self.pending[run_id] = request
        if run_id not in self.tasks:
            task = asyncio.create_task(self._drain(run_id), name=f"sync-{run_id}")
            self.tasks[run_id] = task
            task.add_done_callback(lambda done: self._task_done(run_id, done))

    async def _drain(self, run_id: str) -> None:
        while (request := self.pending.pop(run_id, None)) is not None:
            self.passes_begun[run_id] = self.passes_begun.get(run_id, 0) + 1
            try:
                self.reports[run_id] = await self._pass(run_id, request)
            except HostGone as exc:
                self.pending.pop(run_id, None)  # the reconnect asks again
                self.watching.pop(run_id, None)
                if request.final:
                    self.final_asked.discard(run_id)
                self.reports[run_id] = PassReport(error=str(exc))
                self._set_run_status(run_id, "outdated")
                log.info("run %s: sync stopped: %s", run_id, exc)
                return
            except Exception as exc:  # one run's trouble must not stop the engine
                self.pending.pop(run_id, None)
                self.reports[run_id] = PassReport(error=f"{type(exc).__name__}: {exc}")
                self._set_run_status(run_id, "outdated")
                log.exception("run %s: sync failed", run_id)
                return
            finally:
                self.passes_ended[run_id] = self.passes_begun[run_id]
                self._wake()

    def _task_done(self, run_id: str, task: asyncio.Task[None]) -> None:
        self.tasks.pop(run_id, None)
        log_failure(task, log)
        self._wake()

    def _wake(self) -> None:
        """Wake whoever waits for a pass to end (they look again at what they wait for)."""
        ended, self._pass_ended = self._pass_ended, asyncio.Event()
        ended.set()

    async def _pass(self, run_id: str, request: SyncRequest) -> PassReport:
        run = self.catalog.get_run(run_id)
        if run is None:
            return PassReport(error="no such run")
        session = self.engine.sessions.get(run["host"] or "")
        if session is None:
            raise HostGone(f"host {run['host']!r} is not in the inventory")
        source = SshSource(session)
        # A run dir from before work dirs (a run dir but no work dir recorded) has its
        # outputs at its top; a listing, when one comes, says so itself.
        base = protocol.WORK_DIR if run["work_dir"] or not run["run_dir"] else ""
        sync = RunSync(
            self.catalog, self.home, source, run_id, output_globs(run["spec"]), self.progress, base
        )
        self.running_syncs[run_id] = sync
        try:
            return await self._sync_pass(run_id, request, source, sync)
        finally:
            del self.running_syncs[run_id]
            done = self.fetched_done.setdefault(run_id, {})
            for path, count in sync.fetched_by_path.items():
                done[path] = done.get(path, 0) + count

    def fetched_so_far(self, run_id: str) -> dict[str, int]:
        """Bytes fetched for each file of a run by this engine so far (the running pass too)."""
        found = dict(self.fetched_done.get(run_id, {}))
        sync = self.running_syncs.get(run_id)
        for path, count in (sync.fetched_by_path if sync else {}).items():
            found[path] = found.get(path, 0) + count
        return found

    async def _sync_pass(
        self, run_id: str, request: SyncRequest, source: SshSource, sync: RunSync
    ) -> PassReport:
        self._set_run_status(run_id, "syncing")
        listing = None
        if request.watch:
            try:
                reply = await source.call(protocol.OP_FILES_WATCH, run_id=run_id, globs=sync.globs)
                listing = FileListing.from_wire(reply)
            except protocol.RemoteError as exc:  # not started yet, or already removed
                log.debug("run %s: no watch: %s", run_id, exc)
                self.watching.pop(run_id, None)
            except ProtocolError as exc:
                log.warning("run %s: bad listing: %s", run_id, exc)
        results: list[FileResult]
        try:
            if listing is not None or request.full or request.verify or request.final:
                results = await sync.run(
                    listing=listing, verify=request.verify, final=request.final
                )
            else:
                results = await sync.run(changed=list(request.entries.values()))
        except protocol.RemoteError as exc:
            if exc.code != protocol.E_NO_SUCH_FILE:
                raise
            results = []  # the run dir is gone from the host: nothing to sync there
        states = self.catalog.file_states(run_id)
        settled = all(count == 0 for state, count in states.items() if state not in SETTLED_STATES)
        self._set_run_status(run_id, "synced" if settled else "outdated")
        self._mirror_record(run_id, final=request.final)
        if request.final and self.watching.pop(run_id, None) is not None:
            with contextlib.suppress(HostGone, protocol.RemoteError):
                await source.call(protocol.OP_FILES_WATCH, run_id=run_id, watch=False)
        return PassReport(
            files=len(results),
            fetched=sum(r.fetched for r in results),
            fetched_by_file={r.path: r.fetched for r in results if r.fetched},
            states=states,
        )

    def _mirror_record(self, run_id: str, *, final: bool) -> None:
        """Keep the run's record in the mirror (for `cvtui reindex`) when its state changed
        since the last one written, and after a final pass (its files are all there)."""
        run = self.catalog.get_run(run_id)
        if run is None or (not final and self.recorded.get(run_id) == run["state"]):
            return
        record = {
            "run": run,
            "events": self.catalog.run_events(run_id),
            "files": self.catalog.files_of(run_id),
        }
        try:
            write_run_record(self.home, run_id, record)
        except (OSError, UnsafePathError) as exc:  # a full disk must not stop the sync
            log.warning("run %s: cannot write its mirrored record: %s", run_id, exc)
            return
        self.recorded[run_id] = run["state"]

    def _set_run_status(self, run_id: str, status: str) -> None:
        with contextlib.suppress(Exception):  # a busy catalog must not stop a sync
            self.catalog.update_run(run_id, sync_status=status)

    # -- `cvtui sync` ---------------------------------------------------------------------

    def start_command(self, command: dict[str, Any]) -> None:
        """Serve a queued `sync` command ({run_ids, verify}) once; it finishes with a report."""
        if command["id"] in self.commands:
            return
        self.commands.add(command["id"])
        self.engine.runs.spawn(self._serve_command(command))

    async def _serve_command(self, command: dict[str, Any]) -> None:
        args = command["args"]
        verify = bool(args.get("verify"))
        outcome: dict[str, dict[str, Any]] = {}
        runs = [self.catalog.get_run(str(i)) for i in args.get("run_ids", [])]
        wanted = []
        for run in runs:
            if run is None:
                continue
            if not run["host"] or run["state"] in ("queued", "dispatching"):
                outcome[run["id"]] = PassReport(error=f"not started ({run['state']})").to_json()
            elif run["host"] not in self.engine.sessions:
                outcome[run["id"]] = PassReport(
                    error=f"host {run['host']} is not in the inventory"
                ).to_json()
            else:
                wanted.append(run)
        before = {run["id"]: self.fetched_so_far(run["id"]) for run in wanted}
        await self._wait_connected({r["host"] for r in wanted})
        served: dict[str, int] = {}
        for run in wanted:
            final = run["state"] in protocol.RUN_FINAL_STATES
            # Whatever pass begins next takes this request (pending requests merge).
            served[run["id"]] = self.passes_begun.get(run["id"], 0) + 1
            self.request(run["id"], SyncRequest(full=True, verify=verify, final=final))
        for run in wanted:
            # A running run's watch keeps asking for passes: wait for ours, not for quiet.
            run_id = run["id"]
            while self.passes_ended.get(run_id, 0) < served[run_id] and run_id in self.tasks:
                await self._pass_ended.wait()
            report = self.reports.get(run_id) or PassReport(error="not synced")
            # What came for the run while the command waited, in this pass or one before it
            # (the watch of a running run, the final pass a reconnect asked for).
            came = {
                path: count - before[run_id].get(path, 0)
                for path, count in self.fetched_so_far(run_id).items()
                if count > before[run_id].get(path, 0)
            }
            report = PassReport(
                files=report.files,
                fetched=sum(came.values()),
                fetched_by_file=came,
                states=report.states,
                error=report.error,
            )
            outcome[run["id"]] = report.to_json()
        ok = all(o["error"] is None for o in outcome.values())
        self.catalog.finish_command(command["id"], ok=ok, result=outcome)
        self.commands.discard(command["id"])

    async def _wait_connected(self, hosts: set[str]) -> None:
        deadline = time.monotonic() + CONNECT_WAIT_S
        while time.monotonic() < deadline:
            pending = [
                h
                for h in hosts
                if (s := self.engine.sessions.get(h)) is not None
                and s.client is None
                and not (self.engine.answered.get(h) and self.engine.answered[h].is_set())
            ]
            if not pending:
                return
            await asyncio.sleep(0.05)
