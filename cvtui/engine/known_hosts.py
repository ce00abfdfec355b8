"""known_hosts files as OpenSSH reads and writes them: hashed names, [host]:port, markers."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import asyncssh

DEFAULT_SSH_PORT = 22
MARKERS = ("cert-authority", "revoked")
_HASH_PREFIX = "|1|"  # HMAC-SHA1, the only hash OpenSSH writes
_PORT_NAME_RE = re.compile(r"\[(.+)\]:\d+")


def lookup_name(hostname: str, port: int, alias: str | None = None) -> str:
    """The name OpenSSH looks a server up by: HostKeyAlias, else host or [host]:port."""
    if alias:
        return alias.lower()
    hostname = hostname.lower()
    return hostname if port == DEFAULT_SSH_PORT else f"[{hostname}]:{port}"


def hashed_name(name: str, salt: bytes | None = None) -> str:
    """name hashed the way `HashKnownHosts yes` and `ssh-keygen -H` write it."""
    salt = secrets.token_bytes(20) if salt is None else salt
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"{_HASH_PREFIX}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


@lru_cache(maxsize=512)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # OpenSSH patterns know only * and ?; everything else, [ and ] included, is literal.
    wildcards = {"*": ".*", "?": "."}
    parts = [wildcards.get(char) or re.escape(char) for char in pattern]
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def names_match(names: str, name: str) -> bool:
    """Whether a known_hosts host field matches name, as OpenSSH's match_hostname decides.

    A hashed field matches one exact name. A plain field is a comma-separated pattern list:
    a matching negated pattern (`!host`) rules the line out, otherwise any match counts.
    """
    if names.startswith(_HASH_PREFIX):
        try:
            _, _, salt_b64, digest_b64 = names.split("|")
            salt, digest = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        except ValueError:
            return False
        return hmac.compare_digest(hmac.new(salt, name.encode(), hashlib.sha1).digest(), digest)
    matched = False
    for pattern in names.split(","):
        negated = pattern.startswith("!")
        if _pattern_regex(pattern[1:] if negated else pattern).fullmatch(name):
            if negated:
                return False
            matched = True
    return matched


@dataclass(frozen=True)
class KnownHostsLine:
    """One entry of a known_hosts file, with where it is."""

    path: Path
    line_no: int  # 1-based
    marker: str | None  # "cert-authority", "revoked" or None
    names: str  # the host field as written (hashed or a pattern list)
    key: asyncssh.SSHKey | None  # None: a key type this asyncssh cannot read
    text: str  # the line as written, without its line break

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line_no}"

    def holds(self, key: asyncssh.SSHKey) -> bool:
        return self.key is not None and self.key.public_data == key.public_data


def parse_line(path: Path, line_no: int, text: str) -> KnownHostsLine | None:
    """The entry on one line, or None for blanks, comments and lines OpenSSH would skip."""
    fields = text.split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = None
    if fields[0].startswith("@"):
        marker = fields[0][1:]
        if marker not in MARKERS:
            return None
        fields = fields[1:]
    if len(fields) < 3:
        return None
    key: asyncssh.SSHKey | None
    try:
        key = asyncssh.import_public_key(" ".join(fields[1:3]))
    except (asyncssh.KeyImportError, ValueError):
        key = None
    return KnownHostsLine(path, line_no, marker, fields[0], key, text)


def read_lines(path: Path) -> list[KnownHostsLine]:
    """Every entry of one file; a missing or unreadable file has none."""
    try:
        data = path.read_text(errors="replace")
    except OSError:
        return []
    entries = (parse_line(path, n, text) for n, text in enumerate(data.splitlines(), 1))
    return [entry for entry in entries if entry is not None]


@dataclass(frozen=True)
class HostKeys:
    """What known_hosts says of one name: trusted keys, CAs and revoked keys, with file:line."""

    name: str
    files: tuple[Path, ...]
    trusted: tuple[KnownHostsLine, ...] = ()
    authorities: tuple[KnownHostsLine, ...] = ()
    revoked: tuple[KnownHostsLine, ...] = ()
    # Keys of the same host without the port: they vouch for [host]:port when they match,
    # but a different key there does not make this one "changed" (OpenSSH's rule).
    portless: tuple[KnownHostsLine, ...] = ()

    @property
    def known(self) -> bool:
        """Whether anything is recorded under this very name (a key or an authority)."""
        return bool(self.trusted or self.authorities)

    def trusted_entry(self, key: asyncssh.SSHKey) -> KnownHostsLine | None:
        entries = (*self.trusted, *self.portless)
        return next((entry for entry in entries if entry.holds(key)), None)

    def revoked_entry(self, key: asyncssh.SSHKey) -> KnownHostsLine | None:
        return next((entry for entry in self.revoked if entry.holds(key)), None)

    def for_asyncssh(self) -> tuple[list[asyncssh.SSHKey], ...]:
        """The (trusted keys, CA keys, revoked keys) lists asyncssh.connect takes as known_hosts.

        Matching is done here, by OpenSSH's rules, so asyncssh's looser lookup (it retries a
        non-standard port without the port, and also matches the IP address) never applies.
        """
        return tuple(
            [entry.key for entry in entries if entry.key is not None]
            for entries in ((*self.trusted, *self.portless), self.authorities, self.revoked)
        )


def look_up(name: str, files: Sequence[Path]) -> HostKeys:
    """Everything files say about name (a lookup_name), in file and line order.

    As in OpenSSH, when nothing is recorded for `[host]:port`, the keys recorded for plain
    `host` are consulted too (they count only if the server's key is one of them).
    """
    entries = [entry for path in files for entry in read_lines(path)]
    found: dict[str | None, list[KnownHostsLine]] = {None: [], "cert-authority": [], "revoked": []}
    for entry in entries:
        if names_match(entry.names, name):
            found[entry.marker].append(entry)
    portless: list[KnownHostsLine] = []
    plain = _PORT_NAME_RE.fullmatch(name)
    if plain and not found[None] and not found["cert-authority"]:
        portless = [e for e in entries if e.marker is None and names_match(e.names, plain[1])]
    return HostKeys(
        name,
        tuple(files),
        tuple(found[None]),
        tuple(found["cert-authority"]),
        tuple(found["revoked"]),
        tuple(portless),
    )


def record_key(path: Path, name: str, key: asyncssh.SSHKey, *, hashed: bool = False) -> str:
    """Append name's key to path (created 0600 in a 0700 directory); returns the line written."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_type, key_data = key.export_public_key().decode().split()[:2]  # no comment
    line = f"{hashed_name(name) if hashed else name} {key_type} {key_data}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        # A file whose last line has no line break would glue our entry onto it.
        needs_break = size > 0 and os.pread(fh.fileno(), 1, size - 1) != b"\n"
        fh.write((b"\n" if needs_break else b"") + line.encode() + b"\n")
    return line


@dataclass
class Removal:
    """What remove_host took out of one file, and where it kept the previous version."""

    path: Path
    removed: list[KnownHostsLine] = field(default_factory=list)
    backup: Path | None = None


def remove_host(path: Path, name: str) -> Removal:
    """Drop name's key lines from path, as `ssh-keygen -R name -f path` does.

    @cert-authority and @revoked lines stay (ssh-keygen keeps them too); the previous file
    is kept as path.old; the rest of the file is rewritten byte for byte.
    """
    result = Removal(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return result
    kept: list[bytes] = []
    for line_no, raw in enumerate(data.splitlines(keepends=True), 1):
        entry = parse_line(path, line_no, raw.decode(errors="replace").rstrip("\r\n"))
        if entry is not None and entry.marker is None and names_match(entry.names, name):
            result.removed.append(entry)
        else:
            kept.append(raw)
    if not result.removed:
        return result
    result.backup = path.with_name(path.name + ".old")
    mode = path.stat().st_mode & 0o7777
    _write_atomically(result.backup, data, mode)
    _write_atomically(path, b"".join(kept), mode)
    return result


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def fingerprint(key: asyncssh.SSHKey) -> str:
    """`ssh-ed25519 SHA256:...`, the form `ssh-keygen -lf` and OpenSSH's prompts show."""
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


def describe_entries(entries: Iterable[KnownHostsLine]) -> str:
    """`SHA256:... (file:line)` for each entry, for messages."""
    return ", ".join(
        f"{fingerprint(entry.key) if entry.key else 'unreadable key'} ({entry.where})"
        for entry in entries
    )
