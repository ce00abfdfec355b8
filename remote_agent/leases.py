"""GPU leases: one flock'ed file per GPU in a shared directory, and `agent.pyz exec`."""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import pwd
import stat
import sys
import time
from dataclasses import replace
from typing import Sequence

from remote_agent.protocol import GpuSample

LEASE_RETRY_S = 1.0  # how long a busy lease is retried, to ride out a run that is just ending
LEASE_POLL_S = 0.05
HOLDER_MAX_BYTES = 256
INODE_RECHECK_S = 10.0  # lock files are never unlinked, but a tmp cleaner may remove the dir
EXIT_LEASE_BUSY = 75  # EX_TEMPFAIL: try again later
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 127
DEFAULT_LEASES_DIR = "/tmp/cvtui-leases"
UNKNOWN_HOLDER = "?"


class LeaseBusy(Exception):
    """A GPU's lease is held by someone else."""

    def __init__(self, gpu: int, holder: str) -> None:
        super().__init__(f"GPU {gpu} is leased by {holder or UNKNOWN_HOLDER}")
        self.gpu = gpu
        self.holder = holder or UNKNOWN_HOLDER


def lease_path(leases_dir: str, gpu: int) -> str:
    return os.path.join(leases_dir, f"gpu{gpu}.lock")


def ensure_leases_dir(leases_dir: str) -> None:
    """Create the shared directory with mode 1777 (sticky, like /tmp) when we may."""
    os.makedirs(leases_dir, exist_ok=True)
    st = os.stat(leases_dir)
    if st.st_uid == os.getuid() and st.st_mode & 0o7777 != 0o1777:
        os.chmod(leases_dir, 0o1777)  # noqa: S103  (every user's runs lease GPUs here)


def _open_lock_file(path: str) -> tuple[int, bool]:
    """An fd on the lock file and whether it is writable; never follows a planted link."""
    base = os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, os.O_RDWR | base, 0o666)
        writable = True
    except PermissionError:
        # Another user created it without group/other write: we can still lock, not label.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        writable = False
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    if st.st_uid == os.getuid() and st.st_mode & 0o777 != 0o666:
        os.fchmod(fd, 0o666)  # umask trimmed it; other users must be able to label it too
    return fd, writable


