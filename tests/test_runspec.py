"""Run config parsing: grid expansion, --set, command templating and quoting, located errors."""

from __future__ import annotations

import itertools
import json
import math
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cvtui import grid
from cvtui.errors import ConfigError, InventoryError
from cvtui.run_config import load_run_config, parse_override, parse_run_config
from cvtui.runspec import (
    DEFAULT_OUTPUTS,
    Resources,
    RunSpec,
    with_overrides,
)
from cvtui.states import PRIORITIES

GiB = 2**30

EXAMPLE = """\
name: resnet-sweep
project: cifar
command: python train.py --lr {lr} --bs {batch.size} --epochs {epochs} --out {run_dir}
code: .            # relative to this file
exclude: ["data/*", "*.ipynb"]
params:
  lr: [0.1, 0.01]          # grid axis
  batch: {size: [32, 64, 128]}   # nested grid axis -> placeholder {batch.size}
  epochs: 10               # scalar: same for all
resources: {gpus: 1, min_free_mem: 10GiB, tags: [a100]}
priority: normal
env: {WANDB_MODE: offline}
outputs: ["*.csv", "*.log", "checkpoints/*.pt"]
retries: 1
"""

TEMPLATE = "python main.py --config {config_file}"


def parse(text: str, tmp_path: Path, **kwargs: Any) -> list[RunSpec]:
    return parse_run_config(text, "sweep.yaml", base_dir=str(tmp_path), **kwargs)


def test_example_expands_to_six_runs(tmp_path: Path) -> None:
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(EXAMPLE)
    specs = load_run_config(config_path)

    grid = [(lr, bs) for lr in (0.1, 0.01) for bs in (32, 64, 128)]
    assert [spec.index for spec in specs] == list(range(6))
    assert [spec.name for spec in specs] == [
        f"resnet-sweep[lr={lr},batch.size={bs}]" for lr, bs in grid
    ]
    assert [dict(spec.params) for spec in specs] == [
        {"lr": lr, "batch.size": bs, "epochs": 10} for lr, bs in grid
    ]
    assert [spec.command for spec in specs] == [
        f"python train.py --lr {lr} --bs {bs} --epochs 10 --out {{run_dir}}" for lr, bs in grid
    ]
    for spec, (lr, bs) in zip(specs, grid, strict=True):
        assert spec.config["params"] == {"lr": lr, "batch": {"size": bs}, "epochs": 10}
        # The rest of the resolved config is the file as written.
        assert spec.config["name"] == "resnet-sweep"
        assert spec.config["resources"] == {"gpus": 1, "min_free_mem": "10GiB", "tags": ["a100"]}
        assert spec.project == "cifar"
        assert spec.code_dir == str(tmp_path.resolve())
        assert spec.exclude == ("data/*", "*.ipynb")
        assert spec.resources == Resources(gpus=1, min_free_mem=10 * GiB, tags=("a100",))
        assert spec.priority == "normal"
        assert spec.env == {"WANDB_MODE": "offline"}
        assert spec.outputs == ("*.csv", "*.log", "checkpoints/*.pt")
        assert spec.retries == 1
        assert spec.source == str(config_path)


def test_defaults_for_a_minimal_config(tmp_path: Path) -> None:
    (spec,) = parse("command: [python, train.py]\n", tmp_path)
    assert spec.name == "sweep"  # the file's stem
    assert spec.project == "sweep"
    assert spec.command == ("python", "train.py")
    assert spec.params == {}
    assert spec.resources == Resources()
    assert spec.resources.gpus == 1  # a run trains on a GPU unless it says gpus: 0
    assert spec.priority == "normal"
    assert spec.outputs == DEFAULT_OUTPUTS
    assert spec.exclude == ()
    assert spec.retries == 0
    assert spec.code_dir == str(tmp_path.resolve())
    assert spec.config == {"command": ["python", "train.py"]}
    assert parse_run_config("command: x\n", base_dir=str(tmp_path))[0].name == "run"


