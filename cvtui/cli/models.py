"""`cvtui models` (a registry of synced checkpoints) and `cvtui gc` (the only blob deleter)."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import click

from cvtui.errors import CvtuiError

if TYPE_CHECKING:
    from cvtui.cli.settings import Settings
    from cvtui.repro.gc import GcPlan, GcResult


@click.group()
def models() -> None:
    """Checkpoints registered by name from runs' synced files."""


@models.command("register")
@click.argument("run_ref", metavar="RUN")
@click.argument("path")
@click.option("--name", required=True, help="The model's name (unique).")
@click.option(
    "--tag", "tags", multiple=True, metavar="TAG", help="A label such as best (repeatable)."
)
@click.option("--force", is_flag=True, help="Re-point an existing name to this file.")
@click.pass_obj
def models_register(
    settings: Settings, run_ref: str, path: str, name: str, tags: tuple[str, ...], force: bool
) -> None:
    """Name a synced checkpoint of RUN.

    Copies PATH of RUN's synced mirror into the content store as NAME. PATH is relative
    to the run dir (as `cvtui files RUN` lists it) and must be synced.
    """
    from cvtui.actions import resolve_run
    from cvtui.catalog import Catalog
    from cvtui.repro.models import register_model
    from cvtui.units import size

    home = settings.home()
    with Catalog.open_home(home) as catalog:
        run = resolve_run(catalog, run_ref)
        done = register_model(catalog, home, run, path, name, tags, force=force)
    model = done.model
    what = f"run {model.run_id[:12]} ({model.run_name}) {model.path}"
    if done.replaced is not None and done.replaced.hash != model.hash:
        click.echo(
            f"re-pointed model {model.name} from {done.replaced.hash[:12]} to {what}, "
            f"{size(model.size)}, blob {model.hash[:12]}"
        )
    else:
        click.echo(
            f"registered model {model.name}: {what}, {size(model.size)}, blob {model.hash[:12]}"
        )


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (full hashes).")
@click.pass_obj
def models_list(settings: Settings, as_json: bool) -> None:
    """Registered models: name, tags, run, path, size, hash, created."""
    from cvtui.catalog import Catalog
    from cvtui.repro.models import list_models
    from cvtui.units import size

    with Catalog.open_home(settings.home()) as catalog:
        found = list_models(catalog)
    if as_json:
        click.echo(json.dumps([m.as_json() for m in found], indent=2))
        return
    if not found:
        click.echo("no models registered (cvtui models register RUN PATH --name NAME)")
        return
    rows = [
        (
            m.name,
            ",".join(m.tags) or "-",
            f"{m.run_id[:12]} {m.run_name or '?'}",
            m.path if m.path.isprintable() else repr(m.path)[1:-1],
            size(m.size),
            m.hash[:12],
            time.strftime("%Y-%m-%d %H:%M", time.localtime(m.created)),
        )
        for m in found
    ]
    header = ("NAME", "TAGS", "RUN", "PATH", "SIZE", "HASH", "CREATED")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@models.command("download")
@click.argument("name")
@click.option(
    "--to", "to_dir", default=".", metavar="DIR", help="Directory to write to (default: here)."
)
@click.option("--force", is_flag=True, help="Overwrite a different file of the same name.")
@click.pass_obj
def models_download(settings: Settings, name: str, to_dir: str, force: bool) -> None:
    """Write model NAME's file to DIR, verified.

    The file keeps the name it had in the run dir; a different file there is kept unless
    --force.
    """
    from cvtui.catalog import Catalog
    from cvtui.repro.models import download_model

    home = settings.home()
    with Catalog.open_home(home) as catalog:
        dest, written = download_model(catalog, home, name, to_dir, force=force)
    click.echo(f"{dest}" if written else f"{dest} (already there, identical)")


@models.command("delete")
@click.argument("name")
@click.pass_obj
def models_delete(settings: Settings, name: str) -> None:
    """Forget model NAME; its blob stays.

    Only `cvtui gc --unreferenced` deletes blobs, and only those nothing references.
    """
    from cvtui.catalog import Catalog
    from cvtui.repro.models import delete_model

    with Catalog.open_home(settings.home()) as catalog:
        model = delete_model(catalog, name)
    click.echo(
        f"deleted model {model.name}; blob {model.hash[:12]} kept "
        "(cvtui gc --unreferenced removes blobs nothing references)"
    )


