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


def version() -> str:
    """The installed package's version, with the Ray and torch it runs beside (as pip resolved them)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    def of(name: str) -> str:
        try:
            return installed(name)
        except PackageNotFoundError:
            return "not installed"

    return f"rayfleet {of('rayfleet')} (ray {of('ray')}, torch {of('torch')})"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version())
        raise typer.Exit()


@app.callback()
def _options(show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                               help="print rayfleet's version and exit")) -> None:
    """Elastic GPU fleets and transformer training on Ray."""
