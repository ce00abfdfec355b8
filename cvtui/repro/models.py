"""The model registry: named checkpoints copied from runs' synced mirror files into the store."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cvtui.errors import CvtuiError
from cvtui.repro.blobstore import BlobStore, hash_file

if TYPE_CHECKING:
    from cvtui.catalog import Catalog

MAX_NAME_CHARS = 200
STORE_ATTEMPTS = 3  # a concurrent `gc --unreferenced` can collect known content once or twice


class ModelError(CvtuiError):
    """A model name, path or file that cannot be registered, found or downloaded."""


@dataclass(frozen=True)
class Model:
    """One registry row, with its run's name."""

    name: str
    tags: tuple[str, ...]
    run_id: str
    run_name: str | None  # None when the run is no longer in the catalog
    path: str  # relative to the run's mirror dir, '/'-separated
    hash: str  # xxh3_128 hex: the blob
    size: int  # bytes
    created: float  # unix seconds

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.path).name

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tags": list(self.tags),
            "run_id": self.run_id,
            "run_name": self.run_name,
            "path": self.path,
            "size": self.size,
            "hash": self.hash,
            "created": self.created,
        }


@dataclass(frozen=True)
class Registration:
    model: Model
    replaced: Model | None  # the row --force re-pointed


def model_path(path: str) -> str:
    """A run-relative path with '.' and empty parts dropped; never '..' nor absolute."""
    if not path or "\0" in path:
        raise ModelError(f"model path {path!r} is empty or holds a NUL byte")
    if path.startswith("/"):
        raise ModelError(f"model path {path!r} is absolute; give it relative to the run dir")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ModelError(f"model path {path!r} leaves the run dir ('..')")
    if not parts:
        raise ModelError(f"model path {path!r} names the run dir, not a file")
    return "/".join(parts)


def check_label(what: str, value: str) -> str:
    """A model name or tag: printable, no surrounding blanks, not empty, not too long."""
    if not value or value != value.strip() or not value.isprintable():
        raise ModelError(f"{what} {value!r} must be printable, without surrounding blanks")
    if len(value) > MAX_NAME_CHARS:
        raise ModelError(f"{what} {value[:20]!r}... is longer than {MAX_NAME_CHARS} characters")
    return value


def register_model(
    catalog: Catalog,
    home: str | os.PathLike[str],
    run: dict[str, Any],
    path: str,
    name: str,
    tags: Sequence[str] = (),
    *,
    force: bool = False,
    now: float | None = None,
) -> Registration:
    """Copy a synced mirror file of run into the blob store and name it.

    An existing name is an error unless force, which re-points it. The file must be synced
    and its local copy untouched since, so the registered bytes are the host's.
    """
    rel = model_path(path)
    check_label("model name", name)
    labels = tuple(dict.fromkeys(check_label("tag", t) for t in tags))
    run_id = str(run["id"])
    short = run_id[:12]
    if not force and _find(catalog, name) is not None:
        raise ModelError(f"model {name!r} already exists (--force re-points it)")
    local, before = synced_copy(catalog, home, run, rel)
    blobs = BlobStore.in_home(home)
    now = time.time() if now is None else now
    size = before.st_size
    for _attempt in range(STORE_ATTEMPTS):
        try:
            hash_ = blobs.put_file(local)
        except OSError as exc:
            raise ModelError(f"cannot copy {local} into the store: {exc.strerror}") from None
        if _identity(local.lstat()) != _identity(before):
            raise ModelError(f"{rel} of run {short} changed while it was copied; try again")
        # Blob row and model row in one transaction: gc never sees the blob indexed but
        # unnamed. gc unlinks inside its own write transaction, so the file is checked there:
        # content that was already stored may have been collected since put_file saw it.
        row = {
            "name": name,
            "tags": list(labels),
            "run_id": run_id,
            "path": rel,
            "hash": hash_,
            "size": size,
            "created": now,
        }
        saved = catalog.save_model(row, replace=force, content_present=partial(blobs.has, hash_))
        if saved.content_lost:
            continue
        if not saved.written:
            raise ModelError(f"model {name!r} already exists (--force re-points it)")
        replaced = None if saved.previous is None else _model(saved.previous)
        break
    else:
        raise ModelError(f"the blob store kept losing {rel} while it was stored; try again")
    model = Model(name, labels, run_id, run.get("name"), rel, hash_, size, now)
    return Registration(model, replaced)