def test_two_by_three_grid_in_document_order_last_axis_fastest(tmp_path: Path) -> None:
    specs = parse("command: [run, '{a}', '{b}']\nparams: {a: [1, 2], b: [x, y, z]}\n", tmp_path)
    assert [spec.command for spec in specs] == [
        ("run", "1", "x"),
        ("run", "1", "y"),
        ("run", "1", "z"),
        ("run", "2", "x"),
        ("run", "2", "y"),
        ("run", "2", "z"),
    ]
    assert specs[4].name == "sweep[a=2,b=y]"


def test_nested_keys_flatten_to_dotted_placeholders(tmp_path: Path) -> None:
    text = """\
command: train --depth {model.enc.depth} --width {model.dec.width} --opt {opt.name}:{opt.lr}
params:
  model:
    enc: {depth: [18, 50], act: relu}
    dec: {width: 8}
  opt: [{name: sgd, lr: 0.1}, {name: adam, lr: 0.001}]   # values that vary together
"""
    specs = parse(text, tmp_path)
    assert len(specs) == 4
    assert specs[1].params == {
        "model.enc.depth": 18,
        "model.enc.act": "relu",
        "model.dec.width": 8,
        "opt.name": "adam",
        "opt.lr": 0.001,
    }
    assert specs[1].command == "train --depth 18 --width 8 --opt adam:0.001"
    assert specs[1].name == "sweep[model.enc.depth=18,opt.name=adam,opt.lr=0.001]"
    assert specs[1].config["params"]["model"] == {
        "enc": {"depth": 18, "act": "relu"},
        "dec": {"width": 8},
    }


def test_set_overrides_apply_before_expansion(tmp_path: Path) -> None:
    text = "command: [t, '{lr}', '{bs}']\nparams: {lr: [0.1, 0.01], bs: 32}\n"
    assert len(parse(text, tmp_path)) == 2

    # A scalar replaces an axis; a list turns a scalar into an axis.
    specs = parse(text, tmp_path, overrides=["lr=0.5", "bs=[16, 32, 64]"])
    assert [spec.command for spec in specs] == [
        ("t", "0.5", "16"),
        ("t", "0.5", "32"),
        ("t", "0.5", "64"),
    ]
    assert specs[0].config["params"] == {"lr": 0.5, "bs": 16}

    # A key the file does not have is added, nested mappings included.
    specs = parse(text, tmp_path, overrides=["opt.momentum=[0.9, 0.99]", "opt.name=sgd"])
    assert len(specs) == 4
    assert specs[0].params == {"lr": 0.1, "bs": 32, "opt.momentum": 0.9, "opt.name": "sgd"}

    # Overrides create params when the file has none.
    specs = parse("command: echo {x}\n", tmp_path, overrides=["x=[a, b]"])
    assert [spec.command for spec in specs] == ["echo a", "echo b"]
    assert specs[0].config == {"command": "echo {x}", "params": {"x": "a"}}


def test_parse_override_reads_yaml_values() -> None:
    assert parse_override("a.b=3") == (("a", "b"), 3)
    assert parse_override("lr=[1,2]") == (("lr",), [1, 2])
    assert parse_override("name=a b") == (("name",), "a b")
    assert parse_override("x='3'") == (("x",), "3")
    assert parse_override("opt={lr: 0.1}") == (("opt",), {"lr": 0.1})
    assert parse_override("flag=") == (("flag",), None)
    assert parse_override("expr=a=b") == (("expr",), "a=b")


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("lr", "--set: expected KEY=VALUE such as lr=0.1"),
        ("=3", "--set: expected KEY=VALUE"),
        ("a..b=3", "--set: expected KEY=VALUE"),
        ("lr=[1,", "--set: 'lr=[1,': the value is not YAML"),
        ("x=!!binary aGk=", "--set: 'x=!!binary aGk=': x: unsupported value"),
    ],
)
def test_parse_override_errors(text: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_override(text)
    assert str(caught.value).startswith(phrase)
    assert caught.value.path == "--set"


def test_set_errors_name_the_option(tmp_path: Path) -> None:
    text = "command: echo {lr}\nparams: {lr: 1}\n"
    with pytest.raises(ConfigError, match=r"^--set: 'lr=\[\]': params.lr: an empty list"):
        parse(text, tmp_path, overrides=["lr=[]"])
    with pytest.raises(ConfigError, match=r"^--set: 'lr.x=2': lr is 1, not a mapping"):
        parse(text, tmp_path, overrides=["lr.x=2"])
    with pytest.raises(ConfigError, match=r"^--set: expected KEY=VALUE"):
        parse(text, tmp_path, overrides=["lr"])


def _printed_args(command: str) -> list[str]:
    """The arguments a real sh passes, one per line, to printf."""
    result = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, check=True, timeout=10
    )
    return result.stdout.split("\0")[:-1]