def read_holder(path: str) -> str:
    """The "run_id user pid" line of a lease file ('' when unreadable or empty)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        data = os.read(fd, HOLDER_MAX_BYTES)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").strip()


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def take_leases(
    leases_dir: str, gpus: Sequence[int], holder_id: str, retry_s: float = LEASE_RETRY_S
) -> list[int]:
    """Lock every GPU's lease file; the open fds hold the leases until closed (or exit).

    Raises LeaseBusy (having released whatever it took) when one stays held for retry_s.
    """
    if not gpus:
        return []
    ensure_leases_dir(leases_dir)
    label = f"{holder_id} {_user_name()} {os.getpid()}\n".encode()
    taken: list[int] = []
    try:
        # Sorted, so two runs wanting overlapping sets never hold one each while waiting.
        for gpu in sorted(set(gpus)):
            path = lease_path(leases_dir, gpu)
            fd, writable = _open_lock_file(path)
            taken.append(fd)
            deadline = time.monotonic() + retry_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LeaseBusy(gpu, read_holder(path)) from None
                    time.sleep(LEASE_POLL_S)
            if writable:
                os.ftruncate(fd, 0)
                os.pwrite(fd, label, 0)
    except BaseException:
        release_leases(taken)
        raise
    return taken


def release_leases(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def held_flock_keys(text: str) -> set[tuple[int, int, int]]:
    """(major, minor, inode) of every granted FLOCK in the text of /proc/locks."""
    keys = set()
    for line in text.splitlines():
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 5578 fe:00:2146662 0 EOF"; waiters have "->" after the id.
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        parts = fields[5].split(":")
        if len(parts) != 3:
            continue
        try:
            keys.add((int(parts[0], 16), int(parts[1], 16), int(parts[2])))
        except ValueError:
            continue
    return keys


class LeaseWatcher:
    """Which GPUs are leased, read from /proc/locks without ever taking a lock ourselves."""

    def __init__(self, leases_dir: str, locks_path: str = "/proc/locks") -> None:
        self.leases_dir = leases_dir
        self.locks_path = locks_path
        self._keys: dict[int, tuple[tuple[int, int, int], float]] = {}  # gpu -> key, when seen

    def _key(self, gpu: int, now: float) -> tuple[int, int, int] | None:
        cached = self._keys.get(gpu)
        if cached is not None and now - cached[1] < INODE_RECHECK_S:
            return cached[0]
        try:
            st = os.stat(lease_path(self.leases_dir, gpu))
        except OSError:
            self._keys.pop(gpu, None)
            return None
        key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        self._keys[gpu] = (key, now)
        return key

    def leased(self, gpus: Sequence[int]) -> dict[int, str]:
        """GPU index -> run id written in its held lease file ("?" when it says nothing)."""
        now = time.monotonic()
        keys = {gpu: key for gpu in gpus if (key := self._key(gpu, now)) is not None}
        if not keys:
            return {}
        try:
            with open(self.locks_path, encoding="ascii", errors="replace") as f:
                held = held_flock_keys(f.read())
        except OSError:
            return {}
        inodes = {key[2] for key in held}
        found = {}
        for gpu, key in keys.items():
            # Overlay and other virtual filesystems (major 0) may show another device number
            # in /proc/locks than stat() does: there the inode alone must do.
            if key in held or (key[0] == 0 and key[2] in inodes):
                holder = read_holder(lease_path(self.leases_dir, gpu)).split()
                found[gpu] = holder[0][:64] if holder else UNKNOWN_HOLDER
        return found

    def annotate(self, samples: Sequence[GpuSample]) -> list[GpuSample]:
        """The samples with leased_by filled in."""
        leased = self.leased([s.index for s in samples])
        return [replace(s, leased_by=leased.get(s.index)) for s in samples]


def _parse_gpus(text: str) -> list[int]:
    gpus = []
    for token in text.split(","):
        token = token.strip()
        if not token:
            continue
        if not token.isdigit():
            raise ValueError(f"--gpus wants GPU indexes like 0,1, got {token!r}")
        gpus.append(int(token))
    return gpus


def exec_main(argv: list[str]) -> int:
    """`agent.pyz exec --leases-dir D [--gpus 0,1] [--root R] -- CMD ARGS...`.

    Takes the leases, then execs the command with the lease fds left open, so the leases live
    exactly as long as the command; the exit status is then the command's own. --root is
    accepted for symmetry with `serve` and not otherwise used.
    """
    parser = argparse.ArgumentParser(prog="agent.pyz exec")
    parser.add_argument("--leases-dir", default=DEFAULT_LEASES_DIR)
    parser.add_argument("--gpus", default="")
    parser.add_argument("--root", default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.stderr.write("cvtui exec: no command given (agent.pyz exec [options] -- CMD ...)\n")
        return EXIT_USAGE
    try:
        gpus = _parse_gpus(args.gpus)
    except ValueError as exc:
        sys.stderr.write(f"cvtui exec: {exc}\n")
        return EXIT_USAGE
    leases_dir = os.path.abspath(os.path.expanduser(args.leases_dir))
    try:
        fds = take_leases(leases_dir, gpus, f"exec-{os.getpid()}")
    except LeaseBusy as exc:
        sys.stderr.write(f"cvtui exec: {exc}\n")
        return EXIT_LEASE_BUSY
    except OSError as exc:
        sys.stderr.write(f"cvtui exec: cannot lease in {leases_dir}: {exc.strerror or exc}\n")
        return EXIT_LEASE_BUSY
    for fd in fds:
        os.set_inheritable(fd, True)
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)  # noqa: S606  (an argv, as the user typed it)
    except OSError as exc:
        sys.stderr.write(f"cvtui exec: cannot run {command[0]!r}: {exc.strerror or exc}\n")
    return EXIT_CANNOT_RUN
