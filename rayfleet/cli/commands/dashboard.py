"""`rayfleet dashboard [-o json] [--show-token]`: the Ray dashboard's URL, views and sign-in."""
from __future__ import annotations

from typing import Any, Optional

import typer
from rich.table import Table

from rayfleet.cli.completion import complete_fleet
from rayfleet.cli.app import app
from rayfleet.cli.output import Format, console, emit
from rayfleet.cluster.rayio.connection import connect


@app.command()
def dashboard(
    show_token: bool = typer.Option(False, "--show-token", help="also print the fleet's token (a secret)"),
    output: Format = typer.Option(Format.table, "-o", "--output", help="table, json or yaml"),
    fleet_name: Optional[str] = typer.Option(None, "--fleet", help="fleet name (default: current)",
                                             autocompletion=complete_fleet),
) -> None:
    """Where the Ray dashboard is, what each view shows, and how to sign in with the fleet's token."""
    from rayfleet.cluster.rayio.dashboard import describe

    doc = describe(connect(fleet_name), show_token=show_token)
    if emit(doc, output):
        return
    _print(doc)


def _print(doc: dict[str, Any]) -> None:
    console.print(f"Ray dashboard of fleet [bold]{doc['fleet']}[/]: {doc['url']}")
    views = Table(box=None, show_header=False, pad_edge=False)
    views.add_column(style="bold", no_wrap=True)
    views.add_column(no_wrap=True)
    views.add_column(overflow="fold")
    for name, view in doc["views"].items():
        views.add_row(name.capitalize(), view["url"], view["shows"])
    console.print(views)
    auth = doc["auth"]
    console.print()
    if auth["mode"] == "disabled":
        console.print("Sign-in: none (token authentication is off on this head).")
    else:
        accepted = "" if auth["token_accepted"] else "  [red](the dashboard refused this token)[/]"
        console.print(f"Sign-in: token authentication is on; the fleet's token is in {auth['token_file']}{accepted}")
        console.print("  browser  open the URL and paste the token when the dashboard asks for it")
        if "token" in auth:
            console.print(f"  token    {auth['token']}")
        else:
            console.print("           (`rayfleet dashboard --show-token` prints it)")
        console.print(f"  curl     {auth['curl']}")
        console.print(f"  Ray CLI  {auth['ray_cli']}")
    if "tunnel" in doc:
        console.print(f"  remote   {doc['tunnel']}   then open {doc['url']}")
    metrics = doc["metrics"]
    console.print()
    targets = ", ".join(f"{t['target']} ({'head' if t['head'] else t['pool'] or '-'})" for t in metrics["targets"])
    console.print(f"Prometheus ({metrics['prefix']}*): {targets or 'no node answers'}")
    if "service_discovery_file" in metrics:
        console.print(f"  file_sd  {metrics['service_discovery_file']}")
