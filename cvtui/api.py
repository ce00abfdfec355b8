"""cvtui as a library: one lab (an inventory and a catalog home) to submit to, watch and query.

The CLI's commands are thin shells over `Lab`; the dashboard and notebooks use it too. It
reads the catalog itself and asks the engine to act over the engine's control socket
(cvtui/engine/control.py). Nothing heavy is imported up front: asyncssh only when no engine
runs and a command must reach a host from this process.

    from cvtui.api import Lab
    with Lab() as lab:                     # same inventory and home rules as the CLI
        runs = lab.submit("sweep.yaml", hosts=["gpu-01"])
        lab.wait([r.id for r in runs], timeout_s=3600)
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cvtui.errors import CvtuiError
from cvtui.states import ACTIVE_STATES

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.engine.client import EngineClient
    from cvtui.inventory import Inventory
    from cvtui.runspec import RunSpec

DECIDE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Submitted:
    """A queued run and what the engine decided for it: where it went, or why it waits."""

    id: str
    name: str
    state: str  # queued (waiting), dispatching, running, or already ended
    host: str | None
    gpus: tuple[int, ...]
    reason: str | None  # why it waits, when it does

    def where(self) -> str:
        if self.host and self.state == "queued":  # held in a cluster's own queue
            return f"pending on {self.host}: {self.reason or 'in its queue'}"
        if self.host:
            gpus = ",".join(str(g) for g in self.gpus) or "-"
            return f"{self.state} on {self.host} GPU {gpus}"
        return f"waits: {self.reason or 'for the next dispatch pass'}"


@dataclass(frozen=True)
class CancelResult:
    """What cancelling one run did."""

    id: str
    name: str
    outcome: str


class Lab:
    """One inventory and one catalog home, as the CLI resolves them (--inventory, --home)."""

    def __init__(
        self,
        inventory: str | Path | None = None,
        home: str | Path | None = None,
    ) -> None:
        from cvtui.inventory import default_inventory_path
        from cvtui.paths import home_dir

        self.inventory_path = default_inventory_path(str(inventory) if inventory else None)
        self.home = home_dir(home)
        self._inventory: Inventory | None = None
        self._catalog: Catalog | None = None

    # -- resources ------------------------------------------------------------------------
    @property
    def inventory(self) -> Inventory:
        if self._inventory is None:
            from cvtui.inventory import load_inventory

            self._inventory = load_inventory(self.inventory_path)
        return self._inventory

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

    # -- runs -----------------------------------------------------------------------------
    def resolve(self, ref: str) -> dict[str, Any]:
        """The one run an id, an id prefix or a name names; CvtuiError otherwise."""
        found = self.catalog.find_runs(ref)
        if not found:
            raise CvtuiError(f"no run matches {ref!r}")
        if len(found) > 1 and found[0]["id"] != ref:
            names = ", ".join(f"{r['id'][:12]} ({r['name']})" for r in found[:5])
            raise CvtuiError(f"{ref!r} matches {len(found)} runs: {names}; give more of the id")
        return found[0]

    def prepare(
        self,
        config: str | Path,
        *,
        overrides: Sequence[str] = (),
        hosts: Sequence[str] = (),
        gpus: int | None = None,
        priority: str | None = None,
        max_runs: int | None = None,
    ) -> list[RunSpec]:
        """The runs a config makes with these options, checked against the lab: a run that
        no host of the inventory could ever hold is refused, naming why."""
        from cvtui.submit import prepare_runs

        specs = prepare_runs(
            config,
            self.inventory,
            overrides=overrides,
            gpus=gpus,
            priority=priority,
            hosts=hosts,
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
        overrides: Sequence[str] = (),
        hosts: Sequence[str] = (),
        gpus: int | None = None,
        priority: str | None = None,
        max_runs: int | None = None,
        decide_timeout_s: float = DECIDE_TIMEOUT_S,
    ) -> list[Submitted]:
        """Queue the runs of config and hand them to the engine (started in the background
        when none runs); returns once it placed each run or said why it waits."""
        specs = self.prepare(
            config,
            overrides=overrides,
            hosts=hosts,
            gpus=gpus,
            priority=priority,
            max_runs=max_runs,
        )
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

    def cancel(
        self, refs: Sequence[str], *, grace_s: float = 10.0, all_mine: bool = False
    ) -> list[CancelResult]:
        """Cancel runs: queued ones leave the queue, running ones get SIGTERM (SIGKILL after
        grace_s). Returns once the engine acted on each (or could not reach its host)."""
        from cvtui.actions import cancel_runs

        runs = [self.resolve(ref) for ref in refs]
        me = getpass.getuser()
        if all_mine:
            runs += [
                r for r in self.catalog.list_runs(states=list(ACTIVE_STATES)) if r["user"] == me
            ]
        client = self.engine()
        outcomes = cancel_runs(self.catalog, runs, by=me, grace_s=grace_s)
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

    def wait(
        self, run_ids: Sequence[str], *, timeout_s: float | None = None
    ) -> list[dict[str, Any]]:
        """Wait until these runs ended (polling the catalog); their rows. CvtuiError on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            rows = [self.catalog.get_run(i) for i in run_ids]
            if all(r is None or r["state"] not in ACTIVE_STATES for r in rows):
                return [r for r in rows if r is not None]
            if deadline is not None and time.monotonic() > deadline:
                raise CvtuiError(f"runs still active after {timeout_s:g} s")
            time.sleep(0.2)

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        *,
        gpus: int = 0,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
    ) -> int:
        """Run argv on host now, output streamed to stdout/stderr; its exit code. Through the
        engine's open connection when one runs, else over a connection of its own."""
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
                code = client.exec(host, list(argv), chosen, out, err)
            except ConnectionError as exc:
                raise CvtuiError(f"exec on {host}: {exc}") from exc
            if code is not None:
                return code
        import asyncio

        from cvtui.engine.remote_exec import exec_on_host

        return asyncio.run(
            exec_on_host(entry, self.inventory.policy, argv, chosen, stdout=out, stderr=err)
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

    # -- hosts ----------------------------------------------------------------------------
    def hosts(self, *, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """Every host of the inventory with its state and GPUs: the running engine's view
        from the catalog, else one round of connections from here (at most timeout_s)."""
        if self.engine() is None:
            from cvtui.hosts_command import collect_hosts_report

            return collect_hosts_report(self.inventory, self.home, timeout_s)
        policy = self.inventory.policy
        return self.catalog.hosts_report(
            now=time.time(),
            stale_after_s=policy.stale_after_s,
            disconnected_after_s=policy.disconnected_after_s,
            names=self.inventory.names(),
        )


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
