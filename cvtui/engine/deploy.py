"""Agent deployment: a private host root, content-addressed upload over SFTP, and the start."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import posixpath
import secrets
import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncssh

from cvtui.engine.agent_build import AgentBundle, remote_agent_path
from cvtui.engine.agent_client import AgentClient, AgentClosedError, EventHandler
from cvtui.engine.connections import HostConnectError
from cvtui.engine.jump_hosts import handshake_slot
from remote_agent.protocol import MAX_PREAMBLE_LINES, ProtocolError, RemoteError

log = logging.getLogger("cvtui.engine.deploy")

if TYPE_CHECKING:
    from cvtui.inventory import Host

ROOT_MODE = 0o700
# What cvtui keeps in a host root. A root holding anything else is shared with something
# that is not cvtui, so cvtui does not change its mode (it warns instead).
ROOT_ENTRIES = frozenset({"agent", "code", "runs", "workspace", "simulate"})
PID_LINE = b"cvtui-pid "
EXIT_NOT_FOUND = 127  # what a POSIX shell returns when `exec python3` finds no python3
START_TIMEOUT_S = 15.0
# Commands run under `sh -c`, which first names its pid on stderr and then execs the command:
# the command keeps that pid and leads the process group sshd made for the session, so one
# that hangs can be killed whole. sh also keeps the login shell's syntax (csh, fish) out of it.
_START_SCRIPT = 'echo "cvtui-pid $$" >&2; exec "$@"'


def remote_path(path: str) -> str:
    """A host path as SSH sees it: `~/x` becomes `x`, relative to the login directory.

    Both SFTP and the exec'd command start in the home directory, so relative paths avoid
    relying on a shell to expand `~` (which shlex quoting would prevent anyway).
    """
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    return path


def agent_file(host: Host, bundle: AgentBundle) -> str:
    return remote_agent_path(remote_path(host.root), bundle)


@dataclass(frozen=True)
class RootCheck:
    """The host root's mode, and what cvtui did about it. Other users must not read it: it
    holds a lab's code snapshots and run outputs."""

    path: str  # as the inventory writes it
    mode: int  # permission bits now
    tightened_from: int | None = None  # the mode before cvtui made it 0700
    warning: str | None = None  # still open to others, and cvtui would not or could not fix it

    def note(self) -> str | None:
        """One line for the log, `cvtui hosts` and `cvtui doctor`, or None when all is well."""
        if self.tightened_from is not None:
            return (
                f"host root {self.path} was open to other users (mode "
                f"{self.tightened_from:04o}); cvtui made it 0700"
            )
        return self.warning


async def secure_root(sftp: asyncssh.SFTPClient, host: Host) -> RootCheck:
    """Create the host root 0700, or tighten an existing one that cvtui owns.

    A root counts as cvtui's when it holds nothing but cvtui's own entries and is not the
    login directory itself; any other root open to group or others is left as is, with a
    warning.
    """
    root = remote_path(host.root)
    try:
        attrs = await sftp.stat(root)
    except asyncssh.SFTPNoSuchFile:
        parent = posixpath.dirname(root.rstrip("/"))
        if parent:
            await sftp.makedirs(parent, exist_ok=True)
        with contextlib.suppress(asyncssh.SFTPFailure):  # another controller made it first
            await sftp.mkdir(root, asyncssh.SFTPAttrs(permissions=ROOT_MODE))
        attrs = await sftp.stat(root)
    mode = (attrs.permissions or 0) & 0o7777
    if not mode & 0o077:
        return RootCheck(host.root, mode)
    is_login_dir = root in (".", "./", "")
    if not is_login_dir and all(_is_cvtui_entry(name) for name in await sftp.listdir(root)):
        try:
            await sftp.chmod(root, ROOT_MODE)
        except asyncssh.SFTPError:
            pass  # not its owner: warn below
        else:
            return RootCheck(host.root, ROOT_MODE, tightened_from=mode)
    return RootCheck(
        host.root,
        mode,
        warning=(
            f"host root {host.root} is open to other users (mode {mode:04o}): they can read "
            f"its code snapshots and run outputs; if nothing else needs that, run on the "
            f"host: chmod 700 {host.root}"
        ),
    )


def _is_cvtui_entry(name: str) -> bool:
    return name in (".", "..") or name in ROOT_ENTRIES or name.startswith(".cvtui")


