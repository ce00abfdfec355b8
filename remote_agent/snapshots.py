"""Code snapshots on a host: unpack an uploaded tarball safely, copy one into a run dir."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import time
from typing import Callable

from remote_agent.rundir import CODE_HASH

COPY_CHUNK_BYTES = 1 << 20


SEAL_SUFFIX = ".sealed"  # <root>/code/<hash>.sealed: when the snapshot was made read-only


class UnsafeArchive(ValueError):
    """A tar member that would land outside the snapshot, or is not a file, dir or link."""


class CodeChanged(Exception):
    """A snapshot was changed on the host after it was unpacked; it has been set aside."""


def code_dir(root: str) -> str:
    return os.path.join(root, "code")


def snapshot_path(root: str, code_hash: str) -> str:
    return os.path.join(code_dir(root), code_hash)


def _inside(base: str, path: str) -> bool:
    return path == base or path.startswith(base + os.sep)


def _member_path(dest: str, name: str) -> str:
    """Where a member goes, refusing absolute names and `..`, and parents that are links out."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith("/") or ".." in parts:
        raise UnsafeArchive(f"member {name!r} is absolute or climbs out with '..'")
    relative = [part for part in parts if part not in ("", ".")]
    if not relative:
        return dest
    path = os.path.join(dest, *relative)
    # Links extracted earlier are followed here, so a member can never be written through one.
    if not _inside(dest, os.path.realpath(os.path.dirname(path))):
        raise UnsafeArchive(f"member {name!r} would be written outside through a link")
    return path


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: str) -> None:
    path = _member_path(dest, member.name)
    if path == dest:
        return
    if member.isdir():
        os.makedirs(path, mode=0o700, exist_ok=True)
        return
    if os.path.lexists(path):
        raise UnsafeArchive(f"member {member.name!r} appears twice")
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    if member.issym():
        target = member.linkname
        resolved = os.path.realpath(os.path.join(os.path.dirname(path), target))
        if os.path.isabs(target) or not _inside(dest, resolved):
            raise UnsafeArchive(f"link {member.name!r} -> {target!r} points outside")
        os.symlink(target, path)
    elif member.islnk():
        source = os.path.realpath(_member_path(dest, member.linkname))
        if not _inside(dest, source) or not os.path.isfile(source):
            raise UnsafeArchive(f"hard link {member.name!r} -> {member.linkname!r} is outside")
        os.link(source, path)
    elif member.isreg():
        stream = tar.extractfile(member)
        if stream is None:
            raise UnsafeArchive(f"member {member.name!r} has no data")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with stream, os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            shutil.copyfileobj(stream, out, COPY_CHUNK_BYTES)
        if member.mode & 0o111:
            os.chmod(path, 0o700)
    else:
        raise UnsafeArchive(f"member {member.name!r} is a device, fifo or other special file")


def _set_modes(top: str, file_mode: int, exec_mode: int, dir_mode: int) -> None:
    """Files get file_mode (exec_mode when any x bit is set), directories dir_mode; links stay."""
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                os.chmod(path, exec_mode if st.st_mode & 0o111 else file_mode)
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, dir_mode)
    os.chmod(top, dir_mode)


def remove_tree(top: str) -> None:
    """rmtree that also works on a read-only snapshot."""
    if not os.path.lexists(top):
        return
    for dirpath, dirnames, _ in os.walk(top):
        os.chmod(dirpath, 0o700)
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
    shutil.rmtree(top, ignore_errors=True)


def _check_links(dest: str) -> None:
    # Each link was checked when made, but a later link can change where an earlier one leads.
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and not _inside(dest, os.path.realpath(path)):
                raise UnsafeArchive(f"link {os.path.relpath(path, dest)!r} points outside")


