"""One error hierarchy for rayfleet; the CLI maps each class to an exit code in one place.

Nothing below the CLI prints or exits: library code raises one of these.
"""
from __future__ import annotations


class RayfleetError(Exception):
    """Base of every error rayfleet raises on purpose. `exit_code` is what the CLI returns."""

    exit_code = 1


class BadInput(RayfleetError):
    """The user's input is wrong (a spec, a pool name, a number): nothing was changed.

    The message names the file (or command), the field, the bad value and the fix.
    """

    exit_code = 2


class NotFound(BadInput):
    """A named thing (fleet, pool, job, node) does not exist."""


class ProviderError(RayfleetError):
    """A provider (local processes, EC2, Kubernetes) failed to do what was asked."""


class FleetNotRunning(RayfleetError):
    """The fleet's head or controller cannot be reached."""


class Failed(RayfleetError):
    """An operation ran but did not succeed (a job failed, a wait timed out)."""