AWKWARD = ["a b", """it's "quoted" $HOME `id` ; | & {x} \\ *""", "", "--flag=1 2"]


def test_string_command_shell_quotes_values_with_spaces_and_quotes(tmp_path: Path) -> None:
    params = json.dumps({"a": AWKWARD[0], "b": AWKWARD[1], "c": AWKWARD[2], "d": AWKWARD[3]})
    text = f"command: printf '%s\\0' {{a}} {{b}} {{c}} {{d}} {{run_dir}}\nparams: {params}\n"
    (spec,) = parse(text, tmp_path)
    assert isinstance(spec.command, str)
    rendered = spec.render_command(run_id="r1", run_dir="/runs/my run's dir", gpus=[0])
    assert isinstance(rendered, str)
    assert _printed_args(rendered) == [*AWKWARD, "/runs/my run's dir"]


def test_list_command_passes_values_as_whole_arguments(tmp_path: Path) -> None:
    params = json.dumps({"a": AWKWARD[0], "b": AWKWARD[1]})
    argv = [sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))"]
    argv += ["{a}", "--b={b}", "{run_dir}/x"]
    text = f"command: {json.dumps(argv)}\nparams: {params}\n"
    (spec,) = parse(text, tmp_path)
    rendered = spec.render_command(run_id="r1", run_dir="/r d", gpus=[])
    assert isinstance(rendered, tuple)
    result = subprocess.run(rendered, capture_output=True, text=True, check=True, timeout=10)
    assert json.loads(result.stdout) == [AWKWARD[0], f"--b={AWKWARD[1]}", "/r d/x"]


def test_render_command_fills_builtins_and_literal_braces(tmp_path: Path) -> None:
    text = """\
command: ["{run_id}", "{run_dir}", "{config_file}", "gpus={gpus}", "{{lr}}={lr}", "{{}}"]
params: {lr: "{odd}"}
"""
    (spec,) = parse(text, tmp_path)
    # Built-ins stay placeholders until the engine knows them; a value's braces stay literal.
    assert spec.command == (
        "{run_id}",
        "{run_dir}",
        "{config_file}",
        "gpus={gpus}",
        "{{lr}}={{odd}}",
        "{{}}",
    )
    rendered = spec.render_command(run_id="20240101-ab", run_dir="/w/runs/x/work", gpus=[0, 2])
    assert rendered == (
        "20240101-ab",
        "/w/runs/x/work",
        "/w/runs/x/config.yaml",
        "gpus=0,2",
        "{lr}={odd}",
        "{}",
    )
    (shell,) = parse('command: "CUDA={gpus} echo {{a}} {run_id}"\n', tmp_path)
    assert shell.render_command(run_id="r 1", run_dir="/d", gpus=[]) == "CUDA='' echo {a} 'r 1'"


# Characters a YAML file can hold, plus the ones a shell cares about.
_SHELL_TEXT = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Cn")) | st.sampled_from("\n\t'\"\\$`{}; *")
)


@given(value=_SHELL_TEXT)
def test_any_value_is_one_shell_word(value: str) -> None:
    override = f"v={json.dumps(value, ensure_ascii=False)}"
    spec = parse_run_config("command: printf {v}\nparams: {v: x}\n", overrides=[override])[0]
    rendered = spec.render_command(run_id="r", run_dir="/d", gpus=[])
    assert isinstance(rendered, str)
    assert shlex.split(rendered) == ["printf", value]


