"""The agent's AWS notice path against a local HTTP server serving IMDSv2 as AWS documents it:
a session token from PUT /latest/api/token, then the spot instance-action and rebalance
recommendation documents (404 while there is no notice)."""
from __future__ import annotations

import datetime
import json
from typing import Iterator

import pytest

from rayfleet.cluster.health.notices import SPOT_WARNING_S, NoticeSource
from tests.support.loopback_http import LoopbackServer, QuietHandler

TOKEN = "AQAEAtoken=="


class Imds(QuietHandler):
    documents: dict[str, str] = {}
    tokenless: list[str] = []

    def do_PUT(self) -> None:  # noqa: N802
        if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            self._send(200, TOKEN)
        else:
            self._send(400, "")

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:
            Imds.tokenless.append(self.path)
            self._send(401, "")
        elif self.path in Imds.documents:
            self._send(200, Imds.documents[self.path])
        else:
            self._send(404, "")

    def _send(self, code: int, body: str) -> None:
        self.send_response(code)
        self.end_headers()
        self.wfile.write(body.encode())


@pytest.fixture
def imds() -> Iterator[str]:
    Imds.documents, Imds.tokenless = {}, []
    server = LoopbackServer(Imds, "imds")
    try:
        yield server.url
    finally:
        server.close()


def iso(when: datetime.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_no_notice_while_the_documents_answer_404(imds: str) -> None:
    assert NoticeSource(imds, every_s=0).notice() is None
    assert Imds.tokenless == []  # every read carried the session token


def test_a_spot_interruption_gives_its_deadline_and_action(imds: str) -> None:
    at = datetime.datetime(2026, 11, 24, 12, 2, 0, tzinfo=datetime.timezone.utc)
    Imds.documents["/latest/meta-data/spot/instance-action"] = json.dumps({"action": "terminate", "time": iso(at)})
    deadline, reason = NoticeSource(imds, every_s=0).notice() or (None, "")
    assert deadline == at.timestamp() and reason == "spot interruption (terminate)"


def test_a_rebalance_recommendation_is_taken_as_two_minutes_notice(imds: str) -> None:
    at = datetime.datetime(2026, 11, 24, 12, 0, 0, tzinfo=datetime.timezone.utc)
    Imds.documents["/latest/meta-data/events/recommendations/rebalance"] = json.dumps({"noticeTime": iso(at)})
    deadline, reason = NoticeSource(imds, every_s=0).notice() or (None, "")
    assert deadline == at.timestamp() + SPOT_WARNING_S and "rebalance" in reason


def test_the_spot_notice_wins_over_a_rebalance_and_a_dead_endpoint_is_no_notice(imds: str) -> None:
    spot = datetime.datetime(2026, 11, 24, 12, 1, 0, tzinfo=datetime.timezone.utc)
    Imds.documents["/latest/meta-data/events/recommendations/rebalance"] = json.dumps({"noticeTime": iso(spot)})
    Imds.documents["/latest/meta-data/spot/instance-action"] = json.dumps({"action": "stop", "time": iso(spot)})
    assert NoticeSource(imds, every_s=0).notice() == (spot.timestamp(), "spot interruption (stop)")
    assert NoticeSource("http://127.0.0.1:9", every_s=0).notice() is None
