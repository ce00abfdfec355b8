"""Experiment configs (no `command:`): cvtui runs exactly the grid the framework itself would,
and each run's config.yaml, read again by the framework, is exactly that one run.

FRAMEWORK below is our own reading of the public framework's rules (CVLab-Kit's
`Config.expand`, read from its source): YAML loaded with FullLoader, nested mappings flattened
with dots, a "[...]" string parsed as a data list (never an axis), every other list an axis
(an empty one is one value: itself), a tuple a value; last axis fastest.
"""

from __future__ import annotations

import ast
import copy
import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvtui.errors import ConfigError
from cvtui.run_config import parse_run_config
from cvtui.runspec import RunSpec

TEMPLATE = "python main.py --config {config_file}"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def framework_runs(text: str) -> list[dict[str, Any]]:
    """The flat configs the framework runs for a config file's text."""
    flat = flatten(yaml.load(text, Loader=yaml.FullLoader))
    data = {}
    for key, value in flat.items():
        if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parsed, list):
                data[key] = parsed
    axes = [k for k, v in flat.items() if isinstance(v, list)]
    runs = []
    for combo in itertools.product(*[flat[k] if flat[k] else [flat[k]] for k in axes]):
        run = copy.deepcopy(flat)
        run.update(zip(axes, combo, strict=True))
        run.update(data)
        runs.append(run)
    return runs


def expand(text: str, tmp_path: Path, **options: Any) -> list[RunSpec]:
    return parse_run_config(
        text, "exp.yaml", base_dir=str(tmp_path), command_template=TEMPLATE, **options
    )


def assert_same_as_framework(text: str, tmp_path: Path, **options: Any) -> list[RunSpec]:
    """cvtui's runs are the framework's, in order, and each written config is one run again."""
    specs = expand(text, tmp_path, **options)
    expected = framework_runs(text) if not options else None
    for index, spec in enumerate(specs):
        again = framework_runs(spec.config_text)
        assert len(again) == 1, spec.config_text
        if expected is not None:
            assert again[0] == expected[index], spec.config_text
    if expected is not None:
        assert len(specs) == len(expected)
    return specs


def test_a_tuple_is_a_value_and_is_written_back_as_a_tuple(tmp_path: Path) -> None:
    text = "mean: !!python/tuple [0.5, 0.4, 0.3]\nlr: [0.1, 0.01]\n"
    specs = assert_same_as_framework(text, tmp_path)
    assert len(specs) == 2
    assert "!!python/tuple" in specs[0].config_text
    assert yaml.load(specs[0].config_text, Loader=yaml.FullLoader)["mean"] == (0.5, 0.4, 0.3)
    assert specs[0].config["mean"] == [0.5, 0.4, 0.3]  # as JSON keeps it


def test_lists_at_any_depth_are_axes(tmp_path: Path) -> None:
    text = "model:\n  backbone: {depth: [18, 50]}\n  head: {dropout: [0.1, 0.2, 0.3]}\n"
    specs = assert_same_as_framework(text, tmp_path)
    assert len(specs) == 6
    assert specs[-1].params["model.head.dropout"] == 0.3
    assert specs[-1].name == "exp[model.backbone.depth=50,model.head.dropout=0.3]"


def test_a_list_of_lists_is_an_axis_whose_values_are_lists(tmp_path: Path) -> None:
    text = "milestones: [[30, 60], [50, 80]]\nsize: [[32, 32]]\n"
    specs = assert_same_as_framework(text, tmp_path)
    assert [s.config["milestones"] for s in specs] == [[30, 60], [50, 80]]
    assert specs[0].config["size"] == [32, 32]
    # Written as the framework's data-list strings, so they are values when read again.
    assert 'milestones: "[30, 60]"' in specs[0].config_text


def test_an_empty_list_is_one_value(tmp_path: Path) -> None:
    specs = assert_same_as_framework("augment: []\nlr: [1, 2]\n", tmp_path)
    assert len(specs) == 2 and specs[0].config["augment"] == []