async def ensure_agent(
    conn: asyncssh.SSHClientConnection,
    host: Host,
    bundle: AgentBundle,
    *,
    force: bool = False,
    sftp: asyncssh.SFTPClient | None = None,
    root_secured: bool = False,
) -> tuple[str, bool]:
    """Upload the agent unless this exact build is already there; returns (path, uploaded).

    ``sftp`` reuses an open SFTP session (one round trip less than starting another);
    ``root_secured``: the caller ran secure_root on it already (its round trips are saved).
    """
    async with contextlib.AsyncExitStack() as stack:
        if sftp is None:
            sftp = await stack.enter_async_context(await open_sftp(conn, host))
        path = agent_file(host, bundle)
        if not force and await sftp.exists(path):
            return path, False
        if not root_secured:
            await secure_root(sftp, host)  # before anything is made under it
        directory = path.rsplit("/", 1)[0]
        await sftp.makedirs(directory, exist_ok=True)
        # A name of its own: two controllers uploading at once must not write one file.
        tmp = f"{path}.{secrets.token_hex(6)}.part"
        async with sftp.open(tmp, "wb") as fh:
            await fh.write(bundle.data)
        await sftp.chmod(tmp, 0o600)
        # posix-rename@openssh.com replaces atomically, so a concurrent controller never
        # sees half an agent.
        await sftp.posix_rename(tmp, path)
    return path, True


async def open_sftp(conn: asyncssh.SSHClientConnection, host: Host) -> asyncssh.SFTPClient:
    """An SFTP session on conn. When it fails, HostConnectError says why where that can be
    told: the login shell prints on stdout before every command (an rc file's banner, which
    breaks a server's sftp-server: it is read as a packet), quoting what it prints; or the
    server runs commands but offers no SFTP at all."""
    try:
        return await conn.start_sftp_client()
    except asyncssh.Error as exc:
        printed = await shell_output(conn)
        if printed:
            raise HostConnectError(
                host.name,
                f"its login shell prints {printed!r} before every command (an rc file such "
                "as ~/.bashrc or /etc/bash.bashrc): SFTP cannot start through that; print "
                "only in interactive shells (`case $- in *i*) ;; *) return;; esac` above it)",
            ) from exc
        if printed == "" and isinstance(exc, asyncssh.ChannelOpenError):
            raise HostConnectError(
                host.name,
                f"its server runs commands but refuses SFTP ({exc.reason}): cvtui copies its "
                "agent and runs' files over SFTP; enable it in sshd_config "
                "(`Subsystem sftp internal-sftp`)",
            ) from exc
        raise


async def shell_output(conn: asyncssh.SSHClientConnection) -> str | None:
    """What the login shell prints on stdout for a command that prints nothing (its first
    line); "" when quiet; None when the command could not be run."""
    try:
        done = await asyncio.wait_for(conn.run("true", encoding=None), 5.0)
    except (TimeoutError, asyncssh.Error, OSError):
        return None
    out = done.stdout or b""
    text = out if isinstance(out, str) else bytes(out).decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0].strip()[:120] if lines else ""


def agent_command(host: Host, path: str, interval_s: float) -> str:
    """The one shell command per connection: exec the agent so no shell stays around."""
    argv = [
        host.python,
        "-u",
        path,
        "serve",
        "--root",
        remote_path(host.root),
        "--leases-dir",
        remote_path(host.leases_dir),
        "--interval",
        f"{interval_s:g}",
    ]
    if host.simulate is not None:
        spec = host.simulate
        argv += [
            "--simulate",
            json.dumps({"gpus": spec.gpus, "model": spec.model, "memory": spec.memory}),
        ]
    from cvtui.engine.host_kinds import kind_of  # it imports this module

    argv += kind_of(host).agent_options(host)
    return killable_command(argv)


def killable_command(argv: list[str]) -> str:
    """A command line for exec that runs argv so that KillableProcess can stop all of it."""
    return f"exec sh -c {shlex.quote(_START_SCRIPT)} sh {shlex.join(argv)}"


