"""Runs and commands on real catalog files: lifecycle, compare-and-set across processes, ids."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from cvtui.catalog import (
    ACTIVE_STATES,
    FINAL_STATES,
    Catalog,
    new_run_id,
)
from cvtui.catalog.runs import CROCKFORD_BASE32, RUN_ID_LENGTH
from cvtui.catalog.schema import MIGRATIONS, migrate


def run(
    run_id: str,
    *,
    name: str = "train",
    priority: str = "normal",
    submitted: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A run as the CLI would insert it, with every required field."""
    row: dict[str, Any] = {
        "id": run_id,
        "name": name,
        "project": "demo",
        "user": "alice",
        "priority": priority,
        "command": ["python", "train.py", "--lr", "0.1"],
        "params": {"lr": 0.1, "depth": 18},
        "config": {"optim": {"lr": 0.1}, "epochs": 3},
        "spec": {"name": name, "grid": {"lr": [0.1, 0.01]}, "resources": {"gpus": 1}},
        "resources": {"gpus": 1, "min_free_mem": 20 << 30},
        "retries": 0,
        **extra,
    }
    if submitted is not None:
        row["submitted"] = submitted
    return row


def states_of(catalog: Catalog, run_id: str) -> list[str]:
    return [e["state"] for e in catalog.run_events(run_id)]


def decode_ms(run_id: str) -> int:
    """The millisecond timestamp held in the first 10 characters of a run id."""
    value = 0
    for char in run_id[:10]:
        value = value * 32 + CROCKFORD_BASE32.index(char)
    return value


# -- insert and read ----------------------------------------------------------------------


def test_insert_then_get_round_trips_json_and_fills_defaults(catalog: Catalog) -> None:
    shell = run("r2", command="python train.py > /dev/null", code_hash="ab" * 16)
    ids = catalog.insert_runs([run("r1"), shell], now=1_000.0)
    assert ids == ["r1", "r2"]
    got = catalog.get_run("r1")
    assert got is not None
    assert got == {
        **run("r1"),
        "state": "queued",
        "priority_rank": 2,
        "submitted": 1_000.0,
        "host": None,
        "gpus": None,
        "code_hash": None,
        "attempt": 1,
        "dispatched": None,
        "started": None,
        "ended": None,
        "exit_code": None,
        "progress": None,
        "progress_msg": None,
        "reason": None,
        "supervisor_pid": None,
        "pgid": None,
        "run_dir": None,
        "log_size": 0,
        "sync_status": None,
        "updated": 1_000.0,
        "work_dir": None,
        "final_by": None,
        "outputs_unmatched": None,
        "slurm_job": None,
    }
    other = catalog.get_run("r2")
    assert other is not None
    # A shell string stays a string, distinct from a list of arguments.
    assert (other["command"], other["code_hash"]) == ("python train.py > /dev/null", "ab" * 16)
    # The columns hold plain JSON, so Datasette and pandas read them directly.
    raw = catalog.db.execute("SELECT params, command FROM runs WHERE id = 'r1'").fetchone()
    assert raw == ('{"lr": 0.1, "depth": 18}', '["python", "train.py", "--lr", "0.1"]')
    assert catalog.get_run("nope") is None
    assert [(e["state"], e["time"], e["detail"]) for e in catalog.run_events("r1")] == [
        ("queued", 1_000.0, None)
    ]


def test_insert_checks_fields_and_a_bad_batch_inserts_nothing(catalog: Catalog) -> None:
    incomplete = run("x")
    del incomplete["spec"], incomplete["user"]
    with pytest.raises(ValueError, match="'x' lacks user, spec"):
        catalog.insert_runs([incomplete])
    with pytest.raises(ValueError, match=r"cannot insert column\(s\) colour"):
        catalog.insert_runs([run("x", colour="red")])
    with pytest.raises(ValueError, match=r"cannot insert column\(s\) state"):
        catalog.insert_runs([run("x", state="running")])
    with pytest.raises(ValueError, match="unknown priority 'asap'"):
        catalog.insert_runs([run("x", priority="asap")])
    catalog.insert_runs([run("a")])
    with pytest.raises(ValueError, match="run id 'a' is already in the catalog"):
        catalog.insert_runs([run("b"), run("a")])
    assert [r["id"] for r in catalog.list_runs()] == ["a"]
    assert catalog.db.execute("SELECT count(*) FROM run_events").fetchone() == (1,)
    assert catalog.insert_runs([]) == []


