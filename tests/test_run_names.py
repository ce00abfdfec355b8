"""Run names in listings: a grid's runs told apart by the values that differ."""

from __future__ import annotations

from cvtui.run_names import display_names, split_run_name


def runs(*names: str) -> list[dict[str, str]]:
    return [{"id": f"r{i}", "name": name} for i, name in enumerate(names)]


def test_only_the_values_that_differ_are_shown_with_short_keys() -> None:
    sweep = runs(
        "cvtui_fake_supervised[model.depth=18,optimizer.lr=0.1,milestones=[30,60]]",
        "cvtui_fake_supervised[model.depth=18,optimizer.lr=0.01,milestones=[30,60]]",
        "cvtui_fake_supervised[model.depth=34,optimizer.lr=0.1,milestones=[30,60]]",
    )
    assert list(display_names(sweep).values()) == [
        "cvtui_fake_supervised[depth=18,lr=0.1]",
        "cvtui_fake_supervised[depth=18,lr=0.01]",
        "cvtui_fake_supervised[depth=34,lr=0.1]",
    ]


def test_keys_keep_as_much_of_their_path_as_tells_them_apart() -> None:
    shown = display_names(runs("s[enc.lr=1,dec.lr=2]", "s[enc.lr=3,dec.lr=4]"))
    assert shown == {"r0": "s[enc.lr=1,dec.lr=2]", "r1": "s[enc.lr=3,dec.lr=4]"}


def test_plain_names_lone_points_and_retries_stay_as_they_are() -> None:
    listed = runs("plain", "lone[lr=0.1,bs=32]", "twice[lr=1]", "twice[lr=1]")
    assert display_names(listed) == {r["id"]: r["name"] for r in listed}


def test_values_with_commas_and_brackets_split_where_keys_start() -> None:
    assert split_run_name('x[a=[1,2],b={"k":1},c=p,q,d=e]') == (
        "x",
        [("a", "[1,2]"), ("b", '{"k":1}'), ("c", "p,q"), ("d", "e")],
    )
    assert split_run_name("not[a grid]") == ("not[a grid]", None)