@dataclass
class KillableProcess:
    """A process started by killable_command: it can name why it died, and be killed whole."""

    process: asyncssh.SSHClientProcess[bytes]
    pid: int | None = None
    stderr_lines: list[str] = field(default_factory=list)
    _pid_read: bool = False

    async def read_pid(self, timeout_s: float = 1.0) -> int | None:
        """The process's pid from its stderr (the start script writes it first; the login
        shell's rc files may have written lines before it, such as stty's complaints)."""
        if not self._pid_read:
            self._pid_read = True
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                async with asyncio.timeout(timeout_s):
                    for _ in range(MAX_PREAMBLE_LINES + 1):
                        line = await self.process.stderr.readline()
                        if line.startswith(PID_LINE) and line[len(PID_LINE) :].strip().isdigit():
                            self.pid = int(line[len(PID_LINE) :])
                            break
                        if not line:
                            break
                        self.stderr_lines.append(line.decode(errors="replace").strip())
        return self.pid

    async def stop(self, conn: asyncssh.SSHClientConnection) -> None:
        """Kill the process group, if the process still runs; best effort, never raises."""
        if self.process.exit_status is not None or self.process.exit_signal is not None:
            return
        pid = await self.read_pid()
        with contextlib.suppress(asyncssh.Error, OSError):
            self.process.send_signal("KILL")  # servers that take signal requests kill it now
        if pid is not None:
            # A process group of this session: our process and whatever it forked, nothing else.
            # `kill -KILL -PGID`: dash, the common /bin/sh, takes no `--` before it.
            kill = f"kill -KILL -{pid} 2>/dev/null || kill -KILL {pid} 2>/dev/null; true"
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                await asyncio.wait_for(conn.run(f"exec sh -c {shlex.quote(kill)}"), 5.0)
        self.process.close()

    async def exit_reason(self, host: Host, exc: Exception) -> HostConnectError:
        """Name why an agent that exited at start did (no python, too old, crashed)."""
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(self.process.wait_closed(), 2.0)
        await self.read_pid(0.2)
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            rest = await asyncio.wait_for(self.process.stderr.read(), 1.0)
            self.stderr_lines += rest.decode(errors="replace").strip().splitlines()
        if self.process.exit_status == EXIT_NOT_FOUND:
            return HostConnectError(host.name, f"no python3 >= 3.8 ({host.python}: not found)")
        last = self.stderr_lines[-1] if self.stderr_lines else str(exc) or type(exc).__name__
        return HostConnectError(host.name, f"agent failed to start: {last}")


async def launch_agent(
    conn: asyncssh.SSHClientConnection,
    host: Host,
    path: str,
    interval_s: float,
    on_event: EventHandler,
    timeout_s: float = START_TIMEOUT_S,
) -> AgentClient:
    """Start the agent and read its hello. On any failure the started process is killed (a
    host `python` that never answers must not stay behind) and HostConnectError says why.

    Inventory hosts on one server (one address) start their agents a few at a time: fifty
    pythons starting at once on one machine would each take long enough to time out.
    """
    async with handshake_slot(("agent start", host.address, host.port, host.jump)):
        return await _launch_agent(conn, host, path, interval_s, on_event, timeout_s)


async def _launch_agent(
    conn: asyncssh.SSHClientConnection,
    host: Host,
    path: str,
    interval_s: float,
    on_event: EventHandler,
    timeout_s: float,
) -> AgentClient:
    process = await conn.create_process(agent_command(host, path, interval_s), encoding=None)
    starting = KillableProcess(process)
    client = AgentClient(process, on_event)
    try:
        await client.handshake(timeout_s)
    except RemoteError as exc:
        await starting.stop(conn)
        raise HostConnectError(host.name, f"no python3 >= 3.8 ({exc.message})") from exc
    except TimeoutError as exc:
        await starting.stop(conn)
        raise HostConnectError(
            host.name,
            f"agent start timed out: {host.python} did not answer within {timeout_s:g} s "
            "(cvtui stopped it)",
        ) from exc
    except (AgentClosedError, ProtocolError) as exc:
        failure = await starting.exit_reason(host, exc)
        await starting.stop(conn)
        raise failure from exc
    except BaseException:
        with contextlib.suppress(asyncssh.Error, OSError):
            process.send_signal("KILL")  # cancelled: no time to wait for a kill command
        process.close()
        raise
    if client.preamble:
        log.warning(
            "%s: its login shell printed %d line(s) before the agent started, skipped: %r "
            "(an rc file such as ~/.bashrc; SFTP breaks on such output unless the server's "
            "sftp is internal-sftp)",
            host.name,
            len(client.preamble),
            client.preamble[0],
        )
    return client