# -- lifecycle ----------------------------------------------------------------------------


def test_lifecycle_sets_fields_and_records_each_event_in_order(catalog: Catalog) -> None:
    catalog.insert_runs([run("r")], now=10.0)
    assert catalog.transition_run(
        "r", "dispatching", expect=["queued"], now=11.0, host="gpu-01", gpus=[2, 3], dispatched=11.0
    )
    assert catalog.transition_run(
        "r",
        "running",
        expect=["dispatching"],
        now=12.0,
        detail="supervisor 4242",
        started=11.5,
        supervisor_pid=4242,
        pgid=4243,
        run_dir="~/.cache/cvtui/runs/r",
    )
    assert catalog.transition_run(
        "r", "succeeded", expect=["running"], now=20.0, exit_code=0, ended=19.5
    )
    got = catalog.get_run("r")
    assert got is not None
    assert {k: got[k] for k in ("state", "host", "gpus", "dispatched", "started", "ended")} == {
        "state": "succeeded",
        "host": "gpu-01",
        "gpus": [2, 3],
        "dispatched": 11.0,
        "started": 11.5,
        "ended": 19.5,
    }
    assert (got["exit_code"], got["supervisor_pid"], got["pgid"], got["updated"]) == (
        0,
        4242,
        4243,
        20.0,
    )
    events = catalog.run_events("r")
    assert [(e["state"], e["time"], e["detail"]) for e in events] == [
        ("queued", 10.0, None),
        ("dispatching", 11.0, None),
        ("running", 12.0, "supervisor 4242"),
        ("succeeded", 20.0, None),
    ]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert {e["run_id"] for e in events} == {"r"}


def test_compare_and_set_refuses_a_transition_from_the_wrong_state(catalog: Catalog) -> None:
    catalog.insert_runs([run("r")], now=1.0)
    assert catalog.transition_run("r", "dispatching", expect=["queued"], host="a", now=2.0)
    # A second dispatcher lost the race: refused, and the first one's host stays.
    assert not catalog.transition_run("r", "dispatching", expect=["queued"], host="b", now=3.0)
    assert not catalog.transition_run("r", "succeeded", expect=["running"], now=3.0)
    got = catalog.get_run("r")
    assert got is not None
    assert (got["state"], got["host"], got["updated"]) == ("dispatching", "a", 2.0)
    assert states_of(catalog, "r") == ["queued", "dispatching"]
    assert not catalog.transition_run("ghost", "cancelled")
    assert not catalog.transition_run("r", "running", expect=[])


def test_a_final_state_is_left_only_when_expect_names_it(catalog: Catalog) -> None:
    catalog.insert_runs([run(s) for s in FINAL_STATES])
    for state in FINAL_STATES:
        catalog.transition_run(state, "running")
        assert catalog.transition_run(state, state)
        # Cancel after the end, with or without naming the active states, is refused.
        assert not catalog.transition_run(state, "cancelled")
        assert not catalog.transition_run(state, "cancelled", expect=ACTIVE_STATES)
        got = catalog.get_run(state)
        assert got is not None and got["state"] == state
    # A lost run whose supervisor turns up again may resume, because the caller says so.
    assert catalog.transition_run("lost", "running", expect=["lost"], detail="host is back")
    assert states_of(catalog, "lost") == ["queued", "running", "lost", "running"]


def test_transition_checks_states_and_columns(catalog: Catalog) -> None:
    catalog.insert_runs([run("r")])
    with pytest.raises(ValueError, match="unknown run state 'done'"):
        catalog.transition_run("r", "done")
    with pytest.raises(ValueError, match="unknown run state 'waiting'"):
        catalog.transition_run("r", "running", expect=["waiting"])
    for column in ("state", "id", "priority", "bogus; DROP TABLE runs"):
        with pytest.raises(ValueError, match="cannot set run column"):
            catalog.transition_run("r", "running", **{column: "x"})
        with pytest.raises(ValueError, match="cannot set run column"):
            catalog.update_run("r", **{column: "x"})
    assert states_of(catalog, "r") == ["queued"]


