"""`cvtui components`: the versions of every file of a code dir, kept in the content store."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cvtui.cli.settings import printable
from cvtui.errors import CvtuiError

if TYPE_CHECKING:
    from cvtui.catalog.components import VersionEntry
    from cvtui.cli.settings import Settings

SHOWN_PATHS = 20  # scan lists at most this many paths per kind, then "and N more"
STREAM_ABOVE_BYTES = 64 << 20  # `show` verifies then streams bigger blobs instead of loading them
HASH_SHOWN_CHARS = 12


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _entry_json(entry: VersionEntry) -> dict[str, Any]:
    return {
        "path": entry.path,
        "hash": entry.hash,
        "size": entry.size,
        "executable": entry.executable,
    }


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _echo_paths(label: str, lines: Sequence[str]) -> None:
    for line in lines[:SHOWN_PATHS]:
        click.echo(f"  {label} {line}")
    if len(lines) > SHOWN_PATHS:
        click.echo(f"  ... and {len(lines) - SHOWN_PATHS} more")


@click.group()
def components() -> None:
    """Every version of every file of your code dirs: scan, list, history, show, activate, sync."""


@components.command("scan")
@click.argument("directory", metavar="[DIR]", default=".", type=click.Path(file_okay=False))
@click.option(
    "--exclude",
    "excludes",
    multiple=True,
    metavar="GLOB",
    help="Leave out files matching GLOB (path or file name; repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as a JSON object.")
@click.pass_obj
def scan(settings: Settings, directory: str, excludes: tuple[str, ...], as_json: bool) -> None:
    """Record every file of DIR (default: the current dir) as a version in the content store.

    Files are those `git ls-files` lists in a work tree, else every file but caches and
    virtualenvs. Only files whose size or modification time changed since the last scan are
    read, so a second scan is quick.
    """
    from cvtui.catalog import Catalog
    from cvtui.repro.blobstore import BlobStore
    from cvtui.repro.components import scan as scan_dir

    home = settings.home()
    with Catalog.open_home(home) as catalog:
        result = scan_dir(catalog, BlobStore.in_home(home), directory, excludes)
    if as_json:
        report = {
            "root": result.root,
            "files": result.files,
            "hashed": result.hashed,
            "new_versions": [_entry_json(e) for e in result.new_versions],
            "reactivated": [_entry_json(e) for e in result.reactivated],
            "removed": list(result.removed),
            "skipped": list(result.skipped),
            "elapsed_ms": round(result.elapsed_s * 1000, 1),
        }
        click.echo(json.dumps(report, indent=2))
        return
    counts = [
        _count(result.files, "file"),
        f"{result.hashed} hashed",
        _count(len(result.new_versions), "new version"),
    ]
    if result.reactivated:
        counts.append(f"{len(result.reactivated)} back to an older version")
    counts.append(f"{len(result.removed)} removed")
    click.echo(f"{result.root}: {', '.join(counts)}, {result.elapsed_s * 1000:.0f} ms")
    _echo_paths(
        "new",
        [f"{e.hash[:HASH_SHOWN_CHARS]}  {printable(e.path)}" for e in result.new_versions],
    )
    _echo_paths(
        "back",
        [f"{e.hash[:HASH_SHOWN_CHARS]}  {printable(e.path)}" for e in result.reactivated],
    )
    _echo_paths("gone", [f"{'-' * HASH_SHOWN_CHARS}  {printable(p)}" for p in result.removed])
    if result.skipped:
        _echo_paths("left out (name not UTF-8)", [printable(p) for p in result.skipped])


@components.command("list")
@click.option(
    "--dir",
    "directory",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Only this code dir (default: the scanned code dir holding the current dir, else all).",
)
@click.option(
    "--category", metavar="C", help="Only files under this top-level dir ('.': top files)."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per file.")
@click.pass_obj
def list_components(
    settings: Settings, directory: str | None, category: str | None, as_json: bool
) -> None:
    """One line per file of a code dir: its active version, how many versions, last change.

    A file removed from the code dir is listed with no active version ('-').
    """
    from cvtui.catalog import Catalog
    from cvtui.repro.components import code_root, root_containing

    with Catalog.open_home(settings.home()) as catalog:
        if directory is not None:
            root = code_root(directory)
            if root not in catalog.component_roots():
                raise CvtuiError(f"{root} was never scanned (run: cvtui components scan {root})")
            roots = [root]
        else:
            here = root_containing(catalog, Path.cwd())
            roots = [here] if here is not None else catalog.component_roots()
        listing = {root: catalog.component_listing(root, category) for root in roots}
        categories = {
            root: catalog.component_categories(root) for root in roots if not listing[root]
        }
    if as_json:
        flat = [{"root": root, **row} for root, rows in listing.items() for row in rows]
        click.echo(json.dumps(flat, indent=2))
        return
    if not roots:
        click.echo("no code dir scanned yet (run: cvtui components scan DIR)")
        return
    for index, (root, rows) in enumerate(listing.items()):
        if len(roots) > 1:
            click.echo(("\n" if index else "") + f"{root}:")
        if not rows:
            known = ", ".join(categories[root]) or "none"
            click.echo(f"  no files in category {category!r} (categories: {known})")
            continue
        click.echo(
            f"{'PATH':40} {'CATEGORY':12} {'NAME':20} {'ACTIVE':12} {'VERS':>4} {'SIZE':>8} CHANGED"
        )
        for row in rows:
            active = (row["active"] or "-")[:HASH_SHOWN_CHARS]
            size = "-" if row["size"] is None else _size(row["size"])
            path = printable(row["path"])
            click.echo(
                f"{path:40} {row['category'][:12]:12} {row['name'][:20]:20} {active:12}"
                f" {row['versions']:>4} {size:>8} {_when(row['changed'])}"
            )


def _size(count: int) -> str:
    from cvtui.units import size

    return size(count)


@components.command("history")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per version.")
@click.pass_obj
def history(settings: Settings, path: str, as_json: bool) -> None:
    """Every version of PATH, oldest first: when, size, source, and the runs that used it.

    The active version (the one in the code dir, shipped by the next run) is marked '*'.
    """
    from cvtui.catalog import Catalog
    from cvtui.repro.components import component_history, resolve_component

    with Catalog.open_home(settings.home()) as catalog:
        root, rel = resolve_component(catalog, path)
        versions = component_history(catalog, root, rel)
    if as_json:
        click.echo(json.dumps([{"root": root, "path": rel, **v} for v in versions], indent=2))
        return
    click.echo(f"{printable(rel)} in {root}: {len(versions)} versions")
    for version in versions:
        mark = "*" if version["active"] else " "
        runs = ", ".join(f"{r['id'][:12]} ({r['name']})" for r in version["runs"]) or "-"
        click.echo(
            f"{mark} {_when(version['created'])}  {version['hash'][:HASH_SHOWN_CHARS]}"
            f"  {_size(version['size']):>8}  {version['source']:12}  runs: {runs}"
        )


@components.command("show")
@click.argument("hash_prefix", metavar="HASH")
@click.pass_obj
def show(settings: Settings, hash_prefix: str) -> None:
    """Print the content of the blob HASH (a unique prefix of 6 or more hex digits will do).

    The bytes are written as stored, after checking they still hash to HASH.
    """
    from cvtui.catalog import Catalog
    from cvtui.repro.blobstore import CHUNK_BYTES, BlobError, BlobStore
    from cvtui.repro.components import find_blob

    home = settings.home()
    blobs = BlobStore.in_home(home)
    with Catalog.open_home(home) as catalog:
        hash_ = find_blob(catalog, blobs, hash_prefix)
    out = sys.stdout.buffer  # bytes as stored: no decoding, no newline translation
    try:
        size = blobs.path(hash_).stat().st_size
    except FileNotFoundError:
        raise BlobError(f"blob {hash_} is indexed but missing from {blobs.root}") from None
    if size <= STREAM_ABOVE_BYTES:
        out.write(blobs.read(hash_))
    else:
        if not blobs.verify(hash_):
            raise BlobError(f"blob {hash_} in {blobs.root} is corrupt: its content changed")
        with open(blobs.path(hash_), "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                out.write(chunk)
    out.flush()


@components.command("activate")
@click.argument("path")
@click.argument("hash_prefix", metavar="HASH")
@click.pass_obj
def activate(settings: Settings, path: str, hash_prefix: str) -> None:
    """Put version HASH of PATH back into the code dir and make it the active one.

    The file's current content is saved as a version first if the store lacks it, so an
    unsaved edit is never lost. The file is replaced atomically, keeping the version's
    executable bit.
    """
    from cvtui.catalog import Catalog
    from cvtui.repro.blobstore import BlobStore
    from cvtui.repro.components import activate as activate_version

    home = settings.home()
    with Catalog.open_home(home) as catalog:
        done = activate_version(catalog, BlobStore.in_home(home), path, hash_prefix)
    rel = printable(done.path)
    new = done.hash[:HASH_SHOWN_CHARS]
    if not done.written:
        click.echo(f"{rel}: already holds {new}; it is now the active version")
        return
    before = "no file" if done.previous is None else done.previous[:HASH_SHOWN_CHARS]
    saved = " (saved first as a new version)" if done.saved else ""
    click.echo(f"{rel}: {before}{saved} -> {new}")


def register(main: click.Group) -> None:
    main.add_command(components)  # `components sync` joins it in cvtui/cli/__init__.py
