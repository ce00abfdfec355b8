"""`cvtui hosts trust`: show each key on the way to a host and record it, never silently."""

from __future__ import annotations

import asyncio
import shlex

import click

from cvtui.engine.known_hosts import describe_entries
from cvtui.engine.trust import CHANGED, REVOKED, TRUSTED, KeyCheck, route_keys
from cvtui.errors import CvtuiError
from cvtui.inventory import Host, Policy

EXIT_KEY_REFUSED = 4  # a changed or revoked key: nothing was written


class KeyRefusedError(CvtuiError):
    """A host key that trust will not record: changed (without --replace) or revoked."""

    exit_code = EXIT_KEY_REFUSED


def _rerun(host: str, *flags: str) -> str:
    return shlex.join(["cvtui", "hosts", "trust", host, *flags])


def _confirm(
    check: KeyCheck, name: str, *, yes: bool, interactive: bool, flags: tuple[str, ...]
) -> None:
    """Go on only with --yes or a `y` typed at a terminal; otherwise say what to run."""
    if yes:
        return
    if not interactive:
        raise CvtuiError(
            f"not recorded: no terminal to confirm {check.fingerprint} on; if that is the key "
            f"you expect, run: {_rerun(name, *flags, '--yes')}"
        )
    if not click.confirm("Trust this key?", default=False):
        raise CvtuiError("not trusted; nothing written")


def _decide(check: KeyCheck, name: str, *, yes: bool, replace: bool, interactive: bool) -> None:
    target = check.target
    click.echo(f"{check.label} ({target.describe()}) presents {check.fingerprint}")
    status = check.status
    if status == TRUSTED:
        entry = check.entry
        click.echo(f"  already trusted ({entry.where if entry else target.key_name})")
        return
    if status == REVOKED:
        entry = check.entry
        raise KeyRefusedError(
            f"{check.label}: the key it offers is revoked "
            f"({entry.where if entry else 'known_hosts'} marks it @revoked); nothing written"
        )
    if status == CHANGED and not replace:
        raise KeyRefusedError(
            f"host key CHANGED for {check.label}: known_hosts has "
            f"{describe_entries(check.recorded.trusted)} for {target.key_name}, the server now "
            f"offers {check.fingerprint}. This is what a man-in-the-middle looks like; nothing "
            f"was written. If the host was reinstalled or its key rotated, run: "
            f"{_rerun(name, '--replace')}"
        )
    flags = ("--replace",) if status == CHANGED else ()
    _confirm(check, name, yes=yes, interactive=interactive, flags=flags)
    if status == CHANGED:
        try:
            removals = check.replace()
        except OSError as exc:
            raise CvtuiError(f"cannot replace the old key: {exc}") from exc
        for removal in removals:
            for entry in removal.removed:
                click.echo(f"  removed {entry.where} (previous file kept as {removal.backup})")
        click.echo(f"  recorded in {target.record_file}")
        return
    click.echo(f"  recorded in {check.record()}")


def trust_host(
    host: Host, policy: Policy, *, yes: bool, replace: bool, interactive: bool, timeout_s: float
) -> None:
    """Walk the jump hosts and the host, confirming and recording each key that is new."""

    async def walk() -> None:
        async with route_keys(host, policy, timeout_s) as checks:
            async for check in checks:
                _decide(check, host.name, yes=yes, replace=replace, interactive=interactive)

    asyncio.run(walk())
