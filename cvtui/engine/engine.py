"""The engine loop: one session per host, telemetry into the catalog, live inventory reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from cvtui.catalog import Catalog
from cvtui.catalog.history import RAW_GROUP_S
from cvtui.catalog.rows import raw_history_row
from cvtui.engine.agent_build import AgentBundle, build_agent
from cvtui.engine.agent_client import AgentClient, AgentClosedError
from cvtui.engine.connections import Backoff, HostConnectError, classify_error, open_connection
from cvtui.engine.control import ControlServer
from cvtui.engine.deploy import RootCheck, ensure_agent, launch_agent, open_sftp, secure_root
from cvtui.engine.disk_usage import poll_disk_usage
from cvtui.engine.lock import EngineLock, lock_holder  # re-exported: callers know them here
from cvtui.engine.notify import Notifier
from cvtui.engine.provenance import capture_host_environment
from cvtui.engine.runner import RunController
from cvtui.engine.tasks import TaskSet, log_failure
from cvtui.engine.transfer import Progress
from cvtui.engine.usage import IdleGpu, UsageTracker
from cvtui.errors import InventoryError
from cvtui.inventory import Host, Inventory, Policy, watch_inventory
from remote_agent import protocol
from remote_agent.protocol import ClusterSample, Hello, ProtocolError, RunStatus, Telemetry

log = logging.getLogger("cvtui.engine")

FLUSH_INTERVAL_S = 0.2
COMPACT_INTERVAL_S = 300.0  # history compaction: hourly work, checked every 5 min
# Hours of backlog one compaction pass takes on before it comes back: one, so a stopping
# engine waits at most for one hour's tiering (about a second) in its worker thread.
COMPACT_MAX_HOURS = 1
USAGE_FLUSH_S = 10.0  # energy and idle episodes are written this often
LAG_PROBE_S = 0.5  # the loop-lag probe sleeps this long and measures how late it wakes
EXIT_NOT_FOUND = 127  # what a POSIX shell returns when `exec python3` finds no python3
ENVIRONMENT_DELAY_S = 30.0  # host environments wait this long at most for the connect burst
ENVIRONMENT_CAPTURES = 4  # host environments read at once, engine-wide


@dataclass
class HostSession:
    """Keeps one host connected: connect, deploy, start the agent, stream, reconnect."""

    host: Host
    policy: Policy
    engine: Engine
    connect_timeout_s: float = 10.0
    client: AgentClient | None = None
    hello: Hello | None = None
    uploaded: bool = False  # whether the last connect had to upload the agent
    backoff: Backoff = field(default_factory=Backoff)
    conn: asyncssh.SSHClientConnection | None = None
    latest: Telemetry | None = None  # the last telemetry sample
    latest_at: float = 0.0  # controller clock when it arrived
    known_code: set[str] = field(default_factory=set)  # code snapshots known to be on the host
    known_inputs: set[str] = field(default_factory=set)  # input blobs known to be on the host
    told: set[str] = field(default_factory=set)  # telemetry problems logged already
    _sftp: asyncssh.SFTPClient | None = None
    _sftp_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def sftp(self) -> asyncssh.SFTPClient:
        """One SFTP session per connection, opened on first use (once, however many ask)."""
        async with self._sftp_lock:
            if self._sftp is None:
                if self.conn is None:
                    raise AgentClosedError(f"{self.host.name} is not connected")
                self._sftp = await open_sftp(self.conn, self.host)
            return self._sftp

    async def run(self) -> None:
        while True:
            try:
                await self.connect_and_serve()
                reason, state = "connection lost", "disconnected"
            except HostConnectError as exc:
                reason, state = exc.reason, exc.state
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one host must never take the engine down
                failure = classify_error(self.host, exc)
                reason, state = failure.reason, failure.state
                log.debug("host %s: %r", self.host.name, exc)
            self.client = None
            self.conn = None
            self._sftp = None
            self.latest = None
            self.engine.host_failed(self.host.name, state, reason)
            await asyncio.sleep(self.backoff.next_delay())

    async def connect_and_serve(self) -> None:
        self.engine.set_state(self.host.name, "connecting", None)
        conn = await open_connection(self.host, self.policy, self.connect_timeout_s)
        try:
            self.conn = conn
            client = await self.start_agent(conn)
            self.client = client
            self.backoff.reset()
            self.engine.runs.spawn(self.engine.runs.reconcile(self))
            # Per-owner disk usage of the host's `disk_usage:` paths, polled rarely.
            self.engine.runs.spawn(poll_disk_usage(self.engine.catalog, lambda: self.host, client))
            await client.closed.wait()
        finally:
            self.conn = None
            conn.close()

    async def start_agent(self, conn: asyncssh.SSHClientConnection) -> AgentClient:
        bundle = self.engine.bundle
        sftp = await self.sftp()
        try:
            root = await secure_root(sftp, self.host)
        except asyncssh.SFTPError as exc:
            reason = f"cannot use host root {self.host.root}: {exc.reason}"
            raise HostConnectError(self.host.name, reason) from exc
        self.engine.root_checked(self.host.name, root)
        for attempt in range(2):
            path, self.uploaded = await ensure_agent(
                conn, self.host, bundle, force=attempt > 0, sftp=sftp, root_secured=True
            )
            client = await launch_agent(
                conn, self.host, path, self.policy.interval_s, self.on_event
            )
            if client.preamble:  # logged by launch_agent; shown in `hosts` too
                self.engine.host_warning(
                    self.host.name,
                    f"its login shell prints {client.preamble[0]!r} before every command "
                    "(an rc file such as ~/.bashrc), skipped",
                )
            hello = client.hello
            assert hello is not None  # launch_agent returns after the handshake
            spoken = hello.protocol
            if hello.protocol == protocol.PROTOCOL_VERSION:
                self.hello = hello
                self.engine.agent_started(self.host.name, hello, bundle.hash)
                # Packages and GPU driver for provenance, off the dispatch path.
                self.engine.runs.spawn(self.engine.capture_environment(self))
                return client
            await client.close()
        raise HostConnectError(
            self.host.name,
            f"agent speaks protocol {spoken}, controller {protocol.PROTOCOL_VERSION}",
        )

    def on_event(self, message: dict[str, Any]) -> None:
        kind = message.get("event")
        try:
            if kind == protocol.EVENT_TELEMETRY:
                sample = Telemetry.from_wire(message)
                for problem in sample.problems:
                    if problem not in self.told:  # once per connection, not every second
                        self.told.add(problem)
                        log.warning("host %s: telemetry: %s", self.host.name, problem)
                self.latest, self.latest_at = sample, time.time()
                self.engine.telemetry_received(self.host.name, sample)
            elif kind == protocol.EVENT_RUN:
                self.engine.runs.on_run_status(self.host.name, RunStatus.from_wire(message))
            elif kind == protocol.EVENT_FILES:
                self.engine.runs.sync.on_files_event(self.host.name, message)
        except ProtocolError as exc:
            log.warning("host %s: %s", self.host.name, exc)


class Engine:
    """Owns the host sessions for one inventory and writes what they see into the catalog."""

    def __init__(
        self,
        inventory: Inventory,
        catalog: Catalog,
        *,
        inventory_path: Path | None = None,
        bundle: AgentBundle | None = None,
        on_inventory_error: Callable[[InventoryError], None] | None = None,
        only: set[str] | None = None,
        idle_exit_s: float | None = None,
    ) -> None:
        self.inventory = inventory
        self.catalog = catalog
        self.inventory_path = inventory_path
        self.bundle = bundle or build_agent()
        self.on_inventory_error = on_inventory_error
        self.only = only  # connect to these hosts only (a short-lived engine for one command)
        self.sessions: dict[str, HostSession] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}  # one per host session
        # The flush and run loops, the inventory watch and each reload it applies.
        self.background = TaskSet(log)
        # Set when a host sent its first telemetry or failed: `cvtui hosts` waits on these.
        self.answered = {h.name: asyncio.Event() for h in inventory.hosts if self.wants(h.name)}
        self.inventory_error: InventoryError | None = None
        self._pending: list[tuple[str, Telemetry]] = []
        self._pending_times: list[float] = []
        self._troubles: dict[str, str] = {}  # host -> why it cannot take work, as last said
        self._warnings: dict[str, list[str]] = {}  # host -> problems of a working host, now
        self._clusters: dict[str, ClusterSample] = {}  # host -> the cluster sample last stored
        self._apply_lock = asyncio.Lock()  # edits in quick succession apply one after another
        self._environment_slots = asyncio.Semaphore(ENVIRONMENT_CAPTURES)
        self.notifier = Notifier(lambda: self.inventory.notify)
        self.runs = RunController(self)
        # Stop by itself after this long with nothing queued or running and no client asking
        # (a detached engine `cvtui run` started); None: run until stopped.
        self.idle_exit_s = idle_exit_s
        self.control = ControlServer(self, catalog.path.parent)
        self.usage = UsageTracker(catalog, lambda: self.inventory.policy, self._gpu_idle)
        # Per host, samples not yet in telemetry_raw: written RAW_GROUP_S at a time.
        self._raw: dict[str, list[tuple[float, Telemetry]]] = {}
        self.loop_lag_s = 0.0  # how late the event loop last woke a timer (seconds)
        self.last_compaction: float | None = None  # unix seconds of the last finished pass

    # -- what sessions report -------------------------------------------------------------
    def set_state(self, name: str, state: str, reason: str | None) -> None:
        self._troubles.pop(name, None)  # a new connection says its troubles anew
        self._warnings.pop(name, None)
        if name in self.sessions:
            self.catalog.set_host_state(name, state, reason)

    @property
    def drained(self) -> set[str]:
        """Hosts that take no new runs (`cvtui hosts drain`), as the catalog says now."""
        return self.catalog.drained_hosts()

    def host_failed(self, name: str, state: str, reason: str) -> None:
        log.info("host %s: %s (%s)", name, state, reason, extra={"event": state, "host": name})
        self.usage.host_lost(name)
        self.notifier.host_failed(name, state, reason)
        self.set_state(name, state, reason)
        if name in self.answered:
            self.answered[name].set()

    def root_checked(self, name: str, check: RootCheck) -> None:
        """Say when a host root was tightened or is open to other users (log and catalog)."""
        note = check.note()
        if note is None:
            return
        log.warning("host %s: %s", name, note, extra={"event": "root_mode", "host": name})
        self.host_warning(name, note)

    def host_warning(self, name: str, note: str) -> None:
        """A problem of a host that works, shown as its reason beside any other it has."""
        notes = self._warnings.setdefault(name, [])
        if note not in notes:
            notes.append(note)
        if name in self.sessions:
            self.catalog.set_host_warning(name, "; ".join(notes))

    def agent_started(self, name: str, hello: Hello, agent_hash: str) -> None:
        log.info(
            "host %s: agent up (python %s, %s)",
            name,
            hello.python,
            hello.backend,
            extra={"event": "agent_up", "host": name},
        )
        if name in self.sessions:
            self.catalog.record_hello(name, hello, agent_hash)

    def telemetry_received(self, name: str, sample: Telemetry) -> None:
        session = self.sessions.get(name)
        if session is None:
            return
        if sample.cluster is not None:
            self.cluster_received(name, sample)
        trouble = self.runs.kinds[session.host.kind].health(sample)
        if trouble is not None:  # the agent answers but the host cannot take work (slurmctld down)
            if self._troubles.get(name) != trouble:
                self._troubles[name] = trouble
                self.host_failed(name, "error", trouble)
            return
        self._troubles.pop(name, None)
        arrived = time.time()
        self._pending.append((name, sample))
        self._pending_times.append(arrived)
        self._raw.setdefault(name, []).append((arrived, sample))
        self.usage.observe(name, sample, arrived)
        self.notifier.host_seen(name)
        if not self.answered[name].is_set():
            # The first sample of a host is written at once so `cvtui hosts` can print it.
            self.flush()
            self.answered[name].set()

    def cluster_received(self, name: str, sample: Telemetry) -> None:
        """Keep a cluster's partitions, nodes and jobs when they changed."""
        assert sample.cluster is not None
        if self._clusters.get(name) != sample.cluster:
            self._clusters[name] = sample.cluster
            self.catalog.record_cluster(name, sample.cluster)

    def flush(self, *, final: bool = False) -> None:
        """Write pending telemetry: current state now, raw history in rows of RAW_GROUP_S."""
        history = self._due_history(final)
        if not self._pending:
            if history:
                self.catalog.append_raw_history(history)
            return
        batch, self._pending = self._pending, []
        received, self._pending_times = self._pending_times[-1], []
        self.catalog.record_telemetry(batch, received=received, history=history)

    def _due_history(self, final: bool) -> list[tuple[str, float, float, int, bytes]]:
        # A few seconds a row: compaction later reads and deletes 5x fewer rows.
        now = time.time()
        rows = []
        for name in list(self._raw):
            samples = self._raw[name]
            if final or now - samples[0][0] >= RAW_GROUP_S:
                del self._raw[name]
                if name in self.sessions or final:
                    rows.append(
                        raw_history_row(name, [s for _, s in samples], [t for t, _ in samples])
                    )
        return rows

    def _gpu_idle(self, idle: IdleGpu) -> None:
        self.notifier.gpu_idle(
            idle.host,
            idle.gpu,
            user=idle.holder.user,
            run=None if idle.holder.run_id is None else self.catalog.get_run(idle.holder.run_id),
            since=idle.since,
            util=idle.util,
            mem_used=idle.mem_used,
            simulated=idle.simulated,
        )

    async def capture_environment(self, session: HostSession) -> None:
        """A connected host's environment for provenance, once the connect burst is over.

        Each capture starts a python on its host: while hosts still connect, those would
        compete with agent starts (on a shared bastion, or hosts sharing a machine), so they
        wait until every host has answered (at most ENVIRONMENT_DELAY_S), a few at a time.
        """
        since = time.time()  # runs dispatched from now on get the driver it reads
        waits = [event.wait() for event in self.answered.values()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), ENVIRONMENT_DELAY_S)
        async with self._environment_slots:
            await capture_host_environment(self.catalog, session, since=since)

    # -- lifecycle ------------------------------------------------------------------------
    def wants(self, name: str) -> bool:
        return self.only is None or name in self.only

    def start_session(self, host: Host) -> None:
        session = HostSession(host, self.inventory.policy, self)
        self.sessions[host.name] = session
        self.answered.setdefault(host.name, asyncio.Event())
        task = asyncio.create_task(session.run(), name=f"host-{host.name}")
        task.add_done_callback(lambda done: log_failure(done, log))
        self.tasks[host.name] = task

    async def stop_session(self, name: str) -> None:
        self.sessions.pop(name, None)
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def apply_inventory(self, new: Inventory) -> None:
        """Start, stop and restart sessions so they match new, without touching the rest."""
        async with self._apply_lock:
            await self._apply_inventory(new)

    async def _apply_inventory(self, new: Inventory) -> None:
        old_hosts = {h.name: h for h in self.inventory.hosts}
        new_hosts = {h.name: h for h in new.hosts}
        policy_changed = new.policy.session_key() != self.inventory.policy.session_key()
        self.inventory = new
        self.inventory_error = None
        self.catalog.sync_hosts(new.hosts)
        self.catalog.set_host_kinds({h.name: h.kind for h in new.hosts})
        for name in old_hosts.keys() - new_hosts.keys():
            await self.stop_session(name)
            self.answered.pop(name, None)
        for name, host in new_hosts.items():
            if not self.wants(name):
                continue
            old = old_hosts.get(name)
            if old is None:
                self.start_session(host)
            elif policy_changed or old.settings_key() != host.settings_key():
                await self.stop_session(name)
                self.start_session(host)
            else:
                self.sessions[name].host = host  # tags/max_runs: no reconnect needed

    # -- what a command borrowing this engine may ask (its query surface) -----------------
    def all_answered(self) -> bool:
        """Whether every host sent its first telemetry or failed."""
        return all(event.is_set() for event in self.answered.values())

    def hosts_settled(self, names: set[str]) -> bool:
        """Whether these hosts were reconciled (or answered and could not be reached), and no
        sync is under way: the catalog holds their news."""
        done = self.runs.reconciled | {
            name
            for name, event in self.answered.items()
            if event.is_set() and (name not in self.sessions or not self.sessions[name].client)
        }
        return names <= done and not self.runs.pulls

    def syncing(self, run_ids: list[str] | None = None) -> bool:
        """Whether a sync is under way (for these runs, when given)."""
        if run_ids is None:
            return bool(self.runs.pulls)
        return any(run_id in self.runs.pulls for run_id in run_ids)

    def sync_progress(self) -> Progress:
        """Bytes and files of the syncs this engine runs, so far."""
        return self.runs.sync.progress

    async def wait_answered(self, timeout_s: float) -> None:
        """Wait until every host has sent telemetry or failed, at most timeout_s."""
        waits = [event.wait() for event in self.answered.values()]
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), timeout_s)
        self.flush()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until stop is set; then close every session (agents exit on EOF)."""
        self.catalog.sync_hosts(self.inventory.hosts)
        self.catalog.set_host_kinds({h.name: h.kind for h in self.inventory.hosts})
        self.catalog.close_idle_episodes()  # an earlier engine's: nobody follows them now
        for host in self.inventory.hosts:
            if self.wants(host.name):
                self.start_session(host)
        await self.control.start()
        self.background.spawn(self._flush_loop(stop), name="flush")
        self.background.spawn(self.runs.run(stop), name="runs")
        self.background.spawn(self._lag_loop(stop), name="loop-lag")
        if self.idle_exit_s is not None:
            self.background.spawn(self._idle_exit(stop, self.idle_exit_s), name="idle-exit")
        if self.only is None:  # a short-lived engine (one command) leaves history alone
            self.background.spawn(self._compact_loop(stop), name="compact")
        if self.inventory_path is not None:
            self.background.spawn(
                watch_inventory(
                    self.inventory_path, self._inventory_changed, self._inventory_invalid, stop
                ),
                name="inventory-watch",
            )
        try:
            await stop.wait()
        finally:
            await self.control.close()
            # Loops and reloads first, so none starts a session or a run while the rest stops.
            await self.background.cancel_all()
            await self.runs.close()
            await self.notifier.close()
            for name in list(self.sessions):
                await self.stop_session(name)
            self.flush(final=True)
            self.usage.flush()

    def busy(self) -> bool:
        """Whether anything needs this engine: runs queued or on hosts, commands pending,
        syncs under way."""
        summary = self.catalog.runs_summary()
        active = summary["queued"] + summary["dispatching"] + summary["running"]
        return bool(active or self.catalog.pending_commands() or self.runs.pulls)

    async def _idle_exit(self, stop: asyncio.Event, idle_s: float) -> None:
        quiet_since = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(min(5.0, idle_s / 4))
            now = time.monotonic()
            if self.busy():
                quiet_since = now
                continue
            quiet = now - max(quiet_since, self.control.last_request)
            if quiet >= idle_s:
                log.info(
                    "nothing queued or running and no client for %.0f s: stopping",
                    quiet,
                    extra={"event": "idle_exit"},
                )
                stop.set()

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        last_usage = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(FLUSH_INTERVAL_S)
            try:
                self.flush()
                if time.monotonic() - last_usage > USAGE_FLUSH_S:
                    last_usage = time.monotonic()
                    self.usage.flush()
            except Exception:  # a busy or full disk must not end the engine
                log.exception("catalog write failed")

    async def _compact_loop(self, stop: asyncio.Event) -> None:
        """Tier raw history, merge and expire, in a thread: hours of backlog never stall
        telemetry, which waits at most for one short write transaction."""
        while not stop.is_set():
            wait_s = COMPACT_INTERVAL_S
            try:
                report = await asyncio.to_thread(
                    self.catalog.compact_history,
                    None,
                    self.inventory.policy.history,
                    max_hours=COMPACT_MAX_HOURS,
                )
                self.last_compaction = time.time()
                if report.hours or report.expired:
                    log.info(
                        "history: %d h tiered, %d windows merged, %d chunks expired",
                        report.hours,
                        report.merged,
                        report.expired,
                        extra={"event": "compact"},
                    )
                if report.hours >= COMPACT_MAX_HOURS:
                    wait_s = FLUSH_INTERVAL_S  # a backlog: go on soon
            except Exception:
                log.exception("history compaction failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait_s)

    async def _lag_loop(self, stop: asyncio.Event) -> None:
        """How late the loop runs a timer: what `engine loop lag` reports to Prometheus."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            asked = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            self.loop_lag_s = max(0.0, loop.time() - asked - LAG_PROBE_S)

    def _inventory_changed(self, inventory: Inventory) -> None:
        log.info("inventory reloaded: %d hosts", len(inventory.hosts))
        self.background.spawn(self.apply_inventory(inventory), name="apply-inventory")

    def _inventory_invalid(self, error: InventoryError) -> None:
        log.error("inventory edit rejected, keeping the last good one: %s", error)
        self.inventory_error = error
        if self.on_inventory_error is not None:
            self.on_inventory_error(error)


__all__ = ["Engine", "EngineLock", "HostSession", "lock_holder"]
