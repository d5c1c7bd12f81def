"""A length-prefixed RPC server and client over aiozc streams.

Requests are a 4-byte big-endian length and a payload (32 KiB by default);
each reply is the payload's 4-byte CRC32.  The server reads every request
with ``readexactly_view``: the payload reaches ``zlib.crc32`` without being
copied whenever it arrived in one piece.  The client keeps a window of
requests in flight, as an RPC client would.

    python examples/rpc_streams.py [--loop asyncio|uvloop] [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import zlib
from collections.abc import Sequence

import aiozc

HEADER = 4


async def handle(reader: aiozc.ZCStreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one connection: answer each request with its CRC32."""
    try:
        while True:
            try:
                header = await reader.readexactly_view(HEADER)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    raise
                break  # clean EOF between requests
            size = int.from_bytes(header, "big")
            header.release()
            with await reader.readexactly_view(size) as payload:
                crc = zlib.crc32(payload)
            writer.write(crc.to_bytes(4, "big"))
            await writer.drain()
    finally:
        writer.close()


async def serve(host: str = "127.0.0.1", port: int = 0,
                config: aiozc.ZCConfig | None = None) -> aiozc.Server:
    """Start the RPC server; its port is ``server.sockets[0].getsockname()[1]``."""
    return await aiozc.start_server(handle, host, port, config=config)


async def call(host: str, port: int, requests: Sequence[bytes], window: int = 8,
               config: aiozc.ZCConfig | None = None) -> list[int]:
    """Send every request with up to ``window`` in flight; return the replies."""
    reader, writer = await aiozc.open_connection(host, port, config=config)
    replies: list[int] = []
    sent = 0
    try:
        while len(replies) < len(requests):
            while sent < len(requests) and sent - len(replies) < window:
                body = requests[sent]
                writer.write(len(body).to_bytes(HEADER, "big") + body)
                sent += 1
            await writer.drain()
            replies.append(int.from_bytes(await reader.readexactly(4), "big"))
    finally:
        writer.close()
        await writer.wait_closed()
    return replies


async def main(count: int, size: int) -> None:
    """Run a server and a client against it; check every reply."""
    server = await serve()
    async with server:
        port = server.sockets[0].getsockname()[1]
        requests = [os.urandom(size) for _ in range(count)]
        replies = await call("127.0.0.1", port, requests)
        assert replies == [zlib.crc32(r) for r in requests], "wrong reply"
        print(f"{count} requests of {size} bytes: every reply correct")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32 * 1024)
    args = parser.parse_args()
    aiozc.run(main(args.requests, args.size), use_uvloop=args.loop == "uvloop")
