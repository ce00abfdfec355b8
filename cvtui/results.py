"""What the library's calls return (cvtui.api.Lab): plain frozen records, printable as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from cvtui.errors import CvtuiError


@dataclass(frozen=True)
class Submitted:
    """A queued run and what the engine decided for it: where it went, or why it waits."""

    id: str
    name: str
    state: str  # queued (waiting), dispatching, running, or already ended
    host: str | None
    gpus: tuple[int, ...]
    reason: str | None  # why it waits, when it does

    def where(self) -> str:
        if self.host and self.state == "queued":  # held in a cluster's own queue
            return f"pending on {self.host}: {self.reason or 'in its queue'}"
        if self.host:
            gpus = ",".join(str(g) for g in self.gpus) or "-"
            return f"{self.state} on {self.host} GPU {gpus}"
        return f"waits: {self.reason or 'for the next dispatch pass'}"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "gpus": list(self.gpus)}


@dataclass(frozen=True)
class CancelResult:
    """What cancelling one run did."""

    id: str
    name: str
    outcome: str


class ExecFailed(CvtuiError):
    """A command run with check=True exited non-zero."""


@dataclass(frozen=True)
class ExecResult:
    """A command run on a host now (`Lab.exec`): its exit code and everything it printed."""

    host: str
    argv: tuple[str, ...]
    exit_code: int  # 128+N when it died of signal N
    stdout: str  # decoded as UTF-8 (bytes that are not UTF-8 replaced)
    stderr: str
    stdout_bytes: bytes
    stderr_bytes: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def check(self) -> ExecResult:
        """self, or ExecFailed naming the command, the host and the last line of stderr."""
        if self.exit_code != 0:
            last = self.stderr.strip().splitlines()[-1:] or ["no output on stderr"]
            raise ExecFailed(
                f"{' '.join(self.argv)[:120]} on {self.host} exited {self.exit_code}: {last[0]}"
            )
        return self


@dataclass(frozen=True)
class InferResult:
    """An inference (`Lab.infer`): a run of its own, followed to its end."""

    run_id: str
    exit_code: int  # the command's exit code; 1 when it ended without one (lost, cancelled)
    state: str  # the run's final state
    output: str  # stdout and stderr as the run wrote them (one log), decoded as UTF-8

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"


class MetricRow(NamedTuple):
    """One value of one metric of a run (pandas.DataFrame(rows) names the columns)."""

    run_id: str
    step: float | int | str | None  # the step column (or JSON key), else the row number
    key: str
    value: float | str | None  # a number, or the cell as written when it is not one


@dataclass(frozen=True)
class RunEvent:
    """Something that happened to a followed run (`Lab.follow`).

    kind "state": it entered `state` (detail: why, when known; also events without a state
    change, such as the checkpoint a retry resumes from). kind "log": it wrote output: one
    line (`line`, without its newline, a bar redrawn with \\r as it last looked), or with
    lines=False the bytes as they came (`data`).
    """

    run_id: str
    kind: str  # "state" or "log"
    time: float  # unix seconds (state events); when it was read (log events)
    state: str | None = None
    detail: str | None = None
    line: str | None = None
    data: bytes = b""