def test_update_run_changes_columns_without_an_event(catalog: Catalog) -> None:
    catalog.insert_runs([run("r")], now=1.0)
    catalog.transition_run("r", "running", now=2.0)
    catalog.update_run("r", progress=42.5, progress_msg="epoch 2/5", log_size=4096, now=3.0)
    catalog.update_run("r", sync_status="synced", now=4.0)
    got = catalog.get_run("r")
    assert got is not None
    assert (got["progress"], got["progress_msg"], got["log_size"], got["sync_status"]) == (
        42.5,
        "epoch 2/5",
        4096,
        "synced",
    )
    assert (got["state"], got["updated"]) == ("running", 4.0)
    catalog.update_run("r", progress=101.3)  # a tqdm bar that overshoots
    catalog.update_run("r")  # nothing to set: no write at all
    got = catalog.get_run("r")
    assert got is not None and got["progress"] == 100.0
    assert states_of(catalog, "r") == ["queued", "running"]
    catalog.update_run("ghost", progress=1.0)  # a run that is gone is not recreated
    assert catalog.get_run("ghost") is None


RACE_SCRIPT = """
import os, sys, time
from pathlib import Path
from cvtui.catalog import Catalog
path, go, ids = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
with Catalog(path) as cat:
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    won = [i for i in ids
           if cat.transition_run(i, "dispatching", expect=["queued"], detail=str(os.getpid()))]
print(" ".join(won), flush=True)
"""


def test_processes_racing_to_dispatch_each_run_have_exactly_one_winner(
    catalog: Catalog, tmp_path: Path
) -> None:
    ids = [new_run_id() for _ in range(40)]
    catalog.insert_runs([run(i) for i in ids])
    go = tmp_path / "go"
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACE_SCRIPT, str(catalog.path), str(go), *ids],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for racer in racers:
        assert racer.stdout is not None and racer.stdout.readline() == "ready\n"
    go.touch()  # every racer has its connection open: start them together
    wins: dict[int, list[str]] = {}
    for racer in racers:
        out, _ = racer.communicate(timeout=60)
        assert racer.returncode == 0
        wins[racer.pid] = out.split()
    won = [i for racer_wins in wins.values() for i in racer_wins]
    assert sorted(won) == sorted(ids)  # each run won once, by one racer
    for pid, racer_wins in wins.items():
        for run_id in racer_wins:
            events = catalog.run_events(run_id)
            assert [(e["state"], e["detail"]) for e in events][1:] == [("dispatching", str(pid))]
    assert len(catalog.list_runs(states=["dispatching"])) == len(ids)


# -- queries ------------------------------------------------------------------------------


def test_queued_runs_order_by_priority_then_submission(catalog: Catalog) -> None:
    catalog.insert_runs(
        [
            run("n1", priority="normal", submitted=1.0),
            run("l1", priority="low", submitted=0.5),
            run("u2", priority="urgent", submitted=4.0),
            run("n2", priority="normal", submitted=2.0),
            run("h1", priority="high", submitted=3.0),
            run("u1", priority="urgent", submitted=3.5),
            run("n0b", priority="normal", submitted=0.0),
            run("n0a", priority="normal", submitted=0.0),  # same time: by id
            run("gone", priority="urgent", submitted=0.0),
        ]
    )
    catalog.transition_run("gone", "cancelled")
    assert [r["id"] for r in catalog.queued_runs()] == [
        "u1",
        "u2",
        "h1",
        "n0a",
        "n0b",
        "n1",
        "n2",
        "l1",
    ]


def test_set_run_priority_only_while_queued(catalog: Catalog) -> None:
    catalog.insert_runs(
        [run("a", submitted=1.0), run("b", submitted=2.0), run("c", priority="low")]
    )
    assert catalog.set_run_priority("b", "urgent")
    assert [r["id"] for r in catalog.queued_runs()] == ["b", "a", "c"]
    got = catalog.get_run("b")
    assert got is not None and (got["priority"], got["priority_rank"]) == ("urgent", 0)
    catalog.transition_run("c", "dispatching", expect=["queued"])
    assert not catalog.set_run_priority("c", "urgent")
    got = catalog.get_run("c")
    assert got is not None and got["priority"] == "low"
    assert not catalog.set_run_priority("ghost", "high")
    with pytest.raises(ValueError, match="unknown priority 'now'"):
        catalog.set_run_priority("a", "now")
    assert states_of(catalog, "b") == ["queued"]  # not a state change


