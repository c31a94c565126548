"""A real HTTP EC2 endpoint for the AWS provider's tests: `moto_server` behind a small proxy.

`moto_server` (started by the `moto` fixture on 127.0.0.1, stopped by pid) answers the EC2 API.
The proxy in front of it, also on 127.0.0.1, adds what moto 5 does not do by itself:
- faults on chosen requests, answered with EC2's own XML error document: capacity errors
  (InsufficientInstanceCapacity), throttling (RequestLimitExceeded), a lost answer (the request is
  forwarded, then a 500 is returned as if the response never arrived);
- EC2's client-token idempotency (a RunInstances repeated with a token already used returns the
  first answer: https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html);
- placement groups (moto 5 does not implement CreatePlacementGroup / DescribePlacementGroups);
- spot interruptions: `interrupt(id)` ends the instance in moto and reports it the way EC2 does
  (StateReason Server.SpotInstanceTermination).
Everything else goes to moto unchanged, so the provider speaks real EC2 HTTP through botocore.
"""
from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlparse

from rayfleet.cluster.head.processes import free_port
from tests.support.loopback_http import LoopbackServer, QuietHandler

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
MOTO_SERVER = str(Path(sys.executable).with_name("moto_server"))
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """Start `moto_server` on a free loopback port; return it once it answers."""
    port = free_port()
    process = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/moto-api/")
            if connection.getresponse().status < 500:
                return process, url
        except OSError:
            pass
        time.sleep(0.1)
    stop_process(process)
    raise RuntimeError("moto_server did not answer within 60 s")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop exactly this process (by its pid), however it ends."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def reset_moto(url: str) -> None:
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    connection.request("POST", "/moto-api/reset")
    assert connection.getresponse().status == 200