def test_a_list_in_a_string_is_a_value(tmp_path: Path) -> None:
    text = 'layers: "[64, 128]"\nnote: "[not, a literal"\nlr: [1, 2]\n'
    specs = assert_same_as_framework(text, tmp_path)
    assert len(specs) == 2
    assert specs[0].config["layers"] == "[64, 128]"  # stays the string the framework parses
    assert yaml.safe_load(specs[0].config_text)["layers"] == "[64, 128]"


def test_lists_that_are_values_survive_the_round_trip(tmp_path: Path) -> None:
    # A list inside an axis value (a list of mappings) and a kept list.
    text = (
        "opt: [{name: sgd, betas: [0.9, 0.99]}, {name: adam, betas: [0.8, 0.9]}]\n"
        "transforms: [flip, crop]\n"
        "cvtui: {keep_lists: [transforms]}\n"
    )
    specs = expand(text, tmp_path)
    assert len(specs) == 2  # opt only: transforms is kept whole
    assert specs[1].config["opt"] == {"name": "adam", "betas": [0.8, 0.9]}
    for spec in specs:
        (again,) = framework_runs(spec.config_text)
        assert again["opt.betas"] == spec.config["opt"]["betas"]
        assert again["transforms"] == ["flip", "crop"]


def test_the_experiments_own_project_name_and_env_pass_through(tmp_path: Path) -> None:
    text = (
        "project: mstar\nname: fixmatch\nenv: {seed: 1}\nlr: [1, 2]\n"
        "cvtui: {name: sweep, project: lab, env: {WANDB_MODE: offline}}\n"
    )
    specs = assert_same_as_framework(text.replace("cvtui:", "#"), tmp_path)
    assert specs[0].config == {"project": "mstar", "name": "fixmatch", "env": {"seed": 1}, "lr": 1}
    specs = expand(text, tmp_path)
    assert (specs[0].name, specs[0].project, dict(specs[0].env)) == (
        "sweep[lr=1]",
        "lab",
        {"WANDB_MODE": "offline"},
    )
    assert "cvtui" not in specs[0].config and "cvtui" not in specs[0].config_text


def test_set_overrides_an_experiment_key_before_expansion(tmp_path: Path) -> None:
    text = "optimizer: {lr: [0.1, 0.01]}\nseed: [1, 2]\n"
    specs = expand(text, tmp_path, overrides=["optimizer.lr=0.5"])
    assert [s.config["optimizer"]["lr"] for s in specs] == [0.5, 0.5]
    assert len(specs) == 2


def test_a_stock_shaped_config_gives_the_frameworks_runs(tmp_path: Path) -> None:
    # The shape of the framework's public configs: component strings with pipes and parens,
    # tuples, a quoted date, template braces of its own, nested component choices.
    text = """\
run_name: run_{{date}}_{{num_labeled}}
date: "2025-09-01"
agent: fixmatch
epochs: 256
mean: !!python/tuple [0.1414, 0.1414, 0.1414]
std: !!python/tuple [0.1258, 0.1258, 0.1258]
num_labeled: [100, 250]
lambda_fixmatch: [1.0, 0.5]
dataset:
  train: mstar(split="train")
  val: mstar(split="test")
transform:
  weak: "resize | random_flip | to_tensor | normalize"
  strong: "resize | adaptive_rand_augment(magnitude_min=0, magnitude_max=30) | to_tensor"
loss: {supervised: 'cross_entropy(reduction="mean")'}
"""
    specs = assert_same_as_framework(text, tmp_path)
    assert len(specs) == 4
    assert specs[0].config["run_name"] == "run_{{date}}_{{num_labeled}}"


def test_a_grid_over_the_limit_is_refused_before_any_run_is_made(tmp_path: Path) -> None:
    text = "".join(f"p{i}: [{', '.join(str(v) for v in range(10))}]\n" for i in range(6))
    with pytest.raises(ConfigError) as caught:
        expand(text, tmp_path)
    assert "makes 1,000,000 runs" in str(caught.value)
    assert "--max-runs 1000000" in str(caught.value)
    assert len(expand("a: [1, 2, 3]\n", tmp_path, max_runs=3)) == 3
