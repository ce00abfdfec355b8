"""cvtui as a library: one lab (an inventory and a catalog home) to submit to, watch and query.

The CLI's commands are thin shells over `Lab`; the dashboard and notebooks use it too. It
reads the catalog itself and asks the engine to act over the engine's control socket
(cvtui/engine/control.py), starting one in the background when none runs. Nothing heavy is
imported up front: asyncssh only when a command must reach a host from this process.

    import cvtui
    lab = cvtui.Lab()                                  # same inventory and home rules as the CLI
    runs = lab.submit("sweep.yaml", set={"lr": [0.1, 0.01]}, host="gpu-01")
    lab.wait(runs, timeout=3600)                       # or: for event in lab.follow(runs): ...
    df = lab.metrics(runs)                             # a pandas DataFrame when pandas is there
    out = lab.exec("gpu-01", ["nvidia-smi"])           # stdout, stderr, exit_code

Errors are CvtuiError (and subclasses) carrying the message the CLI prints.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cvtui.errors import CvtuiError
from cvtui.results import (
    CancelResult,
    ExecResult,
    InferResult,
    MetricRow,
    RunEvent,
    Submitted,
)
from cvtui.states import ACTIVE_STATES

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.engine.client import EngineClient
    from cvtui.engine.forward import PortForward
    from cvtui.exec_terminal import Term
    from cvtui.following import RunFollower
    from cvtui.inventory import Inventory
    from cvtui.runspec import RunSpec

__all__ = [
    "CancelResult",
    "ExecResult",
    "InferResult",
    "Lab",
    "MetricRow",
    "RunEvent",
    "Submitted",
]

DECIDE_TIMEOUT_S = 15.0
SETTLE_ASK_S = 10.0  # one request to the engine waits this long for the final syncs
POLL_S = 0.1
MAX_POLL_S = 2.0
RECENT_S = 3600.0  # ps() without all=True also lists runs that ended this long ago
# What ps() (and `cvtui ps --json`) gives of each run.
RUN_KEYS = (
    "id", "name", "project", "user", "state", "priority", "host", "gpus", "progress",
    "progress_msg", "exit_code", "reason", "submitted", "started", "ended", "command",
    "params", "attempt",
)  # fmt: skip

# A run as the calls take it: an id, a unique id prefix or a name, a Submitted, or a row.
RunRef = str | Submitted | Mapping[str, Any]
Runs = RunRef | Sequence[RunRef]


class Lab:
    """One inventory and one catalog home, as the CLI resolves them (--inventory, --home)."""

    def __init__(
        self,
        inventory: str | Path | Inventory | None = None,
        home: str | Path | None = None,
    ) -> None:
        """inventory: its file (default as the CLI: $CVTUI_INVENTORY, ./inventory.yaml, the
        user config dir), or an Inventory already loaded; home: the catalog's directory
        (default $CVTUI_HOME, then the user data dir)."""
        from cvtui.inventory import Inventory, default_inventory_path
        from cvtui.paths import home_dir

        self._inventory: Inventory | None = None
        if isinstance(inventory, Inventory):
            self._inventory = inventory
            inventory = inventory.path if inventory.path != "<string>" else None
        self.inventory_path = default_inventory_path(str(inventory) if inventory else None)
        self.home = home_dir(home)
        self._catalog: Catalog | None = None

    def __repr__(self) -> str:
        return f"Lab(inventory={str(self.inventory_path)!r}, home={str(self.home)!r})"

    # -- resources ------------------------------------------------------------------------
    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            from cvtui.inventory import load_inventory

            self._inventory = load_inventory(self.inventory_path)
        return self._inventory

    def inventory_if_valid(self) -> Inventory | None:
        """The inventory, or None while its file is missing or invalid."""
        try:
            return self.inventory
        except CvtuiError:
            return None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            from cvtui.catalog import Catalog

            self._catalog = Catalog.open_home(self.home)
        return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def engine(self, *, start: bool = False) -> EngineClient | None:
        """The engine running for this home; with start, one is started in the background
        when none runs (it leaves by itself once idle)."""
        from cvtui.engine.client import EngineClient, start_detached_engine

        if start:
            return start_detached_engine(self.home, self.inventory_path.absolute())
        return EngineClient.find(self.home)

    # -- runs: references -----------------------------------------------------------------
    def resolve(self, ref: RunRef) -> dict[str, Any]:
        """The one run an id, an id prefix, a name, a Submitted or a row names; CvtuiError
        otherwise."""
        from cvtui.actions import resolve_run

        if isinstance(ref, Submitted):
            ref = ref.id
        elif isinstance(ref, Mapping):
            ref = str(ref["id"])
        return resolve_run(self.catalog, ref)

    def run_ids(self, runs: Runs) -> list[str]:
        """The ids of one run or several, in order."""
        if isinstance(runs, str | Submitted | Mapping):
            runs = [runs]
        return [self.resolve(r)["id"] for r in runs]

    def get(self, run: RunRef) -> dict[str, Any]:
        """A run's catalog row (JSON columns decoded)."""
        return self.resolve(run)

    # -- submit -----------------------------------------------------------------------------
    def prepare(
        self,
        config: str | Path,
        *,
        set: Mapping[str, Any] | None = None,  # the --set of the CLI
        overrides: Sequence[str] = (),
        host: str | None = None,
        hosts: Sequence[str] = (),
        gpus: int | None = None,
        priority: str | None = None,
        max_runs: int | None = None,
    ) -> list[RunSpec]:
        """The runs a config makes with these options, checked against the lab: a run that
        no host of the inventory could ever hold is refused, naming why.

        set: {"lr": [0.1, 0.01], "batch.size": 64} as `--set` (a list makes an axis);
        overrides: the `--set KEY=VALUE` texts themselves. host / hosts: `--host`.
        """
        from cvtui.submit import prepare_runs

        specs = prepare_runs(
            config,
            self.inventory,
            overrides=[*overrides, *set_overrides(set or {})],
            gpus=gpus,
            priority=priority,
            hosts=[*([host] if host else []), *hosts],
            max_runs=max_runs,
        )
        self.check_fits(specs)
        return specs

    def check_fits(self, specs: Sequence[RunSpec]) -> None:
        from cvtui.engine.scheduler import HostCapacity, never_fits

        known = self.catalog.gpu_counts()
        capacities = [
            HostCapacity(
                host.name,
                host.tags,
                len(host.gpus)
                if host.gpus is not None
                else (host.simulate.gpus if host.simulate else known.get(host.name)),
            )
            for host in self.inventory.hosts
        ]
        seen: set[tuple[Any, ...]] = set()
        for spec in specs:
            res = spec.resources
            shape = (res.gpus, res.hosts, res.tags)
            if shape in seen:
                continue
            seen.add(shape)
            why = never_fits(res.gpus, res.hosts, res.tags, capacities)
            if why is not None:
                raise CvtuiError(f"{spec.name}: refused, it can never run here: {why}")

    def submit(
        self,
        config: str | Path,
        *,
        set: Mapping[str, Any] | None = None,  # the --set of the CLI
        overrides: Sequence[str] = (),
        host: str | None = None,
        hosts: Sequence[str] = (),
        gpus: int | None = None,
        priority: str | None = None,
        max_runs: int | None = None,
        decide_timeout_s: float = DECIDE_TIMEOUT_S,
    ) -> list[Submitted]:
        """Queue the runs of config and hand them to the engine (started in the background
        when none runs); returns once it placed each run or said why it waits. A grid whose
        axis lists a value twice (copies of runs) is queued with a UserWarning."""
        import warnings

        from cvtui.submit import repeated_runs

        specs = self.prepare(
            config,
            set=set,
            overrides=overrides,
            host=host,
            hosts=hosts,
            gpus=gpus,
            priority=priority,
            max_runs=max_runs,
        )
        for warning in repeated_runs(specs):
            warnings.warn(warning, UserWarning, stacklevel=2)
        return self.submit_specs(specs, decide_timeout_s=decide_timeout_s)

    def submit_specs(
        self, specs: Sequence[RunSpec], *, decide_timeout_s: float = DECIDE_TIMEOUT_S
    ) -> list[Submitted]:
        from cvtui.submit import submit

        run_ids = submit(self.catalog, self.home, specs)
        return self.hand_over(run_ids, decide_timeout_s)

    def hand_over(self, run_ids: list[str], timeout_s: float = DECIDE_TIMEOUT_S) -> list[Submitted]:
        """Wake the engine for queued runs and wait for its decision on each."""
        client = self.engine(start=True)
        assert client is not None  # start_detached_engine raises rather than return None
        reply = client.request(
            "decide", run_ids=run_ids, timeout_s=timeout_s, wait_s=timeout_s + 10
        )
        decided = {r["id"]: r for r in reply.get("runs", [])}
        found = []
        for run_id in run_ids:
            row = decided.get(run_id) or self.catalog.get_run(run_id) or {}
            found.append(
                Submitted(
                    id=run_id,
                    name=str(row.get("name", run_id)),
                    state=str(row.get("state", "queued")),
                    host=row.get("host"),
                    gpus=tuple(row.get("gpus") or ()),
                    reason=row.get("reason"),
                )
            )
        return found

    # -- follow and wait ------------------------------------------------------------------
    def follow(
        self, runs: Runs, *, lines: bool = True, timeout: float | None = None
    ) -> Iterator[RunEvent]:
        """Events of runs as they happen, their retries included: state changes (and notes
        such as the checkpoint a retry resumes from) and their output (one event per line;
        lines=False: the bytes as they come). Ends once every run's last attempt ended and
        its outputs are synced; CvtuiError after timeout seconds."""
        from cvtui.following import RunFollower

        follower = RunFollower(self.catalog, self.home, self.run_ids(runs))
        return self._follow(follower, lines=lines, events=True, timeout=timeout)

    def _follow(
        self, follower: RunFollower, *, lines: bool, events: bool, timeout: float | None
    ) -> Iterator[RunEvent]:
        """follow()'s loop; without events (wait), it only watches for the end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        client: EngineClient | None = None
        while True:
            if events:
                yield from follower.state_events()
                yield from follower.log_events(lines=lines)
            if follower.ended():
                if follower.synced_without_engine():
                    break
                client = client or self.engine(start=True)
                assert client is not None
                try:
                    reply = client.request(
                        "settled",
                        run_ids=follower.run_ids,
                        timeout_s=SETTLE_ASK_S,
                        wait_s=SETTLE_ASK_S + 10,
                    )
                except OSError:
                    client = None  # it went away (stopped by hand): the next round starts one
                    continue
                if reply.get("settled"):
                    break
            elif client is None and any(
                (self.catalog.get_run(i) or {}).get("state") in ACTIVE_STATES
                for i in follower.run_ids
            ):
                client = self.engine(start=True)  # active runs need an engine to move on
            if deadline is not None and time.monotonic() > deadline:
                raise CvtuiError(f"runs still active after {timeout:g} s")
            # A big grid is read less often: each round reads every run's row.
            time.sleep(min(POLL_S * max(1.0, len(follower.run_ids) / 50), MAX_POLL_S))
        if events:
            yield from follower.state_events()
            yield from follower.log_events(lines=lines)
            if lines:
                yield from follower.unfinished()

    def wait(
        self,
        runs: Runs,
        *,
        timeout: float | None = None,
        timeout_s: float | None = None,
    ) -> list[dict[str, Any]]:
        """Wait until each run's last attempt ended and its outputs are synced; their rows
        (the last attempts'). CvtuiError after timeout (seconds; timeout_s is the same)."""
        from cvtui.following import RunFollower, last_attempt

        ids = self.run_ids(runs)
        follower = RunFollower(self.catalog, self.home, ids)
        limit = timeout if timeout is not None else timeout_s
        for _event in self._follow(follower, lines=True, events=False, timeout=limit):
            pass
        rows = [self.catalog.get_run(i) for i in ids]
        return [last_attempt(self.catalog, r) for r in rows if r is not None]

    # -- reading runs ---------------------------------------------------------------------
    def refresh(self, runs: Sequence[Mapping[str, Any]]) -> None:
        """Ask the hosts of these runs (those placed on a host) for their news first, so the
        catalog is current: through the running engine when there is one, else over
        connections of our own; a no-op when the inventory is not usable."""
        from cvtui.engine.lock import lock_holder

        hosts = {r["host"] for r in runs if r["state"] in ("dispatching", "running") and r["host"]}
        if not hosts:
            return
        if lock_holder(self.home) is not None:
            # The engine hears of ends within a poll; asked, it checks now (one round trip).
            client = self.engine()
            running = [r["id"] for r in runs if r["state"] == "running" and r["host"]]
            if client is not None and running:
                with contextlib.suppress(OSError, CvtuiError):  # the catalog as it is
                    client.request("refresh", run_ids=running, timeout_s=10, wait_s=15)
            return
        inventory = self.inventory_if_valid()
        if inventory is None:
            return  # the hosts cannot be asked; what the catalog holds is shown as it is
        hosts &= set(inventory.names())
        import asyncio

        from cvtui.local_engine import drive

        def settled(engine: Any) -> bool:
            return engine is None or bool(engine.hosts_settled(hosts))

        asyncio.run(
            drive(inventory, self.catalog, self.home, settled, timeout_s=15, hosts=sorted(hosts))
        )

    def ps(self, *, all: bool = False) -> list[dict[str, Any]]:
        """Runs, oldest first: active ones and those that ended in the last hour (all: every
        run); each a dict of RUN_KEYS."""
        catalog = self.catalog
        self.refresh(catalog.list_runs(states=["dispatching", "running"]))
        now = time.time()
        runs = catalog.list_runs(newest_first=False)
        if not all:
            runs = [
                r
                for r in runs
                if r["state"] in ACTIVE_STATES or (r["ended"] or now) > now - RECENT_S
            ]
        return [{k: r[k] for k in RUN_KEYS} for r in runs]

    def log_bytes(self, run: RunRef, *, tail: int | None = None) -> bytes:
        """A run's output as mirrored here, byte for byte (tail: its last lines, each as a
        terminal ends up showing it)."""
        from cvtui.following import last_states
        from cvtui.mirror import run_log_path

        row = self.resolve(run)
        self.refresh([row])
        path = run_log_path(self.home, row["id"])
        data = path.read_bytes() if path.exists() else b""
        if tail is not None:
            data = b"".join(last_states(data)[-tail:]) if tail else b""
        return data

    def logs(self, run: RunRef, *, tail: int | None = None, raw: bool = False) -> str:
        """A run's output (stdout and stderr) as text; escape sequences other than colours
        dropped unless raw. tail: the last lines only."""
        from cvtui.terminal_text import SafeTerminalText

        data = self.log_bytes(run, tail=tail)
        if not raw:
            data = SafeTerminalText().feed(data)
        return data.decode("utf-8", "replace")

    def metric_rows(
        self, runs: Runs, keys: Sequence[str] | None = None, *, attempts: bool = True
    ) -> list[MetricRow]:
        """(run_id, step, key, value) of runs, by run, key and step. A run and its retries are
        one run here (attempts=False: that attempt alone): where a retry resumed and wrote a
        step again, its value replaces the earlier one."""
        rows: list[MetricRow] = []
        for run_id in self.run_ids(runs):
            run = self.catalog.get_run(run_id) or {"id": run_id}
            chain = self.catalog.run_attempts(run) if attempts and "name" in run else [run]
            merged: dict[tuple[str, Any], Any] = {}
            for attempt in chain:
                for step, key, _file, value, text in self.catalog.metric_rows(
                    attempt["id"], list(keys) if keys else None
                ):
                    merged[(key, step)] = value if value is not None else text
            for (key, step), value in sorted(merged.items(), key=_metric_order):
                rows.append(MetricRow(run_id, step, key, value))
        return rows

    def metrics(
        self, runs: Runs, keys: Sequence[str] | None = None, *, attempts: bool = True
    ) -> Any:
        """metric_rows() as a pandas DataFrame (columns run_id, step, key, value) when pandas
        is installed, else the list of MetricRow."""
        rows = self.metric_rows(runs, keys, attempts=attempts)
        import importlib

        try:  # optional: cvtui does not depend on pandas
            pandas = importlib.import_module("pandas")
        except ImportError:
            return rows
        return pandas.DataFrame(rows, columns=list(MetricRow._fields))

    # -- acting on runs -------------------------------------------------------------------
    def cancel(
        self, runs: Runs = (), *, grace_s: float = 10.0, all_mine: bool = False
    ) -> list[CancelResult]:
        """Cancel runs: queued ones leave the queue, running ones get SIGTERM (SIGKILL after
        grace_s). Returns once the engine acted on each (or could not reach its host)."""
        from cvtui.actions import cancel_runs

        rows = [self.resolve(r) for r in _as_list(runs)]
        me = getpass.getuser()
        if all_mine:
            rows += [
                r for r in self.catalog.list_runs(states=list(ACTIVE_STATES)) if r["user"] == me
            ]
        client = self.engine()
        outcomes = cancel_runs(self.catalog, rows, by=me, grace_s=grace_s)
        commands = {o.command_id: o for o in outcomes if o.command_id is not None}
        results = {o.run_id: CancelResult(o.run_id, o.name, o.outcome) for o in outcomes}
        if commands and client is not None:
            reply = client.request(
                "wait_commands",
                command_ids=list(commands),
                timeout_s=grace_s + 30,
                wait_s=grace_s + 40,
            )
            for row in reply.get("commands", []):
                outcome = commands[row["id"]]
                results[outcome.run_id] = CancelResult(
                    outcome.run_id, outcome.name, command_outcome(row)
                )
        elif commands:
            self._drive_commands(commands, grace_s)
            for command_id, outcome in commands.items():
                row = self.catalog.get_command(command_id) or {}
                results[outcome.run_id] = CancelResult(
                    outcome.run_id, outcome.name, command_outcome(row)
                )
        return list(results.values())

    def _drive_commands(self, commands: dict[int, Any], grace_s: float) -> None:
        """With no engine running: one in this process, on the runs' hosts, until done."""
        import asyncio

        from cvtui.local_engine import drive

        catalog = self.catalog

        def done(engine: Any) -> bool:
            return all((catalog.get_command(c) or {}).get("state") != "pending" for c in commands)

        hosts = sorted(
            {(catalog.get_run(o.run_id) or {}).get("host") or "" for o in commands.values()} - {""}
        )
        asyncio.run(
            drive(self.inventory, catalog, self.home, done, timeout_s=grace_s + 30, hosts=hosts)
        )

    # -- commands now ---------------------------------------------------------------------
    def exec(
        self,
        host: str,
        argv: Sequence[str] | str,
        *,
        gpus: int = 0,
        check: bool = False,
        input: bytes | str | None = None,
    ) -> ExecResult:
        """Run argv on host now and wait: its exit code, stdout and stderr (a string is a
        shell command line). GPUs (gpus=N) are picked by the scheduler's rules and leased on
        the host for the command. check: ExecFailed unless it exits 0. input: the command's
        stdin (str as UTF-8), as subprocess.run takes it; None: it reads end of file."""
        words = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        out, err = io.BytesIO(), io.BytesIO()
        feed = None
        if input is not None:
            feed = io.BytesIO(input.encode() if isinstance(input, str) else input)
        code = self.exec_streamed(host, words, gpus=gpus, stdout=out, stderr=err, stdin=feed)
        result = ExecResult(
            host=host,
            argv=tuple(words),
            exit_code=code,
            stdout=out.getvalue().decode("utf-8", "replace"),
            stderr=err.getvalue().decode("utf-8", "replace"),
            stdout_bytes=out.getvalue(),
            stderr_bytes=err.getvalue(),
        )
        return result.check() if check else result

    def exec_streamed(
        self,
        host: str,
        argv: Sequence[str],
        *,
        gpus: int = 0,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
        stdin: BinaryIO | None = None,
        term: Term | None = None,
    ) -> int:
        """Run argv on host now, output streamed to stdout/stderr as it comes; its exit code.
        Through the engine's open connection when one runs, else over a connection of its
        own. stdin: what the command reads (None: end of file at once). term: in a pty of
        that type and size (Term.local(): this terminal's, following its resizes); its
        output is then one stream, on stdout."""
        import sys

        entry = self.inventory.host(host)
        out = stdout or sys.stdout.buffer
        err = stderr or sys.stderr.buffer
        chosen: list[int] = []
        if gpus:
            chosen = list(self.pick_gpus(host, gpus))
        client = self.engine()
        if client is not None:
            try:
                code = client.exec(host, list(argv), chosen, out, err, stdin, term)
            except ConnectionError as exc:
                raise CvtuiError(f"exec on {host}: {exc}") from exc
            if code is not None:
                return code
        import asyncio

        from cvtui.engine.remote_exec import exec_on_host

        return asyncio.run(
            exec_on_host(
                entry,
                self.inventory.policy,
                argv,
                chosen,
                stdout=out,
                stderr=err,
                stdin=stdin,
                term=term,
            )
        )

    def pick_gpus(self, host: str, count: int) -> tuple[int, ...]:
        """GPUs of host for a command run now, by the scheduler's rules (free: no lease, no
        one else's process; idle first, then the most free memory)."""
        from cvtui.dry_run import host_states_from_report
        from cvtui.engine.scheduler import pick_gpus

        report = self.catalog.hosts_report(names=[host])
        states = host_states_from_report(report, self.inventory)
        if not states or not states[0].gpus:
            return tuple(range(count))  # nothing known yet: the agent's leases still guard
        chosen = pick_gpus(
            states[0], count, foreign_processes=self.inventory.policy.foreign_processes
        )
        if chosen is None:
            free = pick_gpus(states[0], 0) or ()
            raise CvtuiError(f"{host} has fewer than {count} free GPUs ({len(free)} now)")
        return chosen

    def infer(
        self,
        model: str,
        argv: Sequence[str] | str,
        *,
        host: str,
        gpus: int = 1,
        code: str | Path | None = None,
        priority: str = "normal",
        timeout: float | None = None,
        output: Callable[[bytes], object] | None = None,
    ) -> InferResult:
        """Run argv once on host with a registered model: {model} in it is the model's path
        there (uploaded once per host, verified by hash). The code dir (default: the git
        work tree of the current directory, else it) is shipped as for any run; the run is
        followed to its end. output: called with the output's bytes as they come.
        Interrupted (Ctrl-C), the run is cancelled."""
        from cvtui.errors import UnknownHostError
        from cvtui.following import last_attempt
        from cvtui.infer import infer_spec

        if host not in self.inventory.names():
            raise UnknownHostError(host, self.inventory.names())
        spec = infer_spec(
            model,
            argv,
            host=host,
            gpus=gpus,
            code_dir=str(code) if code is not None else None,
            priority=priority,
        )
        self.check_fits([spec])
        [submitted] = self.submit_specs([spec])
        chunks = []
        try:
            for event in self.follow([submitted.id], lines=False, timeout=timeout):
                if event.kind == "log" and event.data:
                    chunks.append(event.data)
                    if output is not None:
                        output(event.data)
        except KeyboardInterrupt:
            self.cancel([submitted.id])
            raise
        run = last_attempt(self.catalog, self.catalog.get_run(submitted.id) or {"id": submitted.id})
        code_ = run.get("exit_code")
        state = str(run.get("state"))
        exit_code = int(code_) if code_ is not None else (0 if state == "succeeded" else 1)
        return InferResult(
            submitted.id, exit_code, state, b"".join(chunks).decode("utf-8", "replace")
        )

    def forward(self, run: RunRef, remote_port: int, local_port: int | None = None) -> PortForward:
        """Forward 127.0.0.1:local_port (default: the same number; 0: any free one) to
        remote_port on the host of a running run, started and ready; close() it (or use it
        in a with-block). Carried over the running engine's SSH connection when there is an
        engine, else over one of its own (see cvtui/engine/forward.py)."""
        from cvtui.engine.client import SOCKET_NAME
        from cvtui.engine.forward import PortForward

        row = self.resolve(run)
        if row["state"] not in ("dispatching", "running") or not row["host"]:
            raise CvtuiError(f"run {row['id'][:12]} ({row['name']}) is {row['state']}, not running")
        host = self.inventory.host(row["host"])
        socket = self.home / SOCKET_NAME if self.engine() is not None else None
        forward = PortForward(
            host, self.inventory.policy, remote_port, local_port, engine_socket=socket
        )
        return forward.start()

    # -- hosts ----------------------------------------------------------------------------
    def hosts(self, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Every host of the inventory with its state and GPUs: the running engine's view
        from the catalog, else one round of connections from here (at most timeout_s)."""
        from cvtui.hosts_command import add_host_details, collect_hosts_report

        if self.engine() is None:
            return collect_hosts_report(self.inventory, self.home, timeout_s)
        policy = self.inventory.policy
        report = self.catalog.hosts_report(
            now=time.time(),
            stale_after_s=policy.stale_after_s,
            disconnected_after_s=policy.disconnected_after_s,
            names=self.inventory.names(),
        )
        return add_host_details(self.catalog, report, self.inventory.names())


def set_overrides(values: Mapping[str, Any]) -> list[str]:
    """{"lr": [0.1, 0.01], "batch.size": 64} as --set texts (JSON is YAML: lists make axes)."""
    return [f"{key}={json.dumps(value)}" for key, value in values.items()]


def _as_list(runs: Runs) -> list[RunRef]:
    if isinstance(runs, str | Submitted | Mapping):
        return [runs]
    return list(runs)


def _metric_order(item: tuple[tuple[str, Any], Any]) -> tuple[str, int, float, str]:
    """Key, then numeric steps in order, then any other steps as text."""
    (key, step), _ = item
    if isinstance(step, int | float) and not isinstance(step, bool):
        return key, 0, float(step), ""
    return key, 1, 0.0, str(step)


def command_outcome(row: dict[str, Any]) -> str:
    """A finished engine command in a few words (what the CLI prints for a cancel)."""
    if row.get("state") == "pending":
        return "cancel requested (the host is not reachable now; it is sent when it is back)"
    if row.get("state") == "failed":
        return f"not cancelled: {row.get('result')}"
    result = str(row.get("result") or "")
    if result == "cancelled while queued":
        return "cancelled (was queued)"
    if result.startswith("already "):
        return result
    return f"cancel sent ({result})" if result else "cancel sent"
