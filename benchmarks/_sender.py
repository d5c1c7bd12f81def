"""The load generator: a long-lived ``spawn`` process that plays the peer.

The receiver under test lives in the benchmark's own process (pinned to one
CPU); this process (pinned to another) connects to it once per run and

* ``bulk``: streams ``count`` length-prefixed frames (4-byte big-endian
  length, then the payload), or
* ``rpc``: sends ``count`` requests, each a 32 KiB frame in the same
  format, keeping ``RPC_WINDOW`` of them outstanding, and reads the
  receiver's 4-byte reply to each,

with :class:`aiozc.testing.ZeroCopySender`, either with ``MSG_ZEROCOPY``
(whose pages the receiving kernel can map) or with plain ``sendmsg`` (whose
pages it cannot; docs/kernel.md, "Which pages map").

The handshake per run keeps connection set-up off the receiver's clock:
the parent sends a job over the pipe; the peer connects and waits; the
parent accepts, builds its receiver, starts its clock and sends ``"go"``;
the peer sends; when done it reports its own CPU time over the pipe.
"""

from __future__ import annotations

import random
import resource
import socket
import zlib
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Literal

from aiozc.testing import ZeroCopySender

from ._process import pin, spawn, stop

Workload = Literal["bulk", "rpc"]

#: Bytes of the big-endian length prefix in front of every frame.
HEADER = 4
#: Outstanding requests the RPC client keeps in flight (the brief's window).
RPC_WINDOW = 8
#: Size of one RPC request's payload; the reply is 4 bytes.
RPC_REQUEST = 32 * 1024
#: The sender writes up to ~1 MiB of frames per send() so that its time goes
#: to the kernel, not to Python (one sendmsg per 512 B frame would make the
#: sender, not the receiver, the bottleneck).
_CHUNK = 1 << 20
#: Distinct payload blobs cycled over (so the CRC check catches a receiver
#: that returns the wrong bytes, without generating 128 MiB of randomness).
_NBLOBS = 4
_SEED = 20261204


@dataclass(frozen=True)
class Job:
    """One connection's worth of traffic."""

    workload: Workload
    frame_size: int
    count: int
    zerocopy: bool

    @property
    def payload_bytes(self) -> int:
        """Payload bytes the receiver must see (headers excluded)."""
        return self.frame_size * self.count


def payloads(frame_size: int) -> list[bytes]:
    """The ``_NBLOBS`` payloads frame ``i`` cycles over (``i % _NBLOBS``),
    identical in both processes (seeded)."""
    rnd = random.Random(_SEED + frame_size)
    return [rnd.randbytes(frame_size) for _ in range(_NBLOBS)]


def frames_per_chunk(frame_size: int) -> int:
    """Frames the bulk sender writes per send() call."""
    return max(1, _CHUNK // (frame_size + HEADER))


_crc_cache: dict[tuple[int, int], int] = {}


def expected_crc(job: Job) -> int:
    """CRC32 of every payload of ``job``, in order (what the receiver must get).

    The bulk sender sends chunk ``c`` of ``frames_per_chunk`` copies of payload
    ``c % _NBLOBS``; the RPC client sends request ``i`` with payload
    ``i % _NBLOBS``.
    """
    key = (job.frame_size, job.count) if job.workload == "bulk" else (-job.frame_size, job.count)
    if key not in _crc_cache:
        blobs = payloads(job.frame_size)
        crc = 0
        if job.workload == "bulk":
            per = frames_per_chunk(job.frame_size)
            for i in range(job.count):
                crc = zlib.crc32(blobs[(i // per) % _NBLOBS], crc)
        else:
            for i in range(job.count):
                crc = zlib.crc32(blobs[i % _NBLOBS], crc)
        _crc_cache[key] = crc
    return _crc_cache[key]


# ---------------------------------------------------------------------------
# the peer process


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _bulk(conn: socket.socket, job: Job) -> None:
    per = frames_per_chunk(job.frame_size)
    header = job.frame_size.to_bytes(HEADER, "big")
    blobs = [(header + p) * per for p in payloads(job.frame_size)]
    sender = ZeroCopySender(conn, zerocopy=job.zerocopy)
    sent = i = 0
    while sent < job.count:
        n = min(per, job.count - sent)
        blob = blobs[i % _NBLOBS]
        sender.send(blob if n == per else blob[: n * (job.frame_size + HEADER)])
        sent += n
        i += 1
    sender.flush()


def _rpc(conn: socket.socket, job: Job) -> None:
    header = job.frame_size.to_bytes(HEADER, "big")
    requests = [header + p for p in payloads(job.frame_size)]
    sender = ZeroCopySender(conn, zerocopy=job.zerocopy)
    sent = got = 0
    while got < HEADER * job.count:
        while sent < job.count and sent - got // HEADER < RPC_WINDOW:
            sender.send(requests[sent % _NBLOBS])
            sent += 1
        data = conn.recv(65536)
        if not data:
            raise ConnectionError(f"receiver closed after {got // HEADER} replies")
        got += len(data)
    sender.flush()


def _peer_main(pipe: Connection, cpu: int | None) -> None:
    """Peer process: serve one job per message until told to stop (None)."""
    pin(cpu)
    pipe.send("ready")
    while True:
        msg = pipe.recv()
        if msg is None:
            return
        port, job = msg
        assert isinstance(job, Job)
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if pipe.recv() != "go":
                conn.close()
                continue
            c0 = _cpu_seconds()
            (_bulk if job.workload == "bulk" else _rpc)(conn, job)
            cpu_s = _cpu_seconds() - c0
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(60)
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            pipe.send(("ok", cpu_s))
        except Exception as exc:  # report, keep serving
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            conn.close()


class Peer:
    """The long-lived peer process and the pipe that commands it."""

    def __init__(self, cpu: int | None) -> None:
        self._pipe, self._proc = spawn(_peer_main, cpu)
        if not self._pipe.poll(60) or self._pipe.recv() != "ready":
            raise RuntimeError("peer process failed to start")

    def start(self, port: int, job: Job) -> None:
        """Ask the peer to connect to ``port`` and wait for :meth:`go`."""
        self._pipe.send((port, job))

    def go(self) -> None:
        """Let the peer start sending."""
        self._pipe.send("go")

    def abort(self) -> None:
        """Tell a connected peer not to send (the receiver failed to start)."""
        self._pipe.send("abort")

    def result(self, timeout: float = 120.0) -> float:
        """The peer's CPU seconds for the last job (raises on its failure)."""
        if not self._pipe.poll(timeout):
            raise TimeoutError("peer process did not finish its job")
        status, value = self._pipe.recv()
        if status != "ok":
            raise RuntimeError(f"peer failed: {value}")
        return float(value)

    def close(self) -> None:
        """Stop the process."""
        stop(self._pipe, self._proc)
