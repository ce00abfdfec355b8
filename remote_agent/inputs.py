"""Run inputs on a host: stored once by content hash (verified on arrival), staged into a run's
work dir at its start as a link or a private copy."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from typing import Any, Callable, Dict

from remote_agent.doctor import hash_algorithms
from remote_agent.outputs import check_relpath
from remote_agent.protocol import (
    E_BAD_INPUT,
    E_BAD_REQUEST,
    E_INPUT_CORRUPT,
    E_NO_SUCH_FILE,
    INPUTS_DIR,
    OP_INPUT_STAGE,
    OWN_FILES_PREFIX,
    RemoteError,
)
from remote_agent.workspace import hash_path

STORED_NAME = re.compile(r"[0-9a-f]{32}\Z")  # xxh3_128 hex, the controller's content store name
DIGEST = re.compile(r"[0-9a-f]{16,128}\Z")
UPLOAD_SUFFIX = re.compile(r"\.[0-9a-f]{8,32}\.part\Z")
MAX_INPUTS = 64

Op = Callable[[Dict[str, Any]], Dict[str, Any]]


def stored_path(root: str, name: Any) -> str:
    """<root>/inputs/<name> for a content hash; RemoteError for anything else."""
    if not isinstance(name, str) or not STORED_NAME.match(name):
        raise RemoteError(E_BAD_REQUEST, '"hash" must be an xxh3_128 hex digest (32 characters)')
    return os.path.join(root, INPUTS_DIR, name)


def _regular_size(path: str) -> int | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


class InputOps:
    """The input store's op; `ops` is merged into the agent's ops."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.algorithms = hash_algorithms()
        self.ops: dict[str, Op] = {OP_INPUT_STAGE: self.op_stage}

    def op_stage(self, message: dict[str, Any]) -> dict[str, Any]:
        path = stored_path(self.root, message.get("hash"))
        size = message.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise RemoteError(E_BAD_REQUEST, '"size" must be a byte count')
        upload = message.get("upload")
        upload_path = None
        if upload is not None:
            name = str(message.get("hash"))
            if (
                not isinstance(upload, str)
                or not upload.startswith(name)
                or not UPLOAD_SUFFIX.match(upload[len(name) :])
            ):
                raise RemoteError(E_BAD_REQUEST, '"upload" must be "<hash>.<hex>.part"')
            upload_path = os.path.join(self.root, INPUTS_DIR, upload)
        try:
            if _regular_size(path) == size:
                return {"path": path, "present": True}
            if upload_path is None:
                return {"path": path, "present": False}
            self._place(upload_path, path, size, message)
            return {"path": path, "present": True}
        finally:
            if upload_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(upload_path)

    def _place(self, upload: str, path: str, size: int, message: dict[str, Any]) -> None:
        """Check an uploaded file's size and digest, then give it its content name (0400)."""
        algo = message.get("algo")
        if algo not in self.algorithms:
            known = ", ".join(self.algorithms)
            raise RemoteError(E_BAD_REQUEST, f"hash {algo!r} is not available here ({known})")
        digest = message.get("digest")
        if not isinstance(digest, str) or not DIGEST.match(digest):
            raise RemoteError(E_BAD_REQUEST, '"digest" must be a lowercase hex digest')
        found = _regular_size(upload)
        if found is None:
            raise RemoteError(E_NO_SUCH_FILE, f"no upload {os.path.basename(upload)}")
        if found != size:
            raise RemoteError(
                E_INPUT_CORRUPT, f"upload of {os.path.basename(path)} has {found} bytes, not {size}"
            )
        got = hash_path(upload, str(algo))
        if got != digest:
            raise RemoteError(
                E_INPUT_CORRUPT,
                f"upload of {os.path.basename(path)} hashes to {got} ({algo}), not {digest}; "
                "it was not kept",
            )
        os.chmod(upload, 0o400)
        os.replace(upload, path)


def stage_inputs(work_dir: str, root: str, inputs: Any) -> tuple[dict[str, list[int]], list[str]]:
    """Put each input in the work dir; ({copied path: [size, mtime_ns]}, [linked paths]).

    Copies are recorded like the code's files, so a checkpoint the run left as it was given
    is not taken for an output; links are recorded as links (never synced).
    """
    if not isinstance(inputs, list) or len(inputs) > MAX_INPUTS:
        raise RemoteError(E_BAD_REQUEST, f"inputs must be a list of at most {MAX_INPUTS}")
    copied: dict[str, list[int]] = {}
    linked: list[str] = []
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("copy", False), bool):
            raise RemoteError(E_BAD_REQUEST, "an input is {path, hash, copy}")
        rel = check_relpath(item.get("path"))
        if (rel.split("/")[0] + "/").startswith(OWN_FILES_PREFIX):
            raise RemoteError(E_BAD_REQUEST, f"input path {rel[:200]!r} is reserved")
        source = stored_path(root, item.get("hash"))
        if _regular_size(source) is None:  # removed since it was staged: staged again
            raise RemoteError(E_NO_SUCH_FILE, f"input {rel}: {source} is not on this host")
        dest = os.path.join(work_dir, *rel.split("/"))
        if os.path.lexists(dest):
            raise RemoteError(
                E_BAD_INPUT,
                f"input {rel}: the code snapshot already has that path; leave it out of the "
                "snapshot (exclude)",
            )
        os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
        if item.get("copy"):
            import shutil  # only runs with a copied input need it

            shutil.copyfile(source, dest)
            os.chmod(dest, 0o600)
            st = os.stat(dest)
            copied[rel] = [st.st_size, st.st_mtime_ns]
        else:
            os.symlink(source, dest)
            linked.append(rel)
    return copied, linked
