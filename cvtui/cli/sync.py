"""Sync commands of the CLI: sync, files, metrics, compare (heavy imports stay inside)."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

import click

from cvtui.cli.settings import printable
from cvtui.errors import CvtuiError
from cvtui.units import size

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.cli.settings import Settings
    from cvtui.engine.engine import Engine

NOT_STARTED = ("queued", "dispatching")
LOWER_IS_BETTER = ("loss", "err", "perplexity", "ppl", "wer", "cer", "mse", "mae", "nll", "time")
PROGRESS_EVERY_S = 0.2  # on a terminal
PROGRESS_LINE_EVERY_S = 5.0  # in a log file


def resolve_runs(catalog: Catalog, refs: Sequence[str]) -> list[dict[str, Any]]:
    from cvtui.actions import resolve_run

    runs = {}
    for ref in refs:
        run = resolve_run(catalog, ref)
        runs[run["id"]] = run
    return list(runs.values())


class ProgressLine:
    """Bytes fetched and the rate, on stderr: one rewritten line on a terminal."""

    def __init__(self, out: IO[str], run_ids: list[str]) -> None:
        self.out = out
        self.run_ids = run_ids
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.shown = 0.0
        self.width = 0

    def figures(self, engine: Engine | None, catalog: Catalog) -> tuple[int, int, str]:
        """(bytes fetched, bytes known to fetch, files) from the engine here, else the catalog."""
        if engine is not None:
            progress = engine.sync_progress()
            files = f"{progress.files_done}/{progress.files_total} files"
            return progress.fetched_bytes, progress.planned_bytes, files
        done = total = count = 0
        for run_id in self.run_ids:
            for row in catalog.files_of(run_id):
                count += 1
                total += row["size"] or 0
                done += min(row["synced_size"] or 0, row["size"] or 0)
        return done, total, f"{count} files"

    def update(self, engine: Engine | None, catalog: Catalog) -> None:
        now = time.monotonic()
        if now - self.shown < (PROGRESS_EVERY_S if self.tty else PROGRESS_LINE_EVERY_S):
            return
        self.shown = now
        done, total, files = self.figures(engine, catalog)
        rate = done / max(1e-3, now - self.started)
        line = f"sync: {size(done)} of {size(total)}, {size(rate)}/s, {files}"
        if self.tty:
            self.out.write("\r" + line.ljust(self.width))
            self.width = len(line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def close(self, fetched: int) -> None:
        elapsed = time.monotonic() - self.started
        rate = fetched / max(1e-3, elapsed)
        line = f"sync: fetched {size(fetched)} in {elapsed:.1f} s ({size(rate)}/s)"
        self.out.write(("\r" + line.ljust(self.width) if self.tty else line) + "\n")
        self.out.flush()


@click.command("sync")
@click.argument("run_refs", metavar="RUN...", nargs=-1)
@click.option("--all", "sync_all", is_flag=True, help="Every run that was started on a host.")
@click.option(
    "--verify",
    is_flag=True,
    help="Compare block digests of every file, not only sizes and times; repair what differs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome per run as JSON.")
@click.pass_obj
def sync(
    settings: Settings, run_refs: tuple[str, ...], sync_all: bool, verify: bool, as_json: bool
) -> None:
    """Copy runs' output files from their hosts into the local mirror and the catalog.

    Only changed bytes travel, verified by digests; a second sync transfers nothing.
    Progress (bytes and rate) goes to stderr. Exits 1 when a run could not be synced fully
    (a running run: when a file could not be read; what it wrote since comes next pass).
    """
    import asyncio

    from cvtui.catalog import Catalog
    from cvtui.local_engine import drive

    if not run_refs and not sync_all:
        raise click.UsageError("name at least one RUN, or --all")
    home = settings.home()
    with Catalog.open_home(home) as catalog:
        runs = resolve_runs(catalog, run_refs)
        if sync_all:
            runs += [
                r
                for r in catalog.list_runs()
                if r["host"] and r["id"] not in {x["id"] for x in runs}
            ]
        started = [r for r in runs if r["host"] and r["state"] not in NOT_STARTED]
        for run in runs:
            if run not in started:
                click.echo(
                    f"{run['id'][:12]}  {run['name']}: not started yet ({run['state']})", err=True
                )
        if not started:
            return
        run_ids = [r["id"] for r in started]
        command_id = catalog.submit_command("sync", {"run_ids": run_ids, "verify": verify})
        progress = ProgressLine(sys.stderr, run_ids)
        fetched = [0]

        def finished(engine: Engine | None) -> bool:
            progress.update(engine, catalog)
            if engine is not None:
                fetched[0] = engine.sync_progress().fetched_bytes
            return (catalog.get_command(command_id) or {}).get("state") != "pending"

        hosts = sorted({r["host"] for r in started})
        asyncio.run(drive(settings.inventory(), catalog, home, finished, hosts=hosts))
        command = catalog.get_command(command_id) or {}
        outcome: dict[str, Any] = command.get("result") or {}
        if not fetched[0]:
            fetched[0] = sum(o.get("fetched", 0) for o in outcome.values())
        progress.close(fetched[0])
        if as_json:
            click.echo(json.dumps(outcome, indent=2))
        else:
            names = {r["id"]: r["name"] for r in started}
            for run_id, result in outcome.items():
                click.echo(f"{run_id[:12]}  {names.get(run_id, '')}: {describe_outcome(result)}")
        live = {
            run_id
            for run_id in outcome
            if (catalog.get_run(run_id) or {}).get("state") in ("dispatching", "running")
        }
        if command.get("state") != "done" or any(
            not run_synced(o, still_running=run_id in live) for run_id, o in outcome.items()
        ):
            sys.exit(1)


def run_synced(result: dict[str, Any], still_running: bool = False) -> bool:
    """Whether the pass left every file of the run complete. A running run's files that
    grew again after the pass read them are behind, not broken: its next pass takes them."""
    states = result.get("states") or {}
    behind = ("error",) if still_running else ("outdated", "syncing", "error")
    return result.get("error") is None and not any(states.get(s) for s in behind)


def describe_outcome(result: dict[str, Any]) -> str:
    if result.get("error"):
        return f"not synced: {result['error']}"
    states = {k: v for k, v in (result.get("states") or {}).items() if v}
    total = sum(states.values())
    detail = ", ".join(f"{count} {state}" for state, count in states.items())
    return f"{total} files ({detail or 'none'}), {size(result.get('fetched', 0))} fetched"


@click.command("files")
@click.argument("run_ref", metavar="RUN")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def files(settings: Settings, run_ref: str, as_json: bool) -> None:
    """Files of RUN: path, size on the host, synced size, state, hash.

    A metrics file parsed with trouble (a changed CSV header, skipped lines, steps written
    again) carries a warning.
    """
    from cvtui.catalog import Catalog
    from cvtui.catalog.metrics import file_view
    from cvtui.outputs_note import outputs_note

    with Catalog.open_home(settings.home()) as catalog:
        run = resolve_runs(catalog, [run_ref])[0]
        rows = [file_view(r) for r in catalog.files_of(run["id"])]
    note = outputs_note(run, rows)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        if note:
            click.echo(f"note: {note}", err=True)
        return
    if not rows:
        click.echo(
            note or f"no files synced for {run['id'][:12]} yet (cvtui sync {run['id'][:12]})"
        )
        return
    click.echo(f"{'STATE':9} {'SIZE':>10} {'SYNCED':>10} {'STRATEGY':8} {'HASH':14} PATH")
    for row in rows:
        digest = (row["hash"] or "-").split(":")[-1][:12]
        shown = "-" if row["size"] is None else size(row["size"])
        synced = size(row["synced_size"] or 0)
        line = f"{row['state']:9} {shown:>10} {synced:>10} {row['strategy'] or '-':8} {digest:14} "
        line += printable(row["path"])
        if row["reason"] and row["state"] != "synced":
            line += f"  ({row['reason']})"
        if row["warnings"]:
            line += f"  (warning: {'; '.join(row['warnings'])})"
        click.echo(line)
    if note:
        click.echo(f"note: {note}")


def metric_table(
    rows: Sequence[tuple[Any, str, str, float | None, str | None]],
) -> tuple[list[str], list[dict[str, Any]]]:
    """Steps x keys: (column names, one dict per step); a key in two files is named file:key."""
    files_of: dict[str, set[str]] = {}
    for _, key, path, _, _ in rows:
        files_of.setdefault(key, set()).add(path)
    table: dict[Any, dict[str, Any]] = {}
    columns: dict[str, None] = {}
    for step, key, path, value, text in rows:
        name = key if len(files_of[key]) == 1 else f"{path}:{key}"
        columns.setdefault(name)
        table.setdefault(step, {"step": step})[name] = value if value is not None else text
    steps = sorted(table, key=lambda s: (s is None, s if s is not None else 0))
    return list(columns), [table[s] for s in steps]


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


@click.command("metrics")
@click.argument("run_ref", metavar="RUN")
@click.option("--key", "keys", multiple=True, metavar="KEY", help="Only this key (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per step.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: step, then one column per key.")
@click.pass_obj
def metrics(
    settings: Settings, run_ref: str, keys: tuple[str, ...], as_json: bool, as_csv: bool
) -> None:
    """Metrics of RUN parsed from its CSV and JSONL files: steps x keys."""
    from cvtui.catalog import Catalog

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    from cvtui.outputs_note import outputs_note

    with Catalog.open_home(settings.home()) as catalog:
        run = resolve_runs(catalog, [run_ref])[0]
        rows = catalog.metric_rows(run["id"], list(keys) or None)
        known = catalog.metric_keys(run["id"]) if keys else []
        note = outputs_note(run, catalog.files_of(run["id"])) if not rows else None
    missing = [k for k in keys if k not in known]
    if missing:
        listing = ", ".join(known[:20]) or "none yet"
        raise CvtuiError(f"no metric {missing[0]!r} in run {run['id'][:12]} (keys: {listing})")
    columns, table = metric_table(rows)
    if note and (as_json or as_csv):
        click.echo(f"note: {note}", err=True)
    if as_json:
        click.echo(json.dumps(table, indent=2))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["step", *columns])
        for record in table:
            writer.writerow([record["step"], *(record.get(c, "") for c in columns)])
    elif not table:
        click.echo(note or f"no metrics for {run['id'][:12]} yet (cvtui sync {run['id'][:12]})")
    else:
        cells = [[cell(r["step"]), *(cell(r.get(c)) for c in columns)] for r in table]
        header = ["step", *columns]
        widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
        click.echo("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        for row in cells:
            click.echo("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def lower_is_better(key: str) -> bool:
    name = key.lower()
    return any(word in name for word in LOWER_IS_BETTER)


@click.command("compare")
@click.argument("run_refs", metavar="RUN RUN...", nargs=-1, required=True)
@click.option("--key", "keys", multiple=True, metavar="KEY", help="Only this key (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: run -> key -> figures.")
@click.pass_obj
def compare(
    settings: Settings, run_refs: tuple[str, ...], keys: tuple[str, ...], as_json: bool
) -> None:
    """Last and best value of each metric, runs side by side (* marks the best run).

    Best is the lowest value for keys that name a loss or an error, else the highest.
    """
    from cvtui.catalog import Catalog
    from cvtui.run_names import display_names

    if len(run_refs) < 2:
        raise click.UsageError("name at least two runs to compare")
    with Catalog.open_home(settings.home()) as catalog:
        runs = resolve_runs(catalog, run_refs)
        summaries = {r["id"]: catalog.metric_summary(r["id"], list(keys) or None) for r in runs}
    all_keys = sorted({k for s in summaries.values() for k in s} | set(keys))
    figures: dict[str, dict[str, dict[str, Any]]] = {}
    for run_id, summary in summaries.items():
        for key, s in summary.items():
            best = s["min"] if lower_is_better(key) else s["max"]
            figures.setdefault(run_id, {})[key] = {**s, "best": best}
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    names = display_names(runs)
    header = ["key", *(f"{r['id'][:12]} {names[r['id']]}"[:48] for r in runs)]
    lines = [header]
    for key in all_keys:
        bests = [figures.get(r["id"], {}).get(key, {}).get("best") for r in runs]
        known = [b for b in bests if b is not None]
        winner = (min(known) if lower_is_better(key) else max(known)) if known else None
        row = [key]
        for run, best in zip(runs, bests, strict=True):
            entry = figures.get(run["id"], {}).get(key)
            if entry is None:
                row.append("-")
                continue
            mark = "*" if best == winner and len(runs) > 1 else ""
            row.append(f"{cell(entry['last'])} (best {cell(best)}){mark}")
        lines.append(row)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def register(main: click.Group) -> None:
    for command in (sync, files, metrics, compare):
        main.add_command(command)
