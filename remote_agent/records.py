"""The run_records op: every run dir under the root with its records, for `cvtui reindex`."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Callable, Dict

from remote_agent.protocol import OP_RUN_RECORDS
from remote_agent.rundir import CONFIG_FILE, RUN_ID, RUN_RECORD
from remote_agent.runs import bad_request, checked_run_id

if TYPE_CHECKING:
    from remote_agent.runs import RunOps

DEFAULT_PAGE_BYTES = 256 << 10  # of JSON per reply: well under the 1 MiB line the controller reads
MAX_PAGE_BYTES = 768 << 10
MAX_RECORD_BYTES = 256 << 10  # a run.json or config.yaml larger than this is left out, said so
START_FILE = "start.json"  # a Slurm run's start message: holds the request (and its record)

Op = Callable[[Dict[str, Any]], Dict[str, Any]]


def _read_text(path: str) -> tuple[str | None, str | None]:
    """(text, why not) of a small UTF-8 file; (None, None) when it is not there."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECORD_BYTES + 1)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"{os.path.basename(path)}: {exc.strerror or exc}"
    if len(data) > MAX_RECORD_BYTES:
        return None, f"{os.path.basename(path)} is over {MAX_RECORD_BYTES} bytes"
    return data.decode("utf-8", "replace"), None


def _read_record(run_dir: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The controller's record of a run (run.json, else a Slurm run's start.json)."""
    problems = []
    for name in (RUN_RECORD, START_FILE):
        text, why = _read_text(os.path.join(run_dir, name))
        if why:
            problems.append(why)
        if text is None:
            continue
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            problems.append(f"{name} is not JSON")
            continue
        if name == START_FILE:
            request = data.get("request") if isinstance(data, dict) else None
            data = request.get("record") if isinstance(request, dict) else None
        if isinstance(data, dict) and data:
            return data, problems
    return None, problems


class RecordOps:
    """OP_RUN_RECORDS over the agent's run dirs; `ops` is merged into the agent's ops."""

    def __init__(self, runs: RunOps) -> None:
        self.runs = runs
        self.ops: dict[str, Op] = {OP_RUN_RECORDS: self.op_run_records}

    def op_run_records(self, message: dict[str, Any]) -> dict[str, Any]:
        after = message.get("after")
        if after is not None:
            after = checked_run_id(after)
        limit = message.get("max_bytes", DEFAULT_PAGE_BYTES)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise bad_request('"max_bytes" must be a positive integer')
        limit = min(limit, MAX_PAGE_BYTES)
        try:
            names = sorted(os.listdir(self.runs.runs_dir))
        except FileNotFoundError:
            names = []
        ids = [name for name in names if RUN_ID.match(name) and (after is None or name > after)]
        page: list[dict[str, Any]] = []
        used = 0
        for run_id in ids:
            entry = self.record_of(run_id)
            if entry is None:
                continue  # removed while we listed
            size = len(json.dumps(entry))
            if page and used + size > limit:
                return {"runs": page, "next": page[-1]["run_id"]}
            page.append(entry)
            used += size
        return {"runs": page, "next": None}

    def record_of(self, run_id: str) -> dict[str, Any] | None:
        """A run dir's status (as status_of judges it), record and config; None: no run dir."""
        status = self.runs.status_of(run_id)
        if status is None:
            return None
        run_dir = self.runs.run_dir(run_id)
        record, problems = _read_record(run_dir)
        config, why = _read_text(os.path.join(run_dir, CONFIG_FILE))
        if why:
            problems.append(why)
        return {
            "run_id": run_id,
            "status": status.to_wire(),
            "record": record,
            "config_yaml": config,
            "problems": problems,
        }