def test_cvlab_kit_style_config_with_a_command_template(tmp_path: Path) -> None:
    text = """\
name: cvlab                       # the experiment's own key: passed through untouched
model: {name: resnet, depth: [18, 50]}
optimizer: {name: sgd, lr: [0.1, 0.01]}
milestones: [[30, 60]]            # a list of lists: an axis whose one value is a list
transforms: [flip, crop]          # kept whole by keep_lists
cvtui:
  name: sweep
  keep_lists: [transforms]
  resources: {gpus: 2}
"""
    specs = parse(text, tmp_path, command_template=TEMPLATE)
    assert len(specs) == 4
    assert [spec.command for spec in specs] == [TEMPLATE] * 4
    assert specs[2].name == "sweep[model.depth=50,optimizer.lr=0.1,milestones=[30,60]]"
    assert specs[2].config == {
        "name": "cvlab",
        "model": {"name": "resnet", "depth": 50},
        "optimizer": {"name": "sgd", "lr": 0.1},
        "milestones": [30, 60],
        "transforms": ["flip", "crop"],
    }
    assert specs[2].params["model.depth"] == 50
    assert specs[2].resources.gpus == 2
    assert specs[2].render_command(run_id="r", run_dir="/runs/r/work", gpus=[0, 1]) == (
        "python main.py --config /runs/r/config.yaml"
    )
    # --set reaches the experiment keys.
    specs = parse(text, tmp_path, command_template=TEMPLATE, overrides=["model.depth=34"])
    assert [spec.config["model"]["depth"] for spec in specs] == [34, 34]


def test_cvlab_kit_style_config_with_its_own_command(tmp_path: Path) -> None:
    text = "command: [python, main.py, -c, '{config_file}', --seed, '{seed}']\nseed: [1, 2]\n"
    specs = parse(text, tmp_path, command_template="ignored {config_file}")
    assert [spec.command for spec in specs] == [
        ("python", "main.py", "-c", "{config_file}", "--seed", str(seed)) for seed in (1, 2)
    ]
    assert [spec.config for spec in specs] == [{"seed": 1}, {"seed": 2}]


def test_template_is_the_command_of_a_config_without_one(tmp_path: Path) -> None:
    # Without `command:` the whole file is the experiment: `params` is one of its keys.
    template = "t --config {config_file} --lr {params.lr}"
    specs = parse("params: {lr: [1, 2]}\n", tmp_path, command_template=template)
    assert [spec.command for spec in specs] == [
        "t --config {config_file} --lr 1",
        "t --config {config_file} --lr 2",
    ]
    with pytest.raises(ConfigError, match=r"^sweep.yaml: command template 't \{x\}'"):
        parse("params: {lr: 1}\n", tmp_path, command_template="t {x}")


