"""A real HTTP S3 endpoint for checkpoint tests: `moto_server` behind a small proxy.

`moto_server` (started on 127.0.0.1 by `s3_server`, stopped by pid) answers the S3 API. The proxy in
front of it, also on 127.0.0.1, forwards every request unchanged (botocore signs for the proxy's
host, which moto does not check) and adds what a test needs of a store that misbehaves:
- `fail(text)`: requests whose path contains `text` are refused with S3's AccessDenied (403,
  not retried by botocore), never forwarded;
- `hold(text)`: such requests wait at the proxy (an upload in progress, as long as the test
  likes); `release()` answers every held one with a 503 and forwards every request from then on.
"""
from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import unquote, urlparse

from tests.support.loopback_http import LoopbackServer, QuietHandler
from tests.support.moto_ec2 import CREDENTIALS, start_moto, stop_process

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


def s3_server() -> Iterator[str]:
    """Generator for a fixture: moto_server's URL, with test credentials in this process's
    environment (and so in the fleets and ranks it starts) while it runs."""
    import os

    saved = {key: os.environ.get(key) for key in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    process, url = start_moto()
    try:
        yield url
    finally:
        stop_process(process)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)


def keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    """Every key of the bucket under `prefix`, sorted."""
    import boto3

    pages = boto3.client("s3", endpoint_url=endpoint).get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@dataclass
class S3Proxy:
    upstream: str
    url: str = ""
    failing: list[str] = field(default_factory=list)
    holding: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)   # paths of requests waiting now
    seen: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        proxy = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815 (http.server's names)

        self._http = LoopbackServer(Handler, "s3-proxy")
        self.url = self._http.url

    def close(self) -> None:
        self.release()
        self._http.close()

    # --- what tests use -----------------------------------------------------------------------
    def fail(self, text: str) -> None:
        with self._lock:
            self.failing.append(text)

    def hold(self, text: str) -> None:
        with self._lock:
            self.holding.append(text)
            self._released.clear()

    def release(self) -> None:
        with self._lock:
            self.holding.clear()
            self.failing.clear()
            self._released.set()

    def held_now(self) -> list[str]:
        with self._lock:
            return list(self.held)

    # --- the proxy ----------------------------------------------------------------------------
    def handle(self, request: QuietHandler) -> None:
        body = _read_body(request)
        path = unquote(request.path)
        with self._lock:
            self.seen.append((request.command, path))
            failing = any(text in path for text in self.failing)
            holding = any(text in path for text in self.holding)
            if holding:
                self.held.append(path)
        if holding:
            self._released.wait()
            with self._lock:
                self.held.remove(path)
            try:
                _answer(request, 503, b"<Error><Code>SlowDown</Code><Message>released</Message></Error>", {})
            except (BrokenPipeError, ConnectionResetError):
                pass  # its sender was killed while it waited: the point of holding it
            return None
        if failing:
            return _answer(request, 403, b"<Error><Code>AccessDenied</Code><Message>injected</Message></Error>", {})
        status, headers, payload = self._forward(request, body)
        _answer(request, status, payload, headers)

    def _forward(self, request: QuietHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        parsed = urlparse(self.upstream)
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=60)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if "content-length" not in {k.lower() for k in headers}:
            headers["Content-Length"] = str(len(body))
        connection.request(request.command, request.path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        answer = {k: v for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP}
        connection.close()
        return response.status, answer, payload


def _read_body(request: QuietHandler) -> bytes:
    """The request's body, sent with a length or chunked (decoded)."""
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while request.rfile.readline().strip():  # trailers, then the blank line
                    pass
                return b"".join(parts)
            parts.append(request.rfile.read(size))
            request.rfile.readline()
    return request.rfile.read(int(request.headers.get("Content-Length", 0)))


def _answer(request: QuietHandler, status: int, payload: bytes, headers: dict[str, str]) -> None:
    request.send_response(status)
    for key, value in headers.items():
        if key.lower() != "content-length":
            request.send_header(key, value)
    if request.command == "HEAD":  # no body; the length is the object's
        request.send_header("Content-Length", headers.get("Content-Length", headers.get("content-length", "0")))
        request.end_headers()
        return
    request.send_header("Content-Length", str(len(payload)))
    request.end_headers()
    request.wfile.write(payload)


def proxy_for(moto_url: str) -> Iterator[S3Proxy]:
    """Generator for a fixture: a proxy in front of moto, closed afterwards."""
    proxy = S3Proxy(upstream=moto_url)
    try:
        yield proxy
    finally:
        proxy.close()