def synced_copy(
    catalog: Catalog, home: str | os.PathLike[str], run: dict[str, Any], rel: str
) -> tuple[Path, os.stat_result]:
    """The local mirror copy of a run's file, and its stat, when it is synced and untouched
    since (so its bytes are the host's); ModelError saying what to do otherwise."""
    from cvtui.mirror import Mirror, UnsafePathError

    run_id = str(run["id"])
    short = run_id[:12]
    row = catalog.file_row(run_id, rel)
    if row is None:
        raise ModelError(
            f"run {short} ({run['name']}) has no synced file {rel!r} "
            f"(see: cvtui files {short}; run: cvtui sync {short})"
        )
    if row["sync_status"] != "synced":
        why = f" ({row['reason']})" if row["reason"] else ""
        raise ModelError(
            f"{rel} of run {short} is {row['sync_status']}{why}, not synced; "
            f"run: cvtui sync {short}"
        )
    try:
        local = Mirror(Path(home), run_id).path(rel)
        before = local.lstat()
    except (FileNotFoundError, NotADirectoryError):
        raise ModelError(
            f"the local copy of {rel} of run {short} is missing; run: cvtui sync {short}"
        ) from None
    except UnsafePathError as exc:
        raise ModelError(str(exc)) from None
    if not stat.S_ISREG(before.st_mode):
        raise ModelError(f"{local} is not a regular file")
    if not _intact(before, row):
        raise ModelError(
            f"the local copy of {rel} of run {short} changed since it was synced; "
            f"run: cvtui sync {short}"
        )
    return local, before


def list_models(catalog: Catalog) -> list[Model]:
    """Every registered model, oldest first."""
    return [_model(row) for row in catalog.model_rows()]


def get_model(catalog: Catalog, name: str) -> Model:
    model = _find(catalog, name)
    if model is None:
        known = [m.name for m in list_models(catalog)]
        listing = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        raise ModelError(f"no model named {name!r} (models: {listing or 'none registered'})")
    return model


def download_model(
    catalog: Catalog,
    home: str | os.PathLike[str],
    name: str,
    to_dir: str | os.PathLike[str],
    *,
    force: bool = False,
) -> tuple[Path, bool]:
    """Copy a model's blob to to_dir/<file name>, verified; (path, False) when already there.

    A different file already at that path is kept unless force.
    """
    model = get_model(catalog, name)
    directory = Path(to_dir)
    if directory.exists() and not directory.is_dir():
        raise ModelError(f"{directory} is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create {directory}: {exc.strerror}") from None
    dest = directory / model.file_name
    if dest.is_dir():
        raise ModelError(f"{dest} is a directory")
    if dest.exists():
        if hash_file(dest)[0] == model.hash:
            return dest, False
        if not force:
            raise ModelError(f"{dest} exists with other content (--force overwrites it)")
    BlobStore.in_home(home).copy_to(model.hash, dest)
    return dest, True


def delete_model(catalog: Catalog, name: str) -> Model:
    """Remove a registry row; its blob stays (only `cvtui gc --unreferenced` deletes blobs)."""
    model = get_model(catalog, name)
    catalog.delete_model_row(name)
    return model


def _model(row: dict[str, Any]) -> Model:
    return Model(
        row["name"],
        tuple(row["tags"]),
        row["run_id"],
        row["run_name"],
        row["path"],
        row["hash"],
        row["size"],
        row["created"],
    )


def _find(catalog: Catalog, name: str) -> Model | None:
    row = catalog.model_row(name)
    return None if row is None else _model(row)


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def _intact(st: os.stat_result, row: dict[str, Any]) -> bool:
    """Whether the local copy is the one the sync wrote (its recorded stat, when recorded)."""
    if st.st_size != row["synced_size"]:
        return False
    if row["local_mtime_ns"] is not None and st.st_mtime_ns != row["local_mtime_ns"]:
        return False
    return row["local_ino"] is None or st.st_ino == row["local_ino"]