BAD_CONFIGS = [
    pytest.param(
        "command: echo hi\nparms: {lr: [1]}\n",
        "2:1",
        "unknown key 'parms' in the top level (did you mean 'params'?)",
        id="unknown-top-key",
    ),
    pytest.param(
        "command: echo hi\nresources:\n  gpu: 1\n",
        "3:3",
        "unknown key 'gpu' in resources (did you mean 'gpus'?); allowed: gpus, min_free_mem",
        id="unknown-resource-key",
    ),
    pytest.param(
        "command: echo hi\nresources: {min_free_mem: 10 gigs}\n",
        "2:27",
        "resources.min_free_mem: expected a size such as 512, 10GB or 10GiB",
        id="bad-size",
    ),
    pytest.param(
        "command: echo hi\nresources: {gpus: -1}\n",
        "2:19",
        "resources.gpus: expected an integer >= 0 (0: CPU only), got -1",
        id="negative-gpus",
    ),
    pytest.param(
        "command: echo hi\nresources: {gpus: two}\n",
        "2:19",
        "resources.gpus: expected an integer >= 0 (0: CPU only), got 'two'",
        id="gpus-not-int",
    ),
    pytest.param(
        "command: echo hi\nresources: {host: a, hosts: [b]}\n",
        "2:22",
        "give 'host' or 'hosts', not both",
        id="host-and-hosts",
    ),
    pytest.param(
        "command: echo hi\npriority: asap\n",
        "2:11",
        "priority: expected 'urgent' or 'high' or 'normal' or 'low', got 'asap'",
        id="bad-priority",
    ),
    pytest.param(
        "command: python t.py --lr {lrr}\nparams: {lr: [1, 2]}\n",
        "1:10",
        "command: unknown placeholder {lrr} (did you mean {lr}?); params: lr; built-ins: run_id",
        id="unknown-placeholder",
    ),
    pytest.param(
        "command:\n  - python\n  - --out={outdir}\n",
        "3:5",
        "command: unknown placeholder {outdir}",
        id="unknown-placeholder-in-list",
    ),
    pytest.param(
        "command: awk '{print $1}' f\n",
        "1:10",
        "command: '{print $1}' is not a placeholder; write {{ and }} for literal braces",
        id="brace-not-a-placeholder",
    ),
    pytest.param(
        "command: echo }\n",
        "1:10",
        "command: unmatched '}' at character 6",
        id="unmatched-brace",
    ),
    pytest.param(
        "command: echo {lr}\nparams:\n  lr: []\n",
        "3:7",
        "params.lr: an empty list makes an empty grid (no runs)",
        id="empty-grid",
    ),
    pytest.param(
        "command: echo hi\ncode: nowhere\n",
        "2:7",
        "code: no such directory: ",
        id="missing-code-dir",
    ),
    pytest.param(
        "command: echo hi\nretries: -2\n",
        "2:10",
        "retries: expected an integer >= 0, got -2",
        id="negative-retries",
    ),
    pytest.param(
        "command: echo hi\nenv: {A: [1]}\n",
        "2:10",
        "env.A: expected a string, number or boolean, got a list",
        id="env-not-scalar",
    ),
    pytest.param(
        "command: echo hi\nenv: {A-B: 1}\n",
        "2:7",
        "env: 'A-B' is not a variable name",
        id="env-bad-name",
    ),
    pytest.param(
        'command: echo hi\noutputs: "*.csv"\n',
        "2:10",
        "outputs: expected a list like",
        id="outputs-not-list",
    ),
    pytest.param(
        'command: echo hi\noutputs: ["*.csv", 3]\n',
        "2:20",
        "outputs: expected a non-empty string, got 3",
        id="outputs-item-not-string",
    ),
    pytest.param(
        "name: x\nparams: {lr: 1}\n",
        "1:1",
        "missing 'command'; an experiment config (no 'command:' at the top) runs with a command",
        id="no-command-no-template",
    ),
    pytest.param(
        "command: python t.py\nmodel: {depth: [18, 50]}\n",
        "2:1",
        "unknown key 'model' in the top level; allowed: name, project, command",
        id="experiment-keys-beside-a-command-without-config-file",
    ),
    pytest.param(
        "model: {depth: 1}\ncvtui: {nmae: x}\n",
        "2:9",
        "unknown key 'nmae' in cvtui (did you mean 'name'?)",
        id="cvtui-block-unknown-key",
    ),
    pytest.param(
        "model: {depth: 1}\ncvtui:\n  command: x --c {config_file}\n  resources: {gpus: -1}\n",
        "4:21",
        "cvtui.resources.gpus: expected an integer >= 0 (0: CPU only), got -1",
        id="cvtui-block-negative-gpus",
    ),
    pytest.param(
        "command: x\ncvtui: {name: y}\n",
        "2:1",
        "cvtui: a config with a top-level 'command' takes its settings at the top level",
        id="cvtui-block-beside-a-command",
    ),
    pytest.param(
        "command: echo hi\nparams: {lr: [1, 2}\n",
        "2:19",
        "invalid YAML: expected ',' or ']', but got '}'",
        id="yaml-syntax",
    ),
    pytest.param(
        "command: echo hi\ncommand: ls\n",
        "2:1",
        "duplicate key 'command' (first on line 1)",
        id="duplicate-key",
    ),
    pytest.param(
        "command: echo hi\nparams: {a.b: [1]}\n",
        "2:10",
        "params: key 'a.b' is empty or has a '.'",
        id="dotted-param-key",
    ),
    pytest.param(
        "command: echo hi\nparams: [1, 2]\n",
        "2:9",
        "params: expected a mapping of names to values, got a list",
        id="params-not-mapping",
    ),
    pytest.param(
        "- command\n",
        "1:1",
        "expected a mapping (a 'command' and params, or an experiment), got a list",
        id="top-not-mapping",
    ),
    pytest.param("\n", "1:1", "the run config is empty", id="empty-file"),
    pytest.param(
        "command: [echo, [a]]\n",
        "1:17",
        "command: list items must be strings or numbers, got a list",
        id="command-nested-list",
    ),
]


