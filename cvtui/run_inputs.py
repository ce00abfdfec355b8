"""A run's inputs and its resume rule, as a run config declares them.

```yaml
inputs: {ckpt: model:resnet-best, init: run:01j9...:checkpoints/last.pt}
resume: {checkpoint: "checkpoints/*.pt", arg: "--resume {checkpoint}"}
```

An input names content cvtui already holds: a registered model, or a synced file of a run.
It is pinned to its bytes when the run is submitted (see cvtui/repro/inputs.py), uploaded to
the host once, verified there, and linked into the work dir as `inputs/<name>/<file name>`;
`{inputs.<name>}` is that path in the command. `resume` makes a retry start from the newest
synced checkpoint of the attempts before it (see cvtui/engine/resume.py).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvtui.templates import fill_template, lookup_values, placeholders

if TYPE_CHECKING:
    import yaml

    from cvtui.yaml_nodes import NodeParser

INPUTS_DIR = "inputs"  # the work-dir folder that holds each input as inputs/<name>/<file>
INPUT_PLACEHOLDER = "inputs."  # {inputs.ckpt} in a command
MODEL_PREFIX = "model:"
RUN_PREFIX = "run:"
RESUME_KEYS = ("checkpoint", "arg")
CHECKPOINT_PLACEHOLDER = "checkpoint"
DEFAULT_RESUME_ARG = "--resume {checkpoint}"
RESUME_INPUT = "resume"  # the run_inputs kind (and name) of a retry's checkpoint
INPUT_KINDS = ("model", "run", RESUME_INPUT)
_INPUT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}\Z")
_REF_EXAMPLE = "model:NAME or run:RUN:PATH (a synced file of that run)"


@dataclass(frozen=True)
class InputRef:
    """What an input names: a model of the registry, or a file of a run's mirror."""

    kind: str  # "model" or "run"
    name: str  # the model's name, or the run (an id, a unique id prefix or a name)
    path: str = ""  # for a run: the file, relative to its work dir

    @property
    def text(self) -> str:
        if self.kind == "model":
            return f"{MODEL_PREFIX}{self.name}"
        return f"{RUN_PREFIX}{self.name}:{self.path}"


def parse_input_ref(text: str) -> InputRef:
    """`model:NAME` or `run:RUN:PATH`; ValueError naming the expected shape otherwise."""
    if text.startswith(MODEL_PREFIX) and text[len(MODEL_PREFIX) :].strip():
        return InputRef("model", text[len(MODEL_PREFIX) :].strip())
    if text.startswith(RUN_PREFIX):
        run, sep, path = text[len(RUN_PREFIX) :].partition(":")
        if sep and run.strip() and path.strip():
            return InputRef("run", run.strip(), path.strip())
    raise ValueError(f"{text!r} is not {_REF_EXAMPLE}")


def input_work_path(name: str, file_name: str) -> str:
    """Where an input is linked in the work dir (relative, '/'-separated)."""
    return f"{INPUTS_DIR}/{name}/{file_name}"


@dataclass(frozen=True)
class Resume:
    """How a retry resumes: which files are checkpoints, and what is added to the command."""

    checkpoint: str  # a glob over the work dir, with the outputs' rules ('*.pt', 'ckpt/*.pt')
    arg: str = DEFAULT_RESUME_ARG  # appended to the command; {checkpoint}: the staged file

    def to_json(self) -> dict[str, str]:
        return {"checkpoint": self.checkpoint, "arg": self.arg}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Resume | None:
        if not data:
            return None
        return cls(str(data["checkpoint"]), str(data.get("arg", DEFAULT_RESUME_ARG)))


def resume_words(arg: str, checkpoint: str, *, quoted: bool) -> list[str]:
    """The resume arg with {checkpoint} filled: quoted, one shell-quoted string (for a string
    command, which runs under sh -c), else its words (split before filling, so a path with
    blanks stays one word)."""
    if quoted:
        values = {CHECKPOINT_PLACEHOLDER: shlex.quote(checkpoint)}
        text = fill_template(arg, lookup_values(values, str), final=True)
        return [text] if text.strip() else []
    raw = {CHECKPOINT_PLACEHOLDER: checkpoint}
    return [fill_template(word, lookup_values(raw, str), final=True) for word in shlex.split(arg)]


def parse_inputs(parser: NodeParser[Any], node: yaml.Node, label: str) -> dict[str, str]:
    """`inputs: {ckpt: model:resnet-best}` -> {name: reference text}, file:line errors."""
    if parser.is_null(node):
        return {}
    found = {}
    for name, (key, value) in parser.mapping(node, label, "input name").items():
        if not _INPUT_NAME.match(name):
            raise parser.error(
                key,
                f"{label}: {name!r} is not an input name (letters, digits, _ and -, "
                "up to 64; it becomes {inputs.NAME} and a folder name)",
            )
        text = parser.string(value, f"{label}.{name}")
        try:
            found[name] = parse_input_ref(text.strip()).text
        except ValueError as exc:
            raise parser.error(value, f"{label}.{name}: {exc}") from exc
    return found


def parse_resume(parser: NodeParser[Any], node: yaml.Node, label: str) -> Resume | None:
    """`resume: {checkpoint: GLOB, arg: "--resume {checkpoint}"}` (or `resume: GLOB`)."""
    if parser.is_null(node):
        return None
    if not hasattr(node, "value") or not isinstance(node.value, list):
        return Resume(_glob(parser, node, f"{label}.checkpoint"))
    pairs = parser.mapping(node, label)
    parser.check_keys(pairs, RESUME_KEYS, label)
    if "checkpoint" not in pairs:
        raise parser.error(node, f"{label}: give 'checkpoint', a glob such as checkpoints/*.pt")
    checkpoint = _glob(parser, pairs["checkpoint"][1], f"{label}.checkpoint")
    arg = DEFAULT_RESUME_ARG
    if "arg" in pairs:
        arg_node = pairs["arg"][1]
        arg = "" if parser.is_null(arg_node) else _text(parser, arg_node, f"{label}.arg")
        try:
            names = placeholders(arg)
            shlex.split(arg)
        except ValueError as exc:
            raise parser.error(arg_node, f"{label}.arg: {exc}") from exc
        unknown = [n for n in names if n != CHECKPOINT_PLACEHOLDER]
        if unknown:
            raise parser.error(
                arg_node,
                f"{label}.arg: only {{{CHECKPOINT_PLACEHOLDER}}} is filled here, "
                f"not {{{unknown[0]}}}",
            )
    return Resume(checkpoint, arg)


def _glob(parser: NodeParser[Any], node: yaml.Node, label: str) -> str:
    glob = parser.string(node, label).strip()
    if glob.startswith("/") or ".." in glob.split("/"):
        raise parser.error(node, f"{label}: {glob!r} must be relative to the work dir (no '..')")
    return glob


def _text(parser: NodeParser[Any], node: yaml.Node, label: str) -> str:
    value = parser.value(node) if hasattr(node, "value") and isinstance(node.value, str) else None
    if not isinstance(value, str):
        raise parser.error(node, f"{label}: expected a string, got {parser.describe(node)}")
    return value
