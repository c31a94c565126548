"""The raylet health probe: the gRPC health check Ray's GCS itself sends to every raylet.

Measured here: a healthy raylet answers SERVING in ~5 ms; a SIGSTOPped one lets the deadline pass;
a dead one refuses the connection at once. So a refusal is proof of death, a timeout only evidence.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

from rayfleet.cluster.decide.view import Probe

_METHOD = "/grpc.health.v1.Health/Check"


def probe(address: str, port: int, timeout_s: float) -> Probe:
    import grpc

    channel = grpc.insecure_channel(f"{address}:{port}")
    try:
        check = channel.unary_unary(_METHOD, request_serializer=lambda x: x, response_deserializer=lambda x: x)
        check(b"", timeout=timeout_s)  # an empty HealthCheckRequest: the server's overall health
        return Probe.OK
    except grpc.RpcError as error:
        code = error.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return Probe.GONE
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return Probe.OK  # it answered; it just has no health service
        return Probe.HUNG
    finally:
        channel.close()


def probe_all(targets: Iterable[tuple[str, str, int]], timeout_s: float, pool: ThreadPoolExecutor
              ) -> dict[str, Probe]:
    """Probe (instance, address, port) targets concurrently: a loop waits one deadline at most."""
    targets = list(targets)
    results = pool.map(lambda t: probe(t[1], t[2], timeout_s), targets)
    return {instance: result for (instance, _, _), result in zip(targets, results)}
