"""`rayfleet completion SHELL`: print the completion script for a named shell.

Typer's `--show-completion` detects the shell it runs under and ignores a shell argument, so in a
Dockerfile `RUN` line or any `sh -c` it answers "Shell sh not supported". Naming the shell works
anywhere: `rayfleet completion bash > /etc/bash_completion.d/rayfleet`.
"""
from __future__ import annotations

import typer
from typer.completion import Shells, get_completion_script

from rayfleet.cli.app import app


@app.command("completion")
def completion(ctx: typer.Context,
               shell: Shells = typer.Argument(..., help="the shell to complete in", case_sensitive=False)) -> None:
    """Print the completion script for SHELL (to source, or to put in its completion folder)."""
    prog_name = ctx.find_root().info_name or "rayfleet"
    complete_var = "_{}_COMPLETE".format(prog_name.replace("-", "_").upper())
    typer.echo(get_completion_script(prog_name=prog_name, complete_var=complete_var, shell=shell.value))
