"""Run receivers against the peer process, interleaved, and collect raw runs."""

from __future__ import annotations

import gc
import importlib.util
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ._receivers import Meter, ReceiverSpec, run_receiver
from ._sender import Job, Peer, expected_crc


@dataclass
class Run:
    """What one run of one receiver on one job measured (the JSON rows)."""

    receiver: str
    api: str
    runtime: str
    aiozc: bool
    workload: str
    frame_size: int
    sender: str  # "zerocopy" | "plain"
    repeat: int
    count: int
    payload_bytes: int
    user_s: float
    sys_s: float
    wall_s: float
    sender_cpu_s: float
    mapped_fraction: float | None = None
    mode: str | None = None
    bytes_assembled: int | None = None

    @property
    def cpu_s(self) -> float:
        """Receiver-process CPU seconds (user + sys)."""
        return self.user_s + self.sys_s

    @property
    def us_per_msg(self) -> float:
        """Receiver CPU microseconds per frame (bulk) or request (rpc)."""
        return self.cpu_s * 1e6 / self.count

    @property
    def mb_per_s(self) -> float:
        """Payload MB (10**6 bytes) per second of the receiver's wall time."""
        return self.payload_bytes / 1e6 / self.wall_s if self.wall_s else 0.0

    def to_json(self) -> dict[str, object]:
        """The raw fields plus the derived figures."""
        d: dict[str, object] = asdict(self)
        d.update(cpu_s=self.cpu_s, us_per_msg=self.us_per_msg, mb_per_s=self.mb_per_s)
        return d


def available(spec: ReceiverSpec) -> bool:
    """Whether the package the receiver needs is installed."""
    return spec.needs is None or importlib.util.find_spec(spec.needs) is not None


def listening_socket(backlog: int = 8) -> socket.socket:
    """A loopback listener whose connections are what servers get in real use.

    ``socket.create_server()`` makes its socket with protocol 0, and so do
    the connections it accepts; asyncio's transports set ``TCP_NODELAY``
    only on sockets whose ``proto`` is ``IPPROTO_TCP``, which is what
    ``loop.create_server(host, port)`` and ``asyncio.start_server`` make
    (from ``getaddrinfo``).  So the peers ran with Nagle's algorithm here
    and nowhere else, while aiozc and uvloop set ``TCP_NODELAY`` on every
    connection: on the RPC cell that alone was most of aiozc's gap (issue
    14).  This listener is made as ``create_server(host, port)`` makes one.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def run_one(spec: ReceiverSpec, job: Job, peer: Peer, listener: socket.socket,
            repeat: int) -> Run:
    """One connection: the peer sends ``job``, ``spec`` receives it."""
    peer.start(listener.getsockname()[1], job)
    conn, _ = listener.accept()
    started = [False]

    def go() -> None:
        started[0] = True
        peer.go()

    meter = Meter(go)
    # A collection in the middle of a short run would land on one receiver
    # only; collect before, and let the run itself behave as an app would.
    gc.collect()
    try:
        crc = run_receiver(spec, conn, job, meter)
    except BaseException:
        if not started[0]:
            peer.abort()
        raise
    finally:
        conn.close()
    sender_cpu = peer.result()
    if crc & 0xFFFFFFFF != expected_crc(job):
        raise RuntimeError(f"{spec.name}: {job}: payload CRC mismatch (corrupted stream)")
    st = meter.stats
    return Run(
        receiver=spec.name, api=spec.api, runtime=spec.runtime, aiozc=spec.aiozc,
        workload=job.workload, frame_size=job.frame_size,
        sender="zerocopy" if job.zerocopy else "plain", repeat=repeat, count=job.count,
        payload_bytes=job.payload_bytes, user_s=meter.user, sys_s=meter.sys,
        wall_s=meter.wall, sender_cpu_s=sender_cpu,
        mapped_fraction=st.mapped_fraction if st is not None else None,
        mode=st.mode if st is not None else None,
        bytes_assembled=st.bytes_assembled if st is not None else None,
    )


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done = total, 0
        self.t0 = time.monotonic()
        self.enabled = enabled
        self._last = 0.0

    def step(self, label: str) -> None:
        """Count one run and redraw."""
        self.done += 1
        now = time.monotonic()
        # Redraw at most 5 times a second (and at the end): a captured
        # stderr (CI) stays small.
        if not self.enabled or (now - self._last < 0.2 and self.done < self.total):
            return
        self._last = now
        width = 30
        filled = width * self.done // max(1, self.total)
        el = time.monotonic() - self.t0
        eta = el / self.done * (self.total - self.done)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}"
                         f" {el:4.0f}s, ~{eta:3.0f}s left  {label[:48]:<48}")
        sys.stderr.flush()

    def close(self) -> None:
        """End the line."""
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def run_matrix(receivers: Sequence[ReceiverSpec], jobs: Sequence[Job], repeats: int,
               peer: Peer, progress: Progress | None = None,
               log: Callable[[str], None] | None = None) -> list[Run]:
    """Every receiver on every job, ``repeats`` times.

    Interleaved: within a job, the receivers run A B C ..., then in reverse
    order on the next repeat, so that slow drifts of a shared machine (and
    whatever a run leaves behind) hit every receiver alike.  The jobs
    themselves are the outer loop of each repeat.
    """
    runs: list[Run] = []
    with listening_socket() as listener:
        listener.settimeout(60)
        # Warm-up (discarded): imports, first connections, page cache of the
        # sender's buffers.
        for spec in receivers[:1]:
            run_one(spec, jobs[0], peer, listener, -1)
        for rep in range(repeats):
            for job in jobs:
                order = list(receivers) if rep % 2 == 0 else list(receivers)[::-1]
                for spec in order:
                    try:
                        runs.append(run_one(spec, job, peer, listener, rep))
                    except Exception as exc:
                        if log:
                            log(f"{spec.name} on {job}: {type(exc).__name__}: {exc}")
                        raise
                    if progress:
                        progress.step(f"{spec.name} {job.workload} {job.frame_size}")
    return runs
