"""Launches and terminations are asked again until the provider shows them done.

Both are idempotent at the provider (a launch carries its instance name as client token, a
terminate of what is gone is done), so asking again never makes two machines or an error.
"""
from __future__ import annotations

import dataclasses

from rayfleet.cluster.decide.actions import Launch, Terminate
from rayfleet.cluster.decide.draft import Draft
from rayfleet.cluster.decide.state import NodeRecord

RELAUNCH_AFTER_S = 30.0
"""A requested instance the provider still does not show after this long is asked for again.
Launch is idempotent (client tokens), so asking twice never makes two."""

TERMINATE_RETRY_S = 30.0
"""A terminating instance still present after this long is asked to terminate again."""

MAX_BACKOFF_S = 300.0
"""Launch failures back off exponentially per pool (1, 2, 4 ... s), capped here."""


def backoff_s(failures: int) -> float:
    """How long a pool waits to launch again after `failures` failed launches in a row (>= 1)."""
    return min(MAX_BACKOFF_S, 2.0 ** (failures - 1))


def retry_launch(draft: Draft, record: NodeRecord) -> None:
    """Ask again for a requested instance the provider has not shown for RELAUNCH_AFTER_S."""
    if draft.now - record.last_action_at >= RELAUNCH_AFTER_S:
        draft.records[record.instance] = dataclasses.replace(
            record, last_action_at=draft.now, launch_attempts=record.launch_attempts + 1)
        draft.actions.append(Launch(record.pool, record.instance))


def retry_terminate(draft: Draft, record: NodeRecord) -> None:
    """Ask again to terminate an instance the provider still lists after TERMINATE_RETRY_S."""
    if draft.now - record.last_action_at >= TERMINATE_RETRY_S:
        draft.records[record.instance] = dataclasses.replace(record, last_action_at=draft.now)
        draft.actions.append(Terminate(record.pool, record.instance, record.reason))
