"""A fleet's Ray dashboard as `rayfleet dashboard` describes it: its views, how to sign in with the
fleet's token, and where Prometheus scrapes the metrics.

How Ray 2.60's dashboard takes a token (ray/dashboard/http_server_head.py and
ray/_private/authentication/http_token_authentication.py): every request but `/`, `/static/*`,
`/api/authentication_mode` and `/api/authenticate` needs `Authorization: Bearer TOKEN` (or
`X-Ray-Authorization`), or the cookie `ray-authentication-token`. A browser gets that cookie by
pasting the token into the dialog the dashboard opens on its first 401; the page then POSTs it to
`/api/authenticate`, which sets the cookie (HttpOnly, SameSite=Strict, 30 days).
"""
from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from rayfleet.cluster.rayio import gcs
from rayfleet.cluster.rayio.connection import Connection
from rayfleet.names import CONTROLLER_NAME, NAMESPACE
from rayfleet.errors import FleetNotRunning

TOKEN_COOKIE = "ray-authentication-token"
"""ray/_private/authentication/authentication_constants.py: AUTHENTICATION_TOKEN_COOKIE_NAME."""

VIEWS: tuple[tuple[str, str], ...] = (
    ("overview", "the cluster at a glance"),
    ("jobs", "jobs with name, pool, strategy"),
    ("actors", f"{CONTROLLER_NAME}, Train workers"),
    ("cluster", "nodes, labelled by pool"),
    ("metrics", "Grafana panels (Grafana needed)"),
    ("logs", "controller decisions, job output"),
)

METRIC_PREFIX = "ray_rayfleet_"
"""Ray exports custom metrics under its `ray` namespace (ray/_private/telemetry/
open_telemetry_metric_recorder.py: NAMESPACE), counters with `_total` appended."""


def auth_mode(url: str, timeout_s: float = 5.0) -> str:
    """`token`, `k8s` or `disabled`, as the dashboard says (a public endpoint); FleetNotRunning if
    it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/api/authentication_mode", timeout=timeout_s) as answer:
            return str(json.load(answer).get("authentication_mode", "disabled"))
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise FleetNotRunning(f"the Ray dashboard at {url} does not answer ({error}); `rayfleet status` "
                              "checks the fleet, `rayfleet up -f FLEET.yaml` starts its head again") from None


def token_accepted(url: str, token: str, timeout_s: float = 5.0) -> bool:
    """Whether the dashboard takes `token` (an authenticated GET of /api/version)."""
    request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return True
    except (urllib.error.URLError, OSError):
        return False


def describe(conn: Connection, show_token: bool = False) -> dict[str, Any]:
    """The document `rayfleet dashboard -o json` prints. The token itself only with `show_token`."""
    url = conn.dashboard_url
    mode = auth_mode(url)
    token_file = conn.fleet.token_file
    token = token_file.read_text().strip() if token_file.exists() else ""
    auth: dict[str, Any] = {"mode": mode}
    if mode != "disabled":
        auth.update({
            "token_file": str(token_file),
            "token_accepted": token_accepted(url, token) if token else False,
            "browser": "open the URL; when the dashboard asks for a token, paste the fleet's token "
                       "(`rayfleet dashboard --show-token` prints it); it keeps a cookie for 30 days",
            "cookie": TOKEN_COOKIE,
            "header": "Authorization: Bearer <token>",
            "curl": f'curl -H "Authorization: Bearer $(cat {token_file})" {url}/api/jobs/',
            "ray_cli": f"RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={token_file} ray job list --address {url}",
        })
        if show_token:
            auth["token"] = token
    parsed = urlparse(url)
    doc: dict[str, Any] = {
        "fleet": conn.fleet.name,
        "url": url,
        "views": {name: {"url": f"{url}/#/{name}", "shows": shows} for name, shows in VIEWS},
        "controller": {"actor": CONTROLLER_NAME, "namespace": NAMESPACE},
        "auth": auth,
        "metrics": {"prefix": METRIC_PREFIX,
                    "targets": [{"target": e.target, "pool": e.pool, "head": e.is_head}
                                for e in gcs.metrics_endpoints(conn.client)]},
    }
    discovery = conn.fleet.temp_root / "head" / "prom_metrics_service_discovery.json"
    if discovery.exists():  # Ray keeps it current: Prometheus `file_sd_configs` reads it
        doc["metrics"]["service_discovery_file"] = str(discovery)
    if parsed.hostname in ("127.0.0.1", "localhost", "::1"):
        port = parsed.port or 80
        doc["tunnel"] = f"ssh -N -L {port}:127.0.0.1:{port} {socket.gethostname()}"
    return doc
