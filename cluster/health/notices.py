"""Notices that a node will go away, as its agent learns them.

On EC2 the agent reads the instance metadata service (IMDSv2: a session token first): a spot
interruption (`/latest/meta-data/spot/instance-action`, JSON {"action": "terminate"|"stop",
"time": ISO-8601}, announced two minutes ahead per AWS's documentation) or a rebalance
recommendation (`/latest/meta-data/events/recommendations/rebalance`, {"noticeTime": ...}: no fixed
deadline, taken as the same two minutes). Both answer 404 while there is no notice. The agent
reads them only when RAYFLEET_IMDS names the endpoint (the AWS user-data sets it to
http://169.254.169.254; tests point it at a local HTTP server). `rayfleet chaos preempt` simulates one.
"""
from __future__ import annotations

import datetime
import json
import os
import time
import urllib.error
import urllib.request

SPOT_WARNING_S = 120.0
"""AWS gives a spot instance two minutes' warning of an interruption."""


class NoticeSource:
    def __init__(self, endpoint: str | None = None, every_s: float = 5.0) -> None:
        self.endpoint = endpoint if endpoint is not None else os.environ.get("RAYFLEET_IMDS")
        self.every_s = every_s
        self._simulated: tuple[float, str] | None = None
        self._cached: tuple[float, str] | None = None
        self._read_at = 0.0

    def simulate(self, deadline: float, reason: str) -> None:
        self._simulated = (deadline, reason)

    def notice(self) -> tuple[float, str] | None:
        """(deadline as unix time, reason) of the newest notice, or None."""
        if self._simulated is not None:
            return self._simulated
        if not self.endpoint:
            return None
        if time.monotonic() - self._read_at >= self.every_s:
            self._read_at = time.monotonic()
            self._cached = self._read_imds()
        return self._cached

    def _read_imds(self) -> tuple[float, str] | None:
        token = self._token()
        spot = self._get("/latest/meta-data/spot/instance-action", token)
        if spot:
            data = json.loads(spot)
            return _epoch(data["time"]), f"spot interruption ({data.get('action', 'terminate')})"
        rebalance = self._get("/latest/meta-data/events/recommendations/rebalance", token)
        if rebalance:
            notice = _epoch(json.loads(rebalance)["noticeTime"])
            return notice + SPOT_WARNING_S, "EC2 rebalance recommendation"
        return None

    def _token(self) -> str | None:
        request = urllib.request.Request(f"{self.endpoint}/latest/api/token", method="PUT",
                                         headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        try:
            with urllib.request.urlopen(request, timeout=1.0) as response:
                return response.read().decode()
        except (urllib.error.URLError, OSError):
            return None  # IMDSv1 (no token) still answers where it is allowed

    def _get(self, path: str, token: str | None) -> str | None:
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}{path}", headers=headers),
                                        timeout=1.0) as response:
                return response.read().decode()
        except (urllib.error.URLError, OSError):  # 404: no notice
            return None


def _epoch(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
