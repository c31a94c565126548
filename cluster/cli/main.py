"""`rayfleet`: the command line. One file per command under cluster/cli/commands/.

This is the one place errors become messages and exit codes: 0 done, 1 failed, 2 bad input.
"""
from __future__ import annotations

import sys

import typer
from rich.markup import escape

from cluster.cli.output import errors
from cluster.errors import RayfleetError

app = typer.Typer(
    name="rayfleet",
    help="Elastic GPU fleets and transformer training on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    # Each module adds its command(s) to `app` on import.
    from cluster.cli.commands import (  # noqa: F401
        chaos, demo, down, events, health, jobs, logs, render, scale, schema, status, stop, submit, up,
    )


def main() -> None:
    _register()
    try:
        app()
    except RayfleetError as error:
        errors.print(f"[bold red]error:[/] {escape(str(error))}")
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        errors.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