def error_document(code: str, message: str) -> bytes:
    """EC2's error response body (the EC2 API reference, "Error codes": Response/Errors/Error)."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>{uuid.uuid4()}</RequestID></Response>").encode()


@dataclass
class Fault:
    """Answer the next `times` requests of `action` that satisfy `when` with an EC2 error."""

    action: str
    code: str
    message: str
    status: int
    times: int = 1
    when: Callable[[dict[str, str]], bool] = lambda params: True
    forward_first: bool = False   # True: moto does the work, the answer is lost (a 500 comes back)


@dataclass
class Ec2Proxy:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    tokens: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    placement_groups: dict[str, str] = field(default_factory=dict)
    interrupted: set[str] = field(default_factory=set)
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        proxy = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, payload = proxy.handle(self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._http = LoopbackServer(Handler, "ec2-proxy")
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()

    # --- what tests use -----------------------------------------------------------------------
    def fail(self, action: str, code: str, times: int = 1, status: int = 500,
             when: Callable[[dict[str, str]], bool] = lambda params: True, forward_first: bool = False) -> None:
        message = {"InsufficientInstanceCapacity": "We currently do not have sufficient capacity in the "
                                                   "Availability Zone you requested.",
                   "RequestLimitExceeded": "Request limit exceeded."}.get(code, code)
        with self._lock:
            self.faults.append(Fault(action, code, message, status, times, when, forward_first))

    def count(self, action: str, when: Callable[[dict[str, str]], bool] = lambda params: True) -> int:
        with self._lock:
            return sum(1 for name, params in self.calls if name == action and when(params))

    def actions(self) -> set[str]:
        with self._lock:
            return {name for name, _ in self.calls}

    def interrupt(self, ec2: Any, instance_id: str) -> None:
        """EC2 reclaims a spot instance: it ends, and its StateReason says why."""
        ec2.terminate_instances(InstanceIds=[instance_id])
        with self._lock:
            self.interrupted.add(instance_id)

    # --- the proxy ----------------------------------------------------------------------------
    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        params = {key: values[0] for key, values in parse_qs(body.decode(), keep_blank_values=True).items()}
        action = params.get("Action", "")
        with self._lock:
            self.calls.append((action, params))
            fault = self._take_fault(action, params)
            token = params.get("ClientToken") if action == "RunInstances" else None
            if token and token in self.tokens:
                return self.tokens[token]
        if fault is not None and not fault.forward_first:
            return fault.status, error_document(fault.code, fault.message)
        if action in ("CreatePlacementGroup", "DescribePlacementGroups"):
            return self._placement(action, params)
        status, payload = self._forward(path, headers, body)
        if token and status == 200:
            with self._lock:
                self.tokens[token] = (status, payload)
        if action == "DescribeInstances" and self.interrupted and status == 200:
            payload = self._mark_interruptions(payload)
        if fault is not None:  # forwarded, then "lost"
            return fault.status, error_document(fault.code, fault.message)
        return status, payload

    def _take_fault(self, action: str, params: dict[str, str]) -> Fault | None:
        for fault in self.faults:
            if fault.action == action and fault.times > 0 and fault.when(params):
                fault.times -= 1
                return fault
        return None

    def _forward(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        parsed = urlparse(self.upstream)
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        forwarded = {key: value for key, value in headers.items() if key.lower() not in ("host", "connection")}
        connection.request("POST", path, body=body, headers=forwarded)
        response = connection.getresponse()
        return response.status, response.read()

    def _placement(self, action: str, params: dict[str, str]) -> tuple[int, bytes]:
        request = f"<requestId>{uuid.uuid4()}</requestId>"
        with self._lock:
            if action == "CreatePlacementGroup":
                name = params["GroupName"]
                if name in self.placement_groups:
                    return 400, error_document("InvalidPlacementGroup.Duplicate",
                                               f"The Placement Group '{name}' already exists.")
                self.placement_groups[name] = params.get("Strategy", "cluster")
                item = self._group_xml(name)
                return 200, f'<CreatePlacementGroupResponse xmlns="{EC2_NS}">{request}<placementGroup>' \
                            f"{item}</placementGroup></CreatePlacementGroupResponse>".encode()
            names = [value for key, value in params.items() if key.startswith("GroupName.")] or list(self.placement_groups)
            for name in names:
                if name not in self.placement_groups:
                    return 400, error_document("InvalidPlacementGroup.Unknown",
                                               f"The Placement Group '{name}' is unknown.")
            items = "".join(f"<item>{self._group_xml(name)}</item>" for name in names)
            return 200, f'<DescribePlacementGroupsResponse xmlns="{EC2_NS}">{request}<placementGroupSet>' \
                        f"{items}</placementGroupSet></DescribePlacementGroupsResponse>".encode()

    def _group_xml(self, name: str) -> str:
        return (f"<groupName>{name}</groupName><strategy>{self.placement_groups[name]}</strategy>"
                f"<state>available</state><groupId>pg-{abs(hash(name)) % 16**17:017x}</groupId>")

    def _mark_interruptions(self, payload: bytes) -> bytes:
        root = ET.fromstring(payload)
        namespace = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
        ET.register_namespace("", namespace)
        ns = {"ec2": namespace}
        for item in root.iterfind(".//ec2:instancesSet/ec2:item", ns):
            if item.findtext("ec2:instanceId", namespaces=ns) not in self.interrupted:
                continue
            reason = item.find("ec2:stateReason", ns)
            if reason is None:
                reason = ET.SubElement(item, f"{{{namespace}}}stateReason")
            for child in list(reason):
                reason.remove(child)
            ET.SubElement(reason, f"{{{namespace}}}code").text = "Server.SpotInstanceTermination"
            ET.SubElement(reason, f"{{{namespace}}}message").text = \
                "Server.SpotInstanceTermination: Spot instance termination"
        return ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def proxy_for(moto_url: str) -> Iterator[Ec2Proxy]:
    """Generator for a fixture: a fresh moto state and a proxy in front of it, closed afterwards."""
    reset_moto(moto_url)
    proxy = Ec2Proxy(upstream=moto_url)
    try:
        yield proxy
    finally:
        proxy.close()
