"""A run's inputs pinned to bytes: resolved when the run is submitted, checked before a
reproduction. The engine stages them on hosts (cvtui/engine/inputs.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from cvtui.catalog.run_inputs import RunInput
from cvtui.errors import CvtuiError
from cvtui.repro.blobstore import BlobStore
from cvtui.run_inputs import RUN_PREFIX, input_work_path, parse_input_ref

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.runspec import RunSpec


class InputError(CvtuiError):
    """An input that cannot be resolved, stored or found intact; nothing was queued."""


@dataclass(frozen=True)
class PinnedInput:
    """An input resolved to content: what it came from and the blob holding its bytes."""

    kind: str  # model or run
    source: str  # model:NAME, or run:RUN_ID:PATH with the run's full id
    file_name: str  # the name it keeps in the work dir (best.pt)
    hash: str  # xxh3_128 hex
    size: int  # bytes


def pin_input(catalog: Catalog, home: str | os.PathLike[str], text: str) -> PinnedInput:
    """Resolve `model:NAME` (the registry's blob) or `run:RUN:PATH` (the run's synced file,
    copied into the content store) to its bytes."""
    from cvtui.repro.models import ModelError, get_model, model_path, synced_copy

    ref = parse_input_ref(text)
    blobs = BlobStore.in_home(home)
    try:
        if ref.kind == "model":
            model = get_model(catalog, ref.name)
            if not blobs.has(model.hash):
                raise InputError(
                    f"input {text}: blob {model.hash} of model {model.name!r} is missing "
                    f"from {blobs.root}"
                )
            return PinnedInput("model", text, model.file_name, model.hash, model.size)
        run = catalog.resolve_run(ref.name)
        rel = model_path(ref.path)
        local, before = synced_copy(catalog, home, run, rel)
        try:
            hash_, size = blobs.store_file(local)
        except OSError as exc:
            raise InputError(f"input {text}: cannot copy {local} into the store: {exc}") from None
        if size != before.st_size:
            raise InputError(f"input {text}: {rel} changed while it was stored; try again")
        source = f"{RUN_PREFIX}{run['id']}:{rel}"
        return PinnedInput("run", source, PurePosixPath(rel).name, hash_, size)
    except ModelError as exc:
        raise InputError(f"input {text}: {exc}") from None


def pin_run_inputs(
    catalog: Catalog,
    home: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    specs: Sequence[RunSpec],
) -> list[RunInput]:
    """The run_inputs rows of runs about to be queued; each distinct reference is resolved
    once, however many runs of a grid share it."""
    pinned: dict[str, PinnedInput] = {}
    found = []
    for row, spec in zip(rows, specs, strict=True):
        for name, text in spec.inputs.items():
            if text not in pinned:
                pinned[text] = pin_input(catalog, home, text)
            item = pinned[text]
            found.append(
                RunInput(
                    run_id=str(row["id"]),
                    name=name,
                    kind=item.kind,
                    source=item.source,
                    path=input_work_path(name, item.file_name),
                    hash=item.hash,
                    size=item.size,
                )
            )
    return found


def verify_inputs(blobs: BlobStore, run_id: str, inputs: Sequence[RunInput]) -> None:
    """Refuse, naming the input, its path and hash, unless every blob is present and intact."""
    for item in inputs:
        if blobs.verify(item.hash):
            continue
        what = (
            "corrupt (its content no longer matches its hash)"
            if blobs.has(item.hash)
            else ("missing")
        )
        raise InputError(
            f"cannot reproduce {run_id[:12]}: input {item.name} ({item.source}, {item.path}, "
            f"blob {item.hash}) is {what} in {blobs.root}"
        )