def test_find_runs_by_id_prefix_name_and_ambiguous_prefix(catalog: Catalog) -> None:
    catalog.insert_runs(
        [
            run("01habc1", name="sweep", submitted=1.0),
            run("01habc2", name="sweep", submitted=2.0),
            run("01hxyz0", name="baseline", submitted=3.0),
            run("01habc", name="01habc1", submitted=4.0),  # an id that prefixes others
        ]
    )

    def found(ref: str) -> list[str]:
        return [r["id"] for r in catalog.find_runs(ref)]

    assert found("01habc") == ["01habc"]  # an exact id beats being a prefix
    assert found("01habc1") == ["01habc1"]  # an exact id beats a run with that name
    assert found("01hx") == ["01hxyz0"]
    assert found("01HXY") == ["01hxyz0"]  # run ids are case-insensitive
    assert found("sweep") == ["01habc2", "01habc1"]  # a name may be several runs
    assert found("01ha") == ["01habc", "01habc2", "01habc1"]  # ambiguous: all, newest first
    assert found("baseline") == ["01hxyz0"]
    for nothing in ("", "02", "%", "01h_", "Sweep"):
        assert found(nothing) == [], nothing
    [baseline] = catalog.find_runs("01hxyz")
    assert baseline["params"] == {"lr": 0.1, "depth": 18}  # decoded, like get_run


def test_list_runs_filters_orders_and_limits(catalog: Catalog) -> None:
    catalog.insert_runs(
        [
            run("a", submitted=1.0),
            run("b", submitted=2.0),
            run("c", submitted=3.0, code_hash="x"),
            run("d", submitted=4.0),
        ]
    )
    catalog.db.execute("UPDATE runs SET project = 'other' WHERE id = 'd'")
    catalog.transition_run("a", "dispatching", host="gpu-01")
    catalog.transition_run("b", "dispatching", host="gpu-02")
    catalog.transition_run("b", "failed", exit_code=1)

    def ids(**kwargs: Any) -> list[str]:
        return [r["id"] for r in catalog.list_runs(**kwargs)]

    assert ids() == ["d", "c", "b", "a"]
    assert ids(newest_first=False) == ["a", "b", "c", "d"]
    assert ids(limit=2) == ["d", "c"]
    assert ids(states=ACTIVE_STATES) == ["d", "c", "a"]
    assert ids(states=["failed", "queued"], newest_first=False) == ["b", "c", "d"]
    assert ids(states=[]) == []
    assert ids(host="gpu-02") == ["b"]
    assert ids(project="demo", states=["queued"]) == ["c"]
    assert ids(project="other") == ["d"]
    with pytest.raises(ValueError, match="unknown run state"):
        catalog.list_runs(states=["pending"])


def test_a_second_connection_sees_runs_and_transitions(catalog_path: Path) -> None:
    with Catalog(catalog_path) as engine, Catalog(catalog_path) as tui:
        engine.insert_runs([run("r")])
        assert tui.transition_run("r", "cancelled", expect=["queued"], reason="by alice")
        # The engine's own dispatch now loses to the TUI's cancel.
        assert not engine.transition_run("r", "dispatching", expect=["queued"])
        got = engine.get_run("r")
        assert got is not None and (got["state"], got["reason"]) == ("cancelled", "by alice")


# -- commands -----------------------------------------------------------------------------


def test_commands_queue_round_trip(catalog: Catalog) -> None:
    first = catalog.submit_command("cancel", {"run_ids": ["r1", "r2"]}, now=1.0)
    second = catalog.submit_command("reload_inventory", {}, now=2.0)
    third = catalog.submit_command("retry", {"run_id": "r3"}, now=3.0)
    pending = catalog.pending_commands()
    assert [(c["id"], c["kind"], c["args"]) for c in pending] == [
        (first, "cancel", {"run_ids": ["r1", "r2"]}),
        (second, "reload_inventory", {}),
        (third, "retry", {"run_id": "r3"}),
    ]
    assert {c["state"] for c in pending} == {"pending"}
    catalog.finish_command(first, ok=True, result={"cancelled": 2}, now=5.0)
    catalog.finish_command(third, ok=False, result="run r3 is still running", now=6.0)
    catalog.finish_command(third, ok=True, result="late", now=7.0)  # first outcome stays
    assert [c["id"] for c in catalog.pending_commands()] == [second]
    assert catalog.get_command(first) == {
        "id": first,
        "created": 1.0,
        "kind": "cancel",
        "args": {"run_ids": ["r1", "r2"]},
        "state": "done",
        "result": {"cancelled": 2},
        "finished": 5.0,
    }
    failed = catalog.get_command(third)
    assert failed is not None
    assert (failed["state"], failed["result"], failed["finished"]) == (
        "failed",
        "run r3 is still running",
        6.0,
    )
    assert catalog.get_command(9_999) is None
    with pytest.raises(ValueError, match="needs a kind"):
        catalog.submit_command("", {})