def unpack_code(root: str, code_hash: str, archive: str) -> str:
    """Extract <root>/<archive> once into <root>/code/<hash>, read-only; its path.

    Raises UnsafeArchive for a hostile archive and ValueError for bad arguments.
    """
    if not CODE_HASH.match(code_hash):
        raise ValueError(f"code hash {code_hash[:80]!r} is not 8 to 128 lowercase hex digits")
    archive_path = os.path.normpath(os.path.join(root, archive))
    if os.path.isabs(archive) or not _inside(code_dir(root), archive_path):
        raise ValueError(f"archive {archive[:200]!r} is not a path under {code_dir(root)}")
    _make_private(code_dir(root))
    final = snapshot_path(root, code_hash)
    if os.path.isdir(final):  # another controller unpacked it first
        _remove_file(archive_path)
        return final
    if not os.path.isfile(archive_path):
        raise ValueError(f"archive {archive_path} does not exist")
    tmp = f"{final}.tmp-{os.getpid()}"
    remove_tree(tmp)
    os.makedirs(tmp, mode=0o700)
    try:
        dest = os.path.realpath(tmp)
        try:
            with tarfile.open(archive_path, "r:*") as tar:
                for member in tar:
                    _extract_member(tar, member, dest)
        except tarfile.TarError as exc:
            raise UnsafeArchive(f"not a readable tar archive: {exc}") from exc
        _check_links(dest)
        # Read-only: shared by every run, nobody edits it in place. Owner only: it is a lab's
        # unpublished code, and other users of the host must not read it.
        _set_modes(tmp, 0o400, 0o500, 0o500)
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isdir(final):
                raise
        else:
            _write_seal(final)
    finally:
        remove_tree(tmp)  # a no-op once renamed; removes a refused or losing extraction
    _remove_file(archive_path)
    return final


def _make_private(directory: str) -> None:
    """Close a directory of ours to other users (SFTP may have made it 0755).

    Snapshots unpacked before they were made owner-only stay as they are (a chmod would
    break their seal); this directory above them keeps other users out of them.
    """
    st = os.stat(directory)
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(directory, stat.S_IMODE(st.st_mode) & 0o700)


def _write_seal(snapshot: str) -> int:
    """Record the newest ctime of the read-only tree; any ctime after it is an edit.

    The file system's own clock is the reference (an NFS server's may differ from ours).
    """
    sealed_ns = os.lstat(snapshot).st_ctime_ns
    for dirpath, dirnames, filenames in os.walk(snapshot):
        for name in dirnames + filenames:
            sealed_ns = max(sealed_ns, os.lstat(os.path.join(dirpath, name)).st_ctime_ns)
    tmp = f"{snapshot}{SEAL_SUFFIX}.{os.getpid()}"
    with open(tmp, "w") as out:
        out.write(str(sealed_ns))
    os.replace(tmp, snapshot + SEAL_SUFFIX)
    return sealed_ns


def _seal_time(snapshot: str) -> int:
    """When the snapshot was sealed; one unpacked before seals existed is sealed now."""
    try:
        with open(snapshot + SEAL_SUFFIX) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return _write_seal(snapshot)


def _set_aside(snapshot: str, what: str) -> CodeChanged:
    """Move a changed snapshot out of the way (the edits are kept there) and say so."""
    aside = f"{snapshot}.changed-{time.time_ns()}"
    os.rename(snapshot, aside)
    _remove_file(snapshot + SEAL_SUFFIX)
    return CodeChanged(
        f"{what} was changed on the host after it was unpacked; set aside as {aside}"
    )


def _remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def copy_snapshot(
    snapshot: str, run_dir: str, record: Callable[[str], bool] | None = None
) -> dict[str, list[int]]:
    """Copy a snapshot's tree into an existing dir, writable again (0644/0755).

    Returns {path: [size, mtime_ns]} of the copies of the regular files whose '/'-separated
    path `record` accepts. Raises CodeChanged when any entry changed (ctime) since the
    snapshot was sealed: a run must get exactly the code its hash names.
    """
    recorded: dict[str, list[int]] = {}
    sealed_ns = _seal_time(snapshot)
    if os.lstat(snapshot).st_ctime_ns > sealed_ns:
        raise _set_aside(snapshot, f"code snapshot {os.path.basename(snapshot)}")
    for dirpath, dirnames, filenames in os.walk(snapshot):
        rel = os.path.relpath(dirpath, snapshot)
        target_dir = run_dir if rel == "." else os.path.join(run_dir, rel)
        for name in dirnames + filenames:
            src = os.path.join(dirpath, name)
            dst = os.path.join(target_dir, name)
            st = os.lstat(src)
            if st.st_ctime_ns > sealed_ns:
                name_shown = os.path.relpath(src, snapshot)
                raise _set_aside(
                    snapshot, f"{name_shown} of code snapshot {os.path.basename(snapshot)}"
                )
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)  # os.walk does not descend into it
            elif stat.S_ISDIR(st.st_mode):
                os.mkdir(dst, 0o755)
                os.chmod(dst, 0o755)  # noqa: S103  (inside the 0700 run dir; umask may cut it)
            elif stat.S_ISREG(st.st_mode):
                shutil.copyfile(src, dst, follow_symlinks=False)
                os.chmod(dst, 0o755 if st.st_mode & 0o111 else 0o644)
                path = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if record is not None and record(path):
                    copied = os.stat(dst)
                    recorded[path] = [copied.st_size, copied.st_mtime_ns]
    return recorded
