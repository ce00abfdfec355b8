"""`cvtui infer` and `cvtui forward`: a registered model put to use on a host now, and a port
of a run's host brought to this machine."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from cvtui.states import PRIORITIES

if TYPE_CHECKING:
    from cvtui.cli.settings import Settings

INTERRUPTED_EXIT = 130  # as a shell reports a command ended by Ctrl-C


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("model")
@click.option("--host", required=True, metavar="HOST", help="Where to run it.")
@click.option(
    "--gpus", type=click.IntRange(min=0), default=1, show_default=True, help="GPUs to lease."
)
@click.option(
    "--code",
    type=click.Path(exists=True, file_okay=False),
    help="Code dir to ship (default: the git work tree of the current directory, else it).",
)
@click.option(
    "--priority",
    type=click.Choice(PRIORITIES),
    default="normal",
    show_default=True,
    help="Queue priority while the host is busy.",
)
@click.option("--raw", is_flag=True, help="Print the output with every escape sequence.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def infer(
    settings: Settings,
    model: str,
    host: str,
    gpus: int,
    code: str | None,
    priority: str,
    raw: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND once on HOST with the registered MODEL; exits with its exit code.

    {model} in COMMAND is the model's path on the host: uploaded there once, verified by
    its hash, linked into the run's work dir. The code dir is shipped as for `cvtui run`,
    output is streamed, and the inference is a run of its own (ps, logs, reproduce).
    Ctrl-C cancels it. Example:

        cvtui infer resnet-best --host gpu-01 -- python predict.py --weights {model}
    """
    from cvtui.cli.follow import OutputPrinter

    lab = settings.lab()
    printer = OutputPrinter(lab.catalog, prefix=False, raw=raw)
    try:
        result = lab.infer(
            model,
            list(command),
            host=host,
            gpus=gpus,
            code=code,
            priority=priority,
            output=lambda data: printer.feed("infer", data),
        )
    except KeyboardInterrupt:
        printer.finish()
        click.echo("cvtui: interrupted: the inference run was cancelled", err=True)
        sys.exit(INTERRUPTED_EXIT)
    printer.finish()
    if result.state != "succeeded" and result.exit_code in (0, 1):
        click.echo(f"cvtui: inference run {result.run_id[:12]} {result.state}", err=True)
    sys.exit(result.exit_code if 0 <= result.exit_code < 256 else 1)


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.argument("port", type=click.IntRange(1, 65535))
@click.option(
    "--local-port",
    type=click.IntRange(0, 65535),
    help="Port on 127.0.0.1 here (default: PORT; 0: any free one).",
)
@click.pass_obj
def forward(settings: Settings, run_ref: str, port: int, local_port: int | None) -> None:
    """Forward 127.0.0.1:LOCAL_PORT here to PORT on RUN's host (TensorBoard, Jupyter, a
    debugger) until Ctrl-C or the run ends. Only this machine's users can connect: the port
    is bound to 127.0.0.1.

    Example: cvtui forward sweep 6006 --local-port 16006
    """
    lab = settings.lab()
    run = lab.resolve(run_ref)
    lab.engine(start=True)  # keeps the run's state current, so its end ends the forward
    forward = lab.forward(run, port, local_port)
    click.echo(
        f"forwarding {forward.url} -> {run['host']}:{port} for run {run['id'][:12]} "
        f"({run['name']}); Ctrl-C to stop"
    )
    ended = None
    try:
        while not forward.wait(0.5):
            state = (lab.catalog.get_run(run["id"]) or {}).get("state")
            if state not in ("dispatching", "running"):
                ended = state
                break
    except KeyboardInterrupt:
        pass
    finally:
        forward.close()
    if ended is not None:
        click.echo(f"run {run['id'][:12]} {ended}: forward closed")
    elif forward.error:
        click.echo(f"cvtui: {run['host']}: {forward.error}", err=True)
        sys.exit(3)


def register(main: click.Group) -> None:
    for command in (infer, forward):
        main.add_command(command)