# -- run ids ------------------------------------------------------------------------------


def test_run_ids_are_26_lowercase_crockford_chars_holding_the_time() -> None:
    run_id = new_run_id(now=1_700_000_000.123)
    assert len(run_id) == RUN_ID_LENGTH == 26
    assert set(run_id) <= set(CROCKFORD_BASE32)
    assert not set(run_id) & set("ilou")  # Crockford leaves out look-alike letters
    assert decode_ms(run_id) == 1_700_000_000_123
    assert run_id[0] in "01234567"  # 130 bits of characters, 128 used: the top two are 0
    assert abs(decode_ms(new_run_id()) / 1000 - decode_ms(new_run_id()) / 1000) < 5
    for bad in (-1.0, 2.0**48):
        with pytest.raises(ValueError, match="outside what a run id can hold"):
            new_run_id(now=bad)


def test_run_ids_sort_by_creation_time() -> None:
    start = 1_700_000_000.0
    ids = [new_run_id(now=start + n * 0.002) for n in range(500)]
    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)


def test_run_ids_made_in_one_millisecond_differ_in_80_random_bits() -> None:
    ids = [new_run_id(now=1_700_000_000.0) for _ in range(100_000)]
    assert len(set(ids)) == len(ids)
    randoms = [decode_random(i) for i in ids]
    ever_set = ever_clear = 0
    for value in randoms:
        ever_set |= value
        ever_clear |= ~value
    # Each of the 80 bits is 1 in some id and 0 in another: none is fixed.
    mask = (1 << 80) - 1
    assert ever_set & mask == mask
    assert ever_clear & mask == mask


def decode_random(run_id: str) -> int:
    value = 0
    for char in run_id[10:]:
        value = value * 32 + CROCKFORD_BASE32.index(char)
    return value


# -- migration ----------------------------------------------------------------------------


def test_migration_2_on_a_version_1_catalog_keeps_its_data(catalog_path: Path) -> None:
    # A catalog as the previous cvtui left it: migrated to 1, with a host and a command.
    db = Database(sqlite3.connect(catalog_path, isolation_level=None))
    assert migrate(db, MIGRATIONS[:1]) == [1]
    db.table("hosts").insert(
        {"name": "gpu-01", "address": "10.0.0.11", "port": 22, "state": "healthy", "gpu_count": 8}
    )
    db.table("commands").insert({"created": 1.0, "kind": "reload_inventory", "args": "{}"})
    db.close()

    with Catalog(catalog_path) as cat:
        assert cat.schema_version() == len(MIGRATIONS)  # 2 and every later one
        host = cat.db.table("hosts").get("gpu-01")
        assert (host["address"], host["state"], host["gpu_count"]) == ("10.0.0.11", "healthy", 8)
        [old] = cat.pending_commands()
        assert (old["kind"], old["args"], old["finished"]) == ("reload_inventory", {}, None)
        cat.insert_runs([run("r")])
        assert [r["id"] for r in cat.queued_runs()] == ["r"]
        indexes = {i.name for i in cat.db.table("runs").indexes}
        assert {"runs_queue", "runs_host_state", "runs_project", "runs_submitted"} <= indexes
        assert [tuple(i.columns) for i in cat.db.table("run_events").indexes] == [("run_id", "id")]


def test_the_queue_query_uses_its_index(catalog: Catalog) -> None:
    plan = catalog.db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM runs WHERE state = 'queued' "
        "ORDER BY priority_rank, submitted, id"
    ).fetchall()
    assert any("runs_queue" in str(row) for row in plan), plan
