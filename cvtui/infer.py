"""`cvtui infer`: a registered model and a command, run once on a host as a run of its own.

The run is an ordinary one (queued, placed on the host's GPUs, its output mirrored, its inputs
and provenance recorded), so an inference can be listed, compared and reproduced; the caller
follows it to its end and gets its exit code.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from cvtui.errors import ConfigError
from cvtui.run_config import git_top
from cvtui.run_inputs import INPUT_PLACEHOLDER, MODEL_PREFIX
from cvtui.runspec import DEFAULT_OUTPUTS, Resources, RunSpec

MODEL_INPUT = "model"  # the input's name: {model} (or {inputs.model}) in the command
MODEL_PLACEHOLDER = "{" + MODEL_INPUT + "}"
INFER_PROJECT = "infer"


def infer_command(argv: Sequence[str] | str) -> tuple[str, ...] | str:
    """The command as a run template: {model} names the model's path on the host; any other
    brace is the command's own (literal). A string is a shell command line."""

    target = "{" + INPUT_PLACEHOLDER + MODEL_INPUT + "}"

    def template(text: str) -> str:
        escaped = text.replace("{", "{{").replace("}", "}}")
        for name in (MODEL_INPUT, INPUT_PLACEHOLDER + MODEL_INPUT):
            escaped = escaped.replace("{{" + name + "}}", target)
        return escaped

    if isinstance(argv, str):
        if not argv.strip():
            raise ConfigError("command", None, None, "give the command to run")
        return template(argv)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise ConfigError("command", None, None, "give the command to run, as a list of strings")
    return tuple(template(a) for a in argv)


def default_code_dir() -> str:
    """What an inference ships: the git work tree holding the current directory, else it."""
    here = pathlib.Path.cwd()
    return str((git_top(here) or here).resolve())


def infer_spec(
    model: str,
    argv: Sequence[str] | str,
    *,
    host: str,
    gpus: int = 1,
    code_dir: str | None = None,
    priority: str = "normal",
    env: dict[str, str] | None = None,
) -> RunSpec:
    """The run of one inference: the code dir shipped, the model as input `model`, pinned to
    host."""
    if gpus < 0:
        raise ConfigError("--gpus", None, None, f"expected an integer >= 0, got {gpus}")
    directory = pathlib.Path(code_dir).expanduser().resolve() if code_dir else None
    if directory is not None and not directory.is_dir():
        raise ConfigError("--code", None, None, f"no such directory: {directory}")
    return RunSpec(
        name=f"infer[{model}]",
        project=INFER_PROJECT,
        command=infer_command(argv),
        params={},
        config={},
        code_dir=str(directory) if directory else default_code_dir(),
        exclude=(),
        resources=Resources(gpus=gpus, hosts=(host,)),
        priority=priority,
        env=dict(env or {}),
        outputs=DEFAULT_OUTPUTS,
        retries=0,
        source="<infer>",
        index=0,
        inputs={MODEL_INPUT: f"{MODEL_PREFIX}{model}"},
    )
