"""The run_records op on a real agent: every run dir with its record, paged, bounded."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_agent_harness import AgentProcess, python38
from run_harness import start, wait_state

from remote_agent.protocol import E_BAD_REQUEST, OP_RUN_RECORDS, RUN_FAILED, RUN_SUCCEEDED


@pytest.fixture(params=["current", "py3.8"])
def agent(request: pytest.FixtureRequest, root: Path) -> Iterator[AgentProcess]:
    python = sys.executable if request.param == "current" else python38()
    with AgentProcess(root, simulate={"gpus": 2}, interval_s=0.05, python=python) as proc:
        proc.hello()
        yield proc


def all_records(agent: AgentProcess, max_bytes: int) -> tuple[list[dict], int]:
    runs: list[dict] = []
    pages = 0
    after = None
    while True:
        reply = agent.request(OP_RUN_RECORDS, after=after, max_bytes=max_bytes)
        pages += 1
        assert len(json.dumps(reply["runs"])) <= max_bytes or len(reply["runs"]) == 1
        runs += reply["runs"]
        after = reply["next"]
        if after is None:
            return runs, pages


def test_run_records_list_every_run_dir_with_its_record(agent: AgentProcess, root: Path) -> None:
    ids = []
    for n in range(5):
        record = {"id": f"x{n}", "name": f"job-{n}", "params": {"n": n}, "spec": {"pad": "x" * 900}}
        reply = start(
            agent,
            f"exit {n % 2}",
            run_id=f"r{n:016x}",
            config_yaml=f"n: {n}\n",
            record=record,
        )
        ids.append(reply["run_id"])
    for run_id in ids:
        wait_state(agent, run_id)
    (root / "runs" / "r0000000000000009").mkdir()  # a run dir without anything: listed too
    (root / "runs" / "not-a-run").mkdir()  # not a run id: never listed

    runs, pages = all_records(agent, 2500)
    assert pages >= 3  # ~1 KiB per run: two per page
    assert [r["run_id"] for r in runs] == [*ids, "r0000000000000009"]
    for n, entry in enumerate(runs[:5]):
        assert entry["record"]["name"] == f"job-{n}" and entry["record"]["params"] == {"n": n}
        assert entry["config_yaml"] == f"n: {n}\n"
        assert entry["status"]["state"] == (RUN_FAILED if n % 2 else RUN_SUCCEEDED)
        assert entry["status"]["exit_code"] == n % 2
    bare = runs[5]
    assert bare["record"] is None and bare["config_yaml"] is None

    (root / "runs" / ids[0] / "run.json").write_text("{not json")
    first = agent.request(OP_RUN_RECORDS)["runs"][0]
    assert first["record"] is None and first["problems"] == ["run.json is not JSON"]
    assert agent.request(OP_RUN_RECORDS, after=ids[-1])["runs"][0]["run_id"] == "r0000000000000009"


def test_run_records_refuse_bad_arguments(agent: AgentProcess) -> None:
    for n, bad in enumerate(({"after": "../etc"}, {"max_bytes": 0}, {"max_bytes": "big"})):
        agent.send({"id": 900 + n, "op": OP_RUN_RECORDS, **bad})
        assert agent.reply()["error"]["code"] == E_BAD_REQUEST
    reply = agent.request(OP_RUN_RECORDS)
    assert (reply["runs"], reply["next"]) == ([], None)
