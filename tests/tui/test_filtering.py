"""The `/` filter language: key:value terms and free words."""

from __future__ import annotations

from cvtui.tui.filtering import parse_filter

KEYS = ("state", "tag", "user")


def test_terms_and_words_are_split() -> None:
    wanted = parse_filter("state:run Tag:A100 resnet lr=0.1 other:x", KEYS)
    assert wanted.terms == (("state", ("run",)), ("tag", ("a100",)))
    assert wanted.words == ("resnet", "lr=0.1", "other:x")  # unknown keys are words
    assert bool(wanted) and not parse_filter("   ", KEYS)


def test_matching_any_value_of_a_key_and_every_key_and_word() -> None:
    row = {"state": "running", "tag": ["a100", "nvlink"], "user": None}
    assert parse_filter("state:run", KEYS).matches(row, "resnet")
    assert parse_filter("state:queued state:running", KEYS).matches(row, "resnet")
    assert not parse_filter("state:running tag:h100", KEYS).matches(row, "resnet")
    assert parse_filter("tag:nvl RES", KEYS).matches(row, "resnet[lr=0.1]")
    assert not parse_filter("tag:nvl vit", KEYS).matches(row, "resnet[lr=0.1]")
    assert not parse_filter("user:alice", KEYS).matches(row, "resnet")  # no user: no match
