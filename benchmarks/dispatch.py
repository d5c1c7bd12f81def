"""Per-event cost on uvloop: what reaching a socket through ``add_reader`` costs.

Usage::

    python -m benchmarks.dispatch [ROUNDS]

Issue 14 asked what it costs that every aiozc connection on uvloop goes
through ``add_reader`` and Python callbacks where uvloop's own transports
stay in C.  One connection, one 512-byte request in flight, a 4-byte answer,
the client in another process; the server pinned to CPU 0; server CPU per
request (getrusage), medians of ROUNDS interleaved runs, for:

* ``uvloop-protocol``: uvloop's C transport, ``Protocol.data_received`` and
  ``transport.write``;
* ``add_reader``: ``loop.add_reader`` and a Python callback that
  ``recv_into``s and ``send``s itself, the least any Python transport does;
* ``aiozc``: a ZCProtocol that releases each view and writes the answer.
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import resource
import socket
import statistics
import sys
from typing import Any

#: Requests per run.
N = 40000
KINDS = ("uvloop-protocol", "add_reader", "aiozc")


def _client(port: int, n: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = b"x" * 512
    for _ in range(n):
        s.sendall(req)
        got = 0
        while got < 4:
            got += len(s.recv(64))
    s.close()


async def _serve(kind: str, lsock: socket.socket) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    conn, _ = await loop.sock_accept(lsock)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if kind == "uvloop-protocol":
        class P(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t: Any = transport

            def data_received(self, data: bytes) -> None:
                self.t.write(b"abcd")

            def connection_lost(self, exc: Exception | None) -> None:
                done.set_result(None)

        await loop.connect_accepted_socket(P, conn)
    elif kind == "aiozc":
        import aiozc

        class Z(aiozc.ZCProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t: Any = transport

            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                data.release()
                self.t.write(b"abcd")

            def connection_lost(self, exc: Exception | None) -> None:
                done.set_result(None)

        await aiozc.connect_accepted_socket(Z, conn)
    else:
        conn.setblocking(False)
        buf = bytearray(65536)

        def readable() -> None:
            if not conn.recv_into(buf):
                loop.remove_reader(conn.fileno())
                done.set_result(None)
                return
            conn.send(b"abcd")

        loop.add_reader(conn.fileno(), readable)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    await done
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    conn.close()
    return (r1.ru_utime - r0.ru_utime) * 1e6 / N, (r1.ru_stime - r0.ru_stime) * 1e6 / N


def run_one(kind: str) -> tuple[float, float]:
    """One run: (user, sys) server CPU per request in us."""
    import uvloop

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()
    lsock.setblocking(False)
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=_client, args=(lsock.getsockname()[1], N))
    proc.start()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        out = runner.run(_serve(kind, lsock))
    proc.join()
    lsock.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    args = sys.argv[1:] if argv is None else argv
    rounds = int(args[0]) if args else 5
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            res[kind].append(run_one(kind))
    for kind, runs in res.items():
        user = statistics.median(u for u, _ in runs)
        system = statistics.median(s for _, s in runs)
        total = statistics.median(u + s for u, s in runs)
        print(f"{kind:16s} user {user:5.2f} us  sys {system:5.2f} us  "
              f"total {total:5.2f} us per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
