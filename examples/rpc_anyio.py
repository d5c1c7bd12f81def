"""An RPC server and client over aiozc.anyio, on asyncio, uvloop or trio.

The protocol: a request is a 4-byte big-endian length, then that many bytes
(32 KiB by default); the reply is the 4-byte big-endian CRC32 of the
request's body.  The server cuts each request out of the stream with
``receive_exactly_view``: a read-only view over the received memory (the
kernel's own mapped pages when the peer's data can be mapped), released as
soon as its CRC is computed.

Run it::

    python examples/rpc_anyio.py --backend trio --requests 1000

It starts a server on a free loopback port, runs a client doing
``--requests`` requests against it, checks every reply, and prints both
ends' receive statistics.  The functions (:func:`serve`, :func:`handle`,
:func:`call`, :func:`run_client`, :func:`run`) are what the tests import.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import zlib
from typing import Any

import anyio
from anyio.abc import SocketAttribute, TaskGroup

from aiozc import ZCConfig, ZCStats
from aiozc.anyio import ZCSocketListener, ZCSocketStream, connect_tcp, create_tcp_listener

REQUEST_SIZE = 32 * 1024
MAX_REQUEST = 16 * 1024 * 1024

BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "asyncio": ("asyncio", {}),
    "uvloop": ("asyncio", {"use_uvloop": True}),
    "trio": ("trio", {}),
}


async def handle(stream: ZCSocketStream, server_stats: list[ZCStats] | None = None) -> None:
    """Serve one connection until the client closes it."""
    async with stream:
        try:
            while True:
                try:
                    header = await stream.receive_exactly_view(4)
                except anyio.IncompleteRead:
                    break  # the client closed the connection
                with header:
                    size = int.from_bytes(header, "big")
                if size > MAX_REQUEST:
                    break
                with await stream.receive_exactly_view(size) as body:
                    crc = zlib.crc32(body)
                await stream.send(crc.to_bytes(4, "big"))
        except (anyio.IncompleteRead, anyio.BrokenResourceError):
            pass  # the client went away mid-request
        if server_stats is not None:
            server_stats.append(stream.stats)


async def serve(
    listener: ZCSocketListener,
    task_group: TaskGroup | None = None,
    server_stats: list[ZCStats] | None = None,
) -> None:
    """Serve every connection the listener accepts, each in its own task.

    Runs until cancelled; each connection's final stats are appended to
    ``server_stats`` if given.
    """
    async def handler(stream: ZCSocketStream) -> None:
        await handle(stream, server_stats)

    async with listener:
        await listener.serve(handler, task_group)


async def call(stream: ZCSocketStream, body: bytes) -> int:
    """Send one request and return the server's reply (the CRC32 of ``body``)."""
    await stream.send(len(body).to_bytes(4, "big") + body)
    with await stream.receive_exactly_view(4) as reply:
        return int.from_bytes(reply, "big")


def request_body(index: int, size: int = REQUEST_SIZE, seed: int = 0) -> bytes:
    """The reproducible body of request number ``index``."""
    return random.Random(seed * 1_000_003 + index).randbytes(size)


async def run_client(
    host: str, port: int, requests: int, *, size: int = REQUEST_SIZE,
    config: ZCConfig | None = None,
) -> tuple[list[tuple[int, int]], ZCStats]:
    """Do ``requests`` requests; return (expected CRC, reply) pairs and the stats."""
    results: list[tuple[int, int]] = []
    async with await connect_tcp(host, port, config=config) as stream:
        for i in range(requests):
            body = request_body(i, size)
            results.append((zlib.crc32(body), await call(stream, body)))
        return results, stream.stats


async def run(
    requests: int, *, size: int = REQUEST_SIZE, config: ZCConfig | None = None,
) -> tuple[list[tuple[int, int]], ZCStats, list[ZCStats]]:
    """Start a server on a free loopback port, run one client against it, stop.

    Returns the client's (expected, reply) pairs, its stats, and the
    server-side stats of each connection.
    """
    server_stats: list[ZCStats] = []
    listener = await create_tcp_listener(local_host="127.0.0.1", config=config)
    port = listener.extra(SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, listener, None, server_stats)
        results, client_stats = await run_client("127.0.0.1", port, requests, size=size,
                                                 config=config)
        # Let the server's handler see the client's EOF and record its stats.
        with anyio.move_on_after(5):
            while not server_stats:
                await anyio.sleep(0.001)
        tg.cancel_scope.cancel()
    return results, client_stats, server_stats


def main(argv: list[str] | None = None) -> int:
    """Command line: run server and client on the chosen backend; 0 if all replies match."""
    parser = argparse.ArgumentParser(description="An RPC server and client over aiozc.anyio.")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="asyncio")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--size", type=int, default=REQUEST_SIZE, help="request body bytes")
    parser.add_argument("--zerocopy", choices=["auto", "always", "never"], default="auto")
    args = parser.parse_args(argv)
    backend, options = BACKENDS[args.backend]
    config = ZCConfig(zerocopy=args.zerocopy)

    start = time.perf_counter()
    results, client_stats, server_stats = anyio.run(
        lambda: run(args.requests, size=args.size, config=config),
        backend=backend, backend_options=options,
    )
    elapsed = time.perf_counter() - start
    bad = sum(1 for expected, got in results if expected != got)
    print(f"{args.backend}: {len(results)} requests of {args.size} bytes in {elapsed:.3f} s, "
          f"{bad} bad replies")
    for stats in server_stats:
        print(f"server: {stats}")
    print(f"client: {client_stats}")
    return 0 if results and not bad and len(results) == args.requests else 1


if __name__ == "__main__":
    sys.exit(main())
