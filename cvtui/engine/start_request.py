"""What the engine asks a host to start for a run: paths, command, environment, links."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cvtui.catalog.rebuild import run_record
from cvtui.engine.inputs import input_paths
from cvtui.engine.sync import output_globs
from cvtui.run_env import DEFAULT_PYTHON, RunEnv, expand_home, merge_links, run_interpreter
from cvtui.run_inputs import RESUME_INPUT
from cvtui.runspec import CONFIG_FILE_NAME, RunSpec
from remote_agent import protocol
from remote_agent.protocol import WORK_DIR, Hello, StartRequest

if TYPE_CHECKING:
    from cvtui.catalog.run_inputs import RunInput
    from cvtui.inventory import Host

log = logging.getLogger("cvtui.engine")

# Start refusals that no retry mends (a link target or an input missing there, a request over
# the agent's line): the run fails with the host's reason. Any other refusal requeues it.
REFUSALS = (protocol.E_BAD_LINK, protocol.E_BAD_INPUT, protocol.E_TOO_LONG)


def run_paths(root: str, run_id: str) -> tuple[str, str, str]:
    """(run dir, work dir, config file) of a run under a host's root."""
    run_dir = f"{root.rstrip('/')}/runs/{run_id}"
    return run_dir, f"{run_dir}/{WORK_DIR}", f"{run_dir}/{CONFIG_FILE_NAME}"


def effective_env(host: Host, spec: RunSpec) -> RunEnv:
    """The host's run environment with the config's added."""
    return (host.run_env or RunEnv()).plus(spec.run_env)


def start_request(
    run: Mapping[str, Any],
    spec: RunSpec,
    host: Host,
    hello: Hello,
    gpus: Sequence[int],
    inputs: Sequence[RunInput] = (),
    staged: Sequence[Mapping[str, Any]] = (),
) -> StartRequest:
    """OP_START's request for a run placed on host's GPUs: the command rendered for the work
    dir (its inputs' paths filled, a retry's resume arg added), the run environment and links
    with `~` made the remote home. staged: the inputs as the host stores them."""
    home = hello.home
    _, work_dir, config_file = run_paths(hello.root, run["id"])
    env = effective_env(host, spec)
    python = expand_home(env.python or DEFAULT_PYTHON, home)
    checkpoint = next((f"{work_dir}/{i.path}" for i in inputs if i.kind == RESUME_INPUT), None)
    command = spec.render_command(
        run_id=run["id"],
        run_dir=work_dir,
        config_file=config_file,
        gpus=gpus,
        python=python,
        inputs=input_paths(work_dir, inputs),
        checkpoint=checkpoint,
    )
    argv = command if isinstance(command, str) else list(command)
    request = StartRequest(
        run_id=run["id"],
        command=argv,
        gpus=tuple(gpus),
        env=dict(spec.env),
        params=dict(spec.params),
        code_hash=run["code_hash"],
        config_yaml=spec.config_yaml(),
        setup=list(env.setup),
        path=[expand_home(entry, home) for entry in env.path],
        python=run_interpreter(argv, python),
        env_key=env.key(),
        links={
            name: expand_home(target, home)
            for name, target in merge_links(dict(host.links), spec.links).items()
        },
        outputs=output_globs(run["spec"]),
        inputs=[dict(item) for item in staged],
        record=run_record(run),
    )
    if request_bytes(request) > protocol.MAX_LINE_BYTES:
        # run.json serves `cvtui reindex` alone: a run with a huge config starts without it
        # (reindex then reads its status.json and config.yaml). Still too long: the agent
        # client refuses it by name (E_TOO_LONG) and the run fails saying so.
        log.warning("run %s: start request too long: run.json left out", run["id"])
        request = dataclasses.replace(request, record={})
    return request


def request_bytes(request: StartRequest) -> int:
    """The length of the OP_START line this request makes (the agent reads at most
    protocol.MAX_LINE_BYTES per line)."""
    return len(protocol.encode(protocol.request(0, protocol.OP_START, **request.to_wire())))
