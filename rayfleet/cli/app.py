"""The `rayfleet` Typer application that every command in rayfleet/cli/commands/ adds itself to."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="rayfleet",
    help="Elastic GPU fleets and transformer training on Ray.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
