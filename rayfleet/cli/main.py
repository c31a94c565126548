"""`rayfleet`: the command line. One file per command under rayfleet/cli/commands/.

This is the one place errors become messages and exit codes: 0 done, 1 failed, 2 bad input.
An error that is not a RayfleetError (a bug, or a library's failure nobody translated) prints one
line too, with RAYFLEET_DEBUG=1 to see its traceback.
"""
from __future__ import annotations

import os
import sys

from rich.markup import escape

from rayfleet.cli.app import app
from rayfleet.cli.output import errors
from rayfleet.errors import RayfleetError

def _register() -> None:
    # Each command's module adds it to `app` on import; this list is the CLI's table of contents.
    from rayfleet.cli.commands import (  # noqa: F401
        chaos, completion_script, dashboard, data, demo, down, events, explain, export, health, job, jobs, logs,
        quarantine, render, scale, schema, status, stop, submit, up,
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
    except Exception as error:  # a failure nobody turned into a RayfleetError: one line, not a traceback
        if os.environ.get("RAYFLEET_DEBUG"):
            raise
        errors.print(f"[bold red]error:[/] {escape(type(error).__name__)}: {escape(str(error))} "
                     "(unexpected: RAYFLEET_DEBUG=1 shows the traceback to report)")
        sys.exit(1)


if __name__ == "__main__":
    main()