GC_EXPLAINED = """\
cvtui gc removes blobs of the content store (<home>/blobs) that nothing references: no
component version, code snapshot, run manifest, model, provenance record or run mirror file
names their content. It also removes temp files left by interrupted writes.
It lists them and asks before deleting anything. Run: cvtui gc --unreferenced"""


@click.command("gc")
@click.option(
    "--unreferenced", is_flag=True, help="List unreferenced blobs, ask, then delete them."
)
@click.option("--yes", is_flag=True, help="Delete without asking.")
@click.option("--json", "as_json", is_flag=True, help="Print what was found and done as JSON.")
@click.pass_obj
def gc(settings: Settings, unreferenced: bool, yes: bool, as_json: bool) -> None:
    """Delete content-store blobs that nothing references.

    The only command that deletes blobs.
    Lists them with size and kind, then asks (default no). Exits 1 when nothing was removed
    because the answer was no.
    """
    from cvtui.catalog import Catalog
    from cvtui.repro.gc import collect_garbage, plan_gc

    if not unreferenced:
        click.echo(GC_EXPLAINED, err=True)
        sys.exit(2)
    home = settings.home()
    with Catalog.open_home(home) as catalog:
        plan = plan_gc(catalog, home)
        if not as_json:
            print_plan(plan)
        result = None
        # With --json the prompt goes to stderr, so stdout stays one JSON document.
        if not plan.empty and (yes or click.confirm("Delete them?", default=False, err=as_json)):
            result = collect_garbage(catalog, home, plan)
    if as_json:
        outcome = plan.as_json()
        outcome["removed"] = None if result is None else [b.hash for b in result.removed]
        outcome["removed_temp"] = None if result is None else [t.name for t in result.removed_temp]
        outcome["freed_bytes"] = 0 if result is None else result.freed_bytes
        outcome["failed"] = [] if result is None else [list(f) for f in result.failed]
        click.echo(json.dumps(outcome, indent=2))
    elif result is not None:
        print_result(result)
    if not plan.empty and result is None:
        raise CvtuiError("nothing removed")
    if result is not None and result.failed:
        sys.exit(1)


def print_plan(plan: GcPlan) -> None:
    from cvtui.units import duration, size

    if plan.blobs:
        click.echo("unreferenced blobs:")
        click.echo(f"  {'HASH':32}  {'KIND':10} {'SIZE':>9}  NOTE")
        for blob in plan.blobs:
            note = "" if blob.on_disk else "row only: the file is already gone"
            note = note or ("no catalog row" if not blob.indexed else "")
            shown = size(blob.size) if blob.on_disk else "-"
            click.echo(f"  {blob.hash:32}  {blob.kind:10} {shown:>9}  {note}".rstrip())
    if plan.temp_files:
        click.echo("temp files left by interrupted writes:")
        for temp in plan.temp_files:
            shown = size(temp.size)
            click.echo(f"  {temp.name:32}  {'temp':10} {shown:>9}  {duration(temp.age_s)} old")
    for copy in plan.kept_by_runs:
        click.echo(f"kept {copy.hash[:12]}: run {copy.run_id[:12]} still has it as {copy.path}")
    if plan.kept_recent:
        click.echo(
            f"kept {len(plan.kept_recent)} unreferenced blob(s) younger than 1 h: "
            "the scan or submit that wrote them may not have named them yet"
        )
    if plan.missing:
        listing = ", ".join(h[:12] for h in plan.missing[:5])
        click.echo(f"warning: {len(plan.missing)} referenced blob(s) not in the store: {listing}")
    if plan.empty:
        click.echo(f"nothing to remove ({plan.examined} blob(s) in the store)")
        return
    click.echo(
        f"total: {len(plan.blobs)} blob(s), {len(plan.temp_files)} temp file(s), "
        f"{size(plan.total_bytes)}"
    )


def print_result(result: GcResult) -> None:
    from cvtui.units import size

    click.echo(
        f"removed {len(result.removed)} blob(s) and {len(result.removed_temp)} temp file(s), "
        f"{size(result.freed_bytes)} freed"
    )
    for blob in result.kept:
        click.echo(f"kept {blob.hash[:12]}: referenced since it was listed")
    for name, why in result.failed:
        click.echo(f"could not remove {name}: {why}", err=True)


def register(main: click.Group) -> None:
    main.add_command(models)
    main.add_command(gc)