@pytest.mark.parametrize(("text", "where", "phrase"), BAD_CONFIGS)
def test_bad_configs_are_located(tmp_path: Path, text: str, where: str, phrase: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"sweep.yaml:{where}: ")
    assert phrase in message
    assert "\n" not in message
    assert caught.value.exit_code == 2


def test_experiment_configs_need_a_command_that_takes_the_config_file(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^sweep.yaml: command template 'python main.py': does not take"
    ):
        parse("model: {depth: 1}\n", tmp_path, command_template="python main.py")
    with pytest.raises(ConfigError, match=r"^sweep.yaml:2:18: cvtui.command: does not take"):
        parse("model: {depth: 1}\ncvtui: {command: python main.py}\n", tmp_path)
    # Beside a top-level command, params and experiment keys do not mix.
    with pytest.raises(ConfigError, match=r"^sweep.yaml:3:1: params: not used with experiment"):
        parse(
            "command: m {config_file}\nmodel: {depth: 1}\nparams: {lr: 1}\n",
            tmp_path,
        )
    # Without one, `params` is just one more key of the experiment.
    (spec,) = parse("model: {depth: 1}\nparams: {lr: 1}\n", tmp_path, command_template=TEMPLATE)
    assert spec.config == {"model": {"depth": 1}, "params": {"lr": 1}}


def test_config_error_is_an_inventory_style_error() -> None:
    error = ConfigError("run.yaml", 3, 5, "bad")
    assert isinstance(error, InventoryError)
    assert (str(error), error.line, error.column, error.exit_code) == ("run.yaml:3:5: bad", 3, 5, 2)


def test_load_run_config_reads_files_and_reports_unreadable_ones(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "runs").mkdir()
    config = project / "runs" / "sweep.yaml"
    config.write_bytes("\ufeffcommand: echo {x}\ncode: ../src\nparams: {x: é}\n".encode())
    (spec,) = load_run_config(config, overrides=["x=ü"])
    assert spec.code_dir == str((project / "src").resolve())  # relative to the file
    assert isinstance(spec.command, str)
    assert shlex.split(spec.command) == ["echo", "ü"]

    with pytest.raises(ConfigError, match=r": no such file$"):
        load_run_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match=r": is a directory, not a run config file$"):
        load_run_config(project)
    (tmp_path / "latin1.yaml").write_bytes(b"command: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text \(byte 12\)$"):
        load_run_config(tmp_path / "latin1.yaml")


def test_json_round_trip(tmp_path: Path) -> None:
    text = EXAMPLE + "keep_lists: [aug]\n"
    specs = parse(text, tmp_path, overrides=["aug=[[1, 2]]", "note=null"])
    specs += parse("command: [a, '{x}']\nparams: {x: [true, 2.5]}\n", tmp_path)
    for spec in specs:
        data = json.loads(json.dumps(spec.to_json()))
        assert RunSpec.from_json(data) == spec
        assert RunSpec.from_json(data).to_json() == data


def test_with_overrides_changes_resources_and_priority(tmp_path: Path) -> None:
    (spec,) = parse("command: x\nresources: {gpus: 1, tags: [a100], host: gpu-01}\n", tmp_path)
    changed = with_overrides(spec, gpus=4, priority="urgent", hosts=["gpu-02", "gpu-03"])
    assert changed.resources == Resources(gpus=4, hosts=("gpu-02", "gpu-03"), tags=("a100",))
    assert changed.priority == "urgent"
    assert PRIORITIES.index(changed.priority) == 0
    assert with_overrides(spec) == spec
    assert with_overrides(spec, hosts=[]).resources.hosts == ()
    with pytest.raises(ConfigError, match=r"^--gpus: expected an integer >= 0, got -1$"):
        with_overrides(spec, gpus=-1)
    with pytest.raises(ConfigError, match=r"^--priority: expected one of urgent, high"):
        with_overrides(spec, priority="asap")
    with pytest.raises(ConfigError, match=r"^--host: expected host names"):
        with_overrides(spec, hosts=[""])


