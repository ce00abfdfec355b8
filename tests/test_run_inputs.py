"""A run config's inputs and resume rule: parsed with file:line errors, rendered into the
command at dispatch; infer's command template; the API's --set from a dict."""

from __future__ import annotations

import pytest

from cvtui.api import set_overrides
from cvtui.errors import ConfigError, CvtuiError
from cvtui.infer import infer_command, infer_spec
from cvtui.run_config import parse_run_config
from cvtui.run_inputs import InputRef, Resume, parse_input_ref
from cvtui.runspec import RunSpec
from cvtui.tui.forwards import parse_ports

CONFIG = """\
command: python train.py --init {inputs.ckpt} --lr {lr}
params: {lr: [0.1, 0.01]}
inputs:
  ckpt: model:resnet-best
  vocab: "run:01j9abc:data/vocab.json"
resume: {checkpoint: "checkpoints/*.pt", arg: "--resume {checkpoint} --strict"}
retries: 2
"""


def test_inputs_and_resume_are_parsed_and_survive_the_catalog() -> None:
    specs = parse_run_config(CONFIG, "sweep.yaml")
    assert len(specs) == 2
    spec = specs[0]
    assert spec.inputs == {"ckpt": "model:resnet-best", "vocab": "run:01j9abc:data/vocab.json"}
    assert spec.resume == Resume("checkpoints/*.pt", "--resume {checkpoint} --strict")
    assert RunSpec.from_json(spec.to_json()) == spec
    assert parse_run_config("command: x\nresume: ckpt/*.pt\n")[0].resume == Resume("ckpt/*.pt")
    assert RunSpec.from_json({**spec.to_json(), "inputs": None, "resume": None}).resume is None


def test_inputs_and_the_resume_arg_are_filled_at_dispatch() -> None:
    spec = parse_run_config(CONFIG, "sweep.yaml")[0]
    paths = {"ckpt": "/r/work/inputs/ckpt/best model.pt", "vocab": "/r/work/inputs/vocab/v.json"}
    first = spec.render_command(run_id="r", run_dir="/r/work", gpus=[0], inputs=paths)
    assert first == "python train.py --init '/r/work/inputs/ckpt/best model.pt' --lr 0.1"
    resumed = spec.render_command(
        run_id="r", run_dir="/r/work", gpus=[0], inputs=paths, checkpoint="/r/work/c 1.pt"
    )
    assert resumed == first + " --resume '/r/work/c 1.pt' --strict"
    argv = parse_run_config(
        "command: [python, t.py, '{inputs.w}']\ninputs: {w: model:m}\nresume: '*.pt'\n"
    )[0]
    rendered = argv.render_command(
        run_id="r", run_dir="/w", gpus=[], inputs={"w": "/w/a b"}, checkpoint="/w/c d.pt"
    )
    assert rendered == ("python", "t.py", "/w/a b", "--resume", "/w/c d.pt")


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        (
            "command: x\ninputs: {ckpt: resnet}\n",
            "2:16",
            "'resnet' is not model:NAME or run:RUN:PATH",
        ),
        ("command: x\ninputs: {ckpt: 'run:abc'}\n", "2:16", "is not model:NAME or run:RUN:PATH"),
        ("command: x\ninputs: {'a b': model:m}\n", "2:10", "'a b' is not an input name"),
        ("command: x {inputs.w}\n", "1:10", "{inputs.w} names no input; declare it under inputs"),
        ("command: x\nresume: {arg: --resume}\n", "2:9", "give 'checkpoint'"),
        ("command: x\nresume: {checkpoint: '../x'}\n", "2:22", "must be relative to the work dir"),
        ("command: x\nresume: {checkpoint: c, arg: '{step}'}\n", "2:30", "not {step}"),
        ("command: x\nresume: {checkpoint: c, ark: y}\n", "2:25", "unknown key 'ark'"),
        (
            "command: x {inputs.w}\nparams: {inputs: {w: 1}}\ninputs: {w: model:m}\n",
            "3:9",
            "{inputs.w} would name both a param and an input",
        ),
    ],
)
def test_mistakes_are_reported_where_they_are(text: str, where: str, problem: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_run_config(text, "c.yaml")
    assert str(error.value).startswith(f"c.yaml:{where}: ")
    assert problem in str(error.value)


def test_input_references() -> None:
    assert parse_input_ref("model:resnet best") == InputRef("model", "resnet best")
    assert parse_input_ref("run:sweep[lr=0.1]:ckpt/last.pt") == InputRef(
        "run", "sweep[lr=0.1]", "ckpt/last.pt"
    )
    for bad in ("model:", "run:x", "run::p", "file:/x", ""):
        with pytest.raises(ValueError, match="is not model:NAME or run:RUN:PATH"):
            parse_input_ref(bad)


def test_infer_names_the_model_and_keeps_other_braces_literal() -> None:
    argv = ["python", "p.py", "--weights", "{model}", "--opts", '{"k": 1}']
    assert infer_command(argv) == (
        "python", "p.py", "--weights", "{inputs.model}", "--opts", '{{"k": 1}}'
    )  # fmt: skip
    spec = infer_spec("resnet-best", argv, host="gpu-01", gpus=1, code_dir=".")
    assert spec.inputs == {"model": "model:resnet-best"}
    assert spec.resources.hosts == ("gpu-01",) and spec.resources.gpus == 1
    rendered = spec.render_command(
        run_id="r", run_dir="/w", gpus=[0], inputs={"model": "/w/inputs/model/best.pt"}
    )
    assert rendered == (
        "python", "p.py", "--weights", "/w/inputs/model/best.pt", "--opts", '{"k": 1}'
    )  # fmt: skip
    with pytest.raises(ConfigError):
        infer_command([])


def test_set_overrides_and_forward_ports() -> None:
    assert set_overrides({"lr": [0.1, 0.01], "batch.size": 64, "opt": "sgd"}) == [
        "lr=[0.1, 0.01]",
        "batch.size=64",
        'opt="sgd"',
    ]
    assert parse_ports("6006") == (6006, None)
    assert parse_ports(" 6006 : 16006 ") == (6006, 16006)
    for bad in ("", "x", "70000", "6006:", "1:2:3"):
        with pytest.raises(CvtuiError, match=r"PORT:LOCAL_PORT|ports are"):
            parse_ports(bad)
