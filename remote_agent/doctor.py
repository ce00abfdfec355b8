"""The checks behind `cvtui doctor`: can this host run cvtui's agent and runs, and how well."""

from __future__ import annotations

import os
import sys

from remote_agent.blocktree import (
    ALGO_BLAKE2B,
    ALGO_XXH3,
    BLOCK_ALGORITHMS,
    measure_speeds,
    rank_algorithms,
    xxhash_available,
)
from remote_agent.hoststats import GIB, existing_ancestor
from remote_agent.protocol import BACKEND_NONE, BACKEND_SIMULATED, MIN_PYTHON, Check

DISK_LOW_BYTES = GIB  # the disk check fails below this much free space under the root


def hash_algorithms() -> list[str]:
    """Whole-file hashes of code files this host can compute (hello), fastest first."""
    return [ALGO_XXH3, ALGO_BLAKE2B] if xxhash_available() else [ALGO_BLAKE2B]


def block_hash_algorithms() -> list[str]:
    """The hashes file sync may use here (files_algorithms times them)."""
    rest = [a for a in BLOCK_ALGORITHMS if a != ALGO_XXH3]
    return [ALGO_XXH3, *rest] if xxhash_available() else rest


def python_version() -> str:
    return ".".join(str(part) for part in sys.version_info[:3])


def check_python() -> Check:
    ok = sys.version_info >= MIN_PYTHON
    need = ".".join(map(str, MIN_PYTHON))
    return Check("python", ok, f"{python_version()} at {sys.executable} (needs {need}+)")


def check_root(root: str) -> Check:
    probe = os.path.join(root, f".cvtui-check-{os.getpid()}")
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok\n")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return Check("root", False, f"{root} is not writable: {exc.strerror or exc}")
    return Check("root", True, f"{root} is writable")


def check_leases(leases_dir: str) -> Check:
    """The shared GPU lease directory exists with mode 1777 and flock works in it."""
    import fcntl  # Unix only, like the leases themselves

    try:
        if not os.path.isdir(leases_dir):
            os.makedirs(leases_dir, exist_ok=True)
            # Shared by every user's runs on purpose (sticky, like /tmp); makedirs applied umask.
            os.chmod(leases_dir, 0o1777)  # noqa: S103
        st = os.stat(leases_dir)
        if st.st_uid == os.getuid() and st.st_mode & 0o7777 != 0o1777:
            os.chmod(leases_dir, 0o1777)  # noqa: S103  (as above)
            st = os.stat(leases_dir)
        # O_EXCL|O_NOFOLLOW: in a world-writable directory, never follow another user's link.
        probe = os.path.join(leases_dir, f".check-{os.getuid()}-{os.getpid()}")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(probe, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        return Check("leases", False, f"{leases_dir}: {exc.strerror or exc}")
    mode = st.st_mode & 0o7777
    if mode != 0o1777:
        return Check(
            "leases",
            False,
            f"{leases_dir} has mode {mode:04o}, not 1777: other users cannot lease GPUs "
            f"(its owner can run: chmod 1777 {leases_dir})",
        )
    return Check("leases", True, f"{leases_dir} has mode 1777 and flock works")


def check_disk(root: str) -> Check:
    where = existing_ancestor(root)
    try:
        st = os.statvfs(where)
    except OSError as exc:
        return Check("disk", False, f"cannot stat {where}: {exc.strerror or exc}")
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    detail = f"{free} bytes ({free / GIB:.1f} GiB) free of {total} bytes under {where}"
    return Check("disk", free >= DISK_LOW_BYTES, detail)


def check_hashing() -> Check:
    speeds = measure_speeds(block_hash_algorithms())
    detail = ", ".join(f"{a} {speeds[a] / 1e9:.2f} GB/s" for a in rank_algorithms(speeds))
    if ALGO_XXH3 not in speeds:
        detail += " (pip install --user xxhash makes file sync hashing faster)"
    return Check("hashing", True, detail)


def check_backend(backend: str, errors: list[str], gpu_count: int) -> Check:
    why = "; ".join(errors)
    if backend == BACKEND_NONE:
        return Check("gpu_backend", False, f"no GPU backend works: {why}")
    detail = f"{backend}, {gpu_count} GPU(s)"
    if backend == BACKEND_SIMULATED:
        detail += " (simulated by the inventory's simulate: field)"
    return Check("gpu_backend", True, detail + (f"; not used: {why}" if why else ""))


def run_checks(
    root: str, leases_dir: str, backend: str, errors: list[str], gpu_count: int
) -> list[Check]:
    """Every check, in the order `cvtui doctor` shows them."""
    return [
        check_python(),
        check_root(root),
        check_leases(leases_dir),
        check_disk(root),
        check_backend(backend, errors, gpu_count),
        check_hashing(),
    ]