def test_resources_host_tags_and_sizes(tmp_path: Path) -> None:
    text = "command: x\nresources: {host: gpu-01, min_free_mem: 512MB}\npriority: urgent\n"
    (spec,) = parse(text, tmp_path)
    assert spec.resources == Resources(min_free_mem=512 * 10**6, hosts=("gpu-01",))
    assert spec.priority == "urgent"
    (spec,) = parse("command: x\nresources: {hosts: [a, b], min_free_mem: 1024}\n", tmp_path)
    assert spec.resources == Resources(min_free_mem=1024, hosts=("a", "b"))


# --- grid properties ----------------------------------------------------------------------


def expand_grid(params: dict[str, Any], keep_lists: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Every run's values, dotted, made the way run_config makes them from the grid module."""
    paths = grid.axis_paths(params, frozenset(keep_lists), framework=False)
    return [grid.flatten(nested) for nested, _ in grid.points(params, paths)]


_KEYS = st.text(alphabet="abcdefg_", min_size=1, max_size=3)
_SCALARS = st.one_of(
    st.integers(-5, 5), st.text(max_size=3), st.booleans(), st.none(), st.floats(-1, 1)
)
_AXES = st.lists(_SCALARS, min_size=1, max_size=3, unique=True)
_TREES = st.recursive(
    st.dictionaries(_KEYS, st.one_of(_SCALARS, _AXES), max_size=3),
    lambda inner: st.dictionaries(_KEYS, st.one_of(_SCALARS, _AXES, inner), max_size=3),
    max_leaves=6,
)


def _leaves(tree: dict[str, Any], prefix: str = "") -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """(axes, scalars) by dotted key, found independently of the code under test."""
    axes: dict[str, list[Any]] = {}
    scalars: dict[str, Any] = {}
    for key, value in tree.items():
        name = prefix + key
        if isinstance(value, dict) and value:
            inner_axes, inner_scalars = _leaves(value, name + ".")
            axes.update(inner_axes)
            scalars.update(inner_scalars)
        elif isinstance(value, list):
            axes[name] = value
        else:
            scalars[name] = value
    return axes, scalars


@given(_TREES)
def test_grid_size_is_the_product_of_axis_lengths(tree: dict[str, Any]) -> None:
    axes, _ = _leaves(tree)
    assert len(expand_grid(tree)) == math.prod(len(values) for values in axes.values())


@given(_TREES)
def test_grid_has_every_combination_exactly_once(tree: dict[str, Any]) -> None:
    axes, _ = _leaves(tree)
    runs = expand_grid(tree)
    seen = Counter(tuple(json.dumps(run[key]) for key in axes) for run in runs)
    expected = {
        tuple(json.dumps(value) for value in combo) for combo in itertools.product(*axes.values())
    }
    assert set(seen) == expected
    assert all(count == 1 for count in seen.values())


@given(_TREES)
def test_grid_keeps_every_scalar_in_every_run(tree: dict[str, Any]) -> None:
    axes, scalars = _leaves(tree)
    for run in expand_grid(tree):
        assert set(run) == set(axes) | set(scalars)
        for key, value in scalars.items():
            assert run[key] == value


def test_expand_grid_keeps_lists_of_lists_and_named_lists() -> None:
    params = {"a": [[1, 2], [3]], "b": {"c": [1, 2]}, "d": [5, 6], "e": []}
    assert expand_grid(params, keep_lists=["b.c", "e"]) == [
        {"a": [[1, 2], [3]], "b.c": [1, 2], "d": 5, "e": []},
        {"a": [[1, 2], [3]], "b.c": [1, 2], "d": 6, "e": []},
    ]
    assert expand_grid({"x": []}) == []
    assert expand_grid({}) == [{}]


def test_gpus_zero_is_the_explicit_cpu_only_run(tmp_path: Path) -> None:
    (spec,) = parse("command: x\nresources: {gpus: 0}\n", tmp_path)
    assert spec.resources.gpus == 0
    assert with_overrides(spec, gpus=2).resources.gpus == 2


def test_the_code_dir_defaults_to_the_work_tree_holding_the_config(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    subprocess.run(["git", "-C", str(project), "init", "-q"], check=True)
    config = project / "config" / "x.yaml"
    config.write_text("command: python main.py\n")
    (spec,) = load_run_config(config)
    assert spec.code_dir == str(project.resolve())
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.yaml").write_text("command: python main.py\n")
    (spec,) = load_run_config(plain / "x.yaml")
    assert spec.code_dir == str(plain.resolve())  # no work tree: the config's folder


def test_a_configs_run_env_and_links(tmp_path: Path) -> None:
    text = """\
command: "{python} train.py"
run_env: {setup: conda activate cv, path: [/opt/cuda/bin], python: ~/envs/cv/bin/python}
links: {data: /mnt/datasets, weights/imagenet: ~/weights}
"""
    (spec,) = parse(text, tmp_path)
    assert spec.run_env.setup == ("conda activate cv",)
    assert spec.run_env.python == "~/envs/cv/bin/python"
    assert dict(spec.links) == {"data": "/mnt/datasets", "weights/imagenet": "~/weights"}
    assert RunSpec.from_json(spec.to_json()) == spec
    rendered = spec.render_command(
        run_id="r", run_dir="/h/runs/r/work", gpus=[0], python="/home/u/envs/cv/bin/python"
    )
    assert rendered == "/home/u/envs/cv/bin/python train.py"


# A LightningCLI config (the shape of the public configs it reads: callbacks and loggers are
# lists of class_path mappings, a patch size is a list): only the lists it names are axes.
LIGHTNING = """\
seed_everything: 42
trainer:
  max_epochs: 800
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {monitor: val/dice, mode: max, save_top_k: 3}
    - class_path: lightning.pytorch.callbacks.LearningRateMonitor
  logger:
    - class_path: lightning.pytorch.loggers.TensorBoardLogger
      init_args: {save_dir: ./runs, name: tb}
model:
  roi_size: [96, 96, 96]
  learning_rate: [1.0e-3, 3.0e-4]
  mean: !!python/tuple [0.5, 0.5]
cvtui:
  command: python main.py fit --config {config_file}
  axes: [model.learning_rate]
"""


def test_named_axes_make_every_other_list_data_written_as_yaml_lists(tmp_path: Path) -> None:
    specs = parse(LIGHTNING, tmp_path)
    assert [s.name for s in specs] == [
        "sweep[model.learning_rate=0.001]",
        "sweep[model.learning_rate=0.0003]",
    ]
    written = yaml.safe_load(specs[1].config_yaml())
    assert written["model"] == {
        "roi_size": [96, 96, 96],
        "learning_rate": 3.0e-4,
        "mean": [0.5, 0.5],
    }
    assert [c["class_path"].rsplit(".", 1)[1] for c in written["trainer"]["callbacks"]] == [
        "ModelCheckpoint",
        "LearningRateMonitor",
    ]
    assert written["trainer"]["logger"][0]["init_args"] == {"save_dir": "./runs", "name": "tb"}
    assert specs[0].axes == ("model.learning_rate",)
    # axes: [] runs the file once, as it is; --set still reaches its keys.
    once = parse(
        LIGHTNING.replace("[model.learning_rate]", "[]"),
        tmp_path,
        overrides=["model.roi_size=[64,64,64]"],
    )
    assert len(once) == 1 and once[0].name == "sweep"
    assert yaml.safe_load(once[0].config_yaml())["model"]["roi_size"] == [64, 64, 64]
    assert yaml.safe_load(once[0].config_yaml())["model"]["learning_rate"] == [1.0e-3, 3.0e-4]


@pytest.mark.parametrize(
    ("axes", "problem"),
    [
        ("[model.lr]", r"cvtui.axes: 'model.lr' is not a key of the config"),
        ("[seed_everything]", r"cvtui.axes: 'seed_everything' is int 42, not a list of values"),
        ("[model]", r"cvtui.axes: 'model' is dict .*, not a list of values"),
        ("[model.learning_rate]\n  keep_lists: [roi_size]", r"give the lists that are axes"),
    ],
)
def test_named_axes_that_are_not_lists_are_refused_with_their_line(
    tmp_path: Path, axes: str, problem: str
) -> None:
    text = LIGHTNING.replace("[model.learning_rate]", axes)
    with pytest.raises(ConfigError, match=problem) as caught:
        parse(text, tmp_path)
    assert str(caught.value).startswith("sweep.yaml:17:")
