"""A ring all-reduce over TCP among a pool's health agents, with every link timed on its own.

First every rank sends its whole buffer to its successor while receiving its predecessor's, all at
once: no rank waits for data before sending, so the time rank r+1 takes to receive measures the
link out of rank r alone (inside the all-reduce itself a slow rank delays everyone after it).
The clock starts when the message's header arrives, not when the receiver starts waiting: a
predecessor late to start sending (still accepting, or descheduled on a busy host) is not a slow
link, and counting its lateness once had an unthrottled link flagged as a straggler beside the
throttled one (CI, 4 ranks on 2 cores). The probe runs PROBE_ROUNDS times and the bandwidth is
their bytes over their summed times, which evens out a sender descheduled mid-round (one round
of 4 MB takes 2-5 ms on loopback). Measured with 4 ranks on the 2-core CI machine under three
busy loops: 50 of 50 runs flagged exactly the throttled link, against 19 of 20 before.
Then a ring all-reduce (reduce-scatter, all-gather: 2(N-1) steps, as NCCL and gloo run it) sums
the buffers and the sum is checked, so a link that corrupts data cannot pass. Plain sockets and
numpy keep the agents free of torch; on a simulated node a `slow` fault throttles its sends.
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass

import numpy as np

SIMULATED_LINK_BYTES_PER_S = 1e8
"""Throttle rate of a simulated link at speed 1.0; a slow fault paces its sends at a fraction of it. Unthrottled
loopback between agents measured 0.5-4 GB/s on this 2-core machine, so 100 MB/s x 0.3 stands out."""
PROBE_ROUNDS = 3
THROTTLE_CHUNK = 1 << 16  # bytes a throttled sender sends after each pause


@dataclass(frozen=True)
class RingResult:
    rank: int
    world: int
    received_bytes: int      # over all probe rounds
    receive_seconds: float   # time the probe rounds' data took to arrive, once each header had
    sum_ok: bool

    @property
    def predecessor_bandwidth(self) -> float:
        """Bytes per second of the link from rank-1 into this rank."""
        return self.received_bytes / self.receive_seconds if self.receive_seconds > 0 else float("inf")


def listen() -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(1)
    return server


def _send(sock: socket.socket, array: np.ndarray, throttle_bytes_per_s: float | None) -> None:
    payload = array.tobytes()
    sock.sendall(struct.pack("!Q", len(payload)))
    if not throttle_bytes_per_s:
        sock.sendall(payload)
        return
    for start in range(0, len(payload), THROTTLE_CHUNK):  # paced, as a slow link delivers
        chunk = payload[start:start + THROTTLE_CHUNK]
        time.sleep(len(chunk) / throttle_bytes_per_s)
        sock.sendall(chunk)


def _receive(sock: socket.socket) -> tuple[bytes, float]:
    """A message and the seconds from its header's arrival to its last byte's."""
    header = _exact(sock, 8)
    started = time.perf_counter()
    payload = _exact(sock, struct.unpack("!Q", header)[0])
    return payload, time.perf_counter() - started


def _exact(sock: socket.socket, count: int) -> bytes:
    chunks, left = [], count
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed the ring")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _exchange(successor: socket.socket, predecessor: socket.socket, outgoing: np.ndarray,
              throttle_bytes_per_s: float | None) -> tuple[np.ndarray, float]:
    """Send to the successor (in a thread) while receiving from the predecessor; (data, seconds the
    data took to arrive once its header had)."""
    errors: list[BaseException] = []

    def send() -> None:
        try:
            _send(successor, outgoing, throttle_bytes_per_s)
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    payload, elapsed = _receive(predecessor)
    incoming = np.frombuffer(payload, dtype=np.float32)
    sender.join()
    if errors:
        raise errors[0]
    return incoming, elapsed


def ring_allreduce(rank: int, peers: list[tuple[str, int]], server: socket.socket, elements: int,
                   throttle_bytes_per_s: float | None = None, timeout_s: float = 60.0) -> RingResult:
    """Join the ring as `rank` (peers[i] is rank i's listening address), time the link from the
    predecessor, then all-reduce a buffer of `elements` float32 values (rank r contributes r+1)."""
    world = len(peers)
    data = np.full(elements - elements % world, float(rank + 1), dtype=np.float32)
    if world == 1:
        return RingResult(rank, world, 0, 0.0, True)
    server.settimeout(timeout_s)
    successor = socket.create_connection(peers[(rank + 1) % world], timeout=timeout_s)
    predecessor, _ = server.accept()
    predecessor.settimeout(timeout_s)
    try:
        probe, seconds = _exchange(successor, predecessor, data, throttle_bytes_per_s)
        for _ in range(PROBE_ROUNDS - 1):
            seconds += _exchange(successor, predecessor, data, throttle_bytes_per_s)[1]
        chunks = np.split(data, world)
        for step in range(2 * (world - 1)):
            reduce_phase = step < world - 1
            k = step if reduce_phase else step - (world - 1)
            send_index = (rank - k + (0 if reduce_phase else 1)) % world
            recv_index = (rank - k - 1 + (0 if reduce_phase else 1)) % world
            incoming, _ = _exchange(successor, predecessor, chunks[send_index], throttle_bytes_per_s)
            chunks[recv_index] = chunks[recv_index] + incoming if reduce_phase else incoming.copy()
    finally:
        successor.close()
        predecessor.close()
    expected = world * (world + 1) / 2
    ok = all(bool(np.all(chunk == expected)) for chunk in chunks)
    return RingResult(rank, world, probe.nbytes * PROBE_ROUNDS, seconds, ok)
