"""aiozc reading a file served by nginx (sendfile on) over loopback.

nginx sends the file's page-cache pages with sendfile(); aiozc receives
them through its stream reader (stdlib loop and uvloop) and through its
anyio stream (asyncio, uvloop, trio), with ``zerocopy="always"`` and with
the default ``"auto"``.  Every byte is checked by sha256 against the file.
Whether the kernel can map sendfile()'s pages on the receiving side is not
asserted: only what the statistics must say whatever it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from typing import Any

import anyio
import pytest

import aiozc
import aiozc.anyio
from aiozc import ZCConfig

from .conftest import MiB, Nginx, check_stats

CHUNK = 1 * MiB


def get(path: str, *, close: bool = True, extra: str = "") -> bytes:
    connection = "close" if close else "keep-alive"
    return (
        f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: aiozc-interop\r\n"
        f"{extra}Connection: {connection}\r\n\r\n"
    ).encode()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """The status and the headers (lower-cased names) of a response head."""
    assert head.endswith(b"\r\n\r\n"), head
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def hash_body(reader: aiozc.ZCStreamReader, length: int, chunk: int) -> str:
    """Read ``length`` bytes with ``readexactly_view`` in ``chunk``-sized
    pieces, each released once hashed."""
    hasher = hashlib.sha256()
    left = length
    while left:
        n = min(left, chunk)
        with await reader.readexactly_view(n) as view:
            assert len(view) == n and view.readonly
            hasher.update(view)
        left -= n
    return hasher.hexdigest()


@pytest.mark.asyncio
async def test_get_file(nginx: Nginx, config: ZCConfig, policy: str) -> None:
    """One GET with Connection: close; the body read in 1 MiB views."""

    async def main() -> tuple[str, int, Any]:
        reader, writer = await aiozc.open_connection("127.0.0.1", nginx.port, config=config)
        try:
            writer.write(get(nginx.path))
            head = await reader.readuntil(b"\r\n\r\n")
            status, headers = parse_head(head)
            assert status == 200, head
            assert int(headers["content-length"]) == nginx.file.size
            digest = await hash_body(reader, nginx.file.size, CHUNK)
            # Connection: close: nothing after the body, then EOF.
            assert await reader.read() == b""
            assert reader.at_eof()
            return digest, len(head), reader.stats
        finally:
            await close_writer(writer)

    digest, head_size, stats = await main()
    assert digest == nginx.file.sha256
    check_stats(stats, policy, head_size + nginx.file.size)


@pytest.mark.asyncio
async def test_pipelined_keep_alive(nginx: Nginx, config: ZCConfig, policy: str) -> None:
    """Four requests in one write on a keep-alive connection: an unaligned
    range read in odd-sized views, a larger range as one view, the whole
    file as one view (larger than ``max_pinned_bytes``), then a small file.
    Each response's head follows the previous body in the same stream, so
    the reader must stop every body exactly at its end."""
    size = nginx.file.size
    # (first byte, last byte + 1 or None for the whole file, view size or None for one view)
    parts: list[tuple[int, int | None, int | None]] = [
        (4097, 4097 + 3 * MiB + 5, 256 * 1024 + 3),
        (5 * MiB + 1, 13 * MiB + 8, None),
        (0, None, None),
    ]
    requests = b"".join(
        get(nginx.path, close=False,
            extra="" if stop is None else f"Range: bytes={start}-{stop - 1}\r\n")
        for start, stop, _ in parts
    ) + get("/ping.txt", close=True)

    async def main() -> tuple[list[str], int, Any]:
        reader, writer = await aiozc.open_connection("127.0.0.1", nginx.port, config=config)
        total = 0
        digests = []
        try:
            writer.write(requests)
            for start, stop, chunk in parts:
                head = await reader.readuntil(b"\r\n\r\n")
                status, headers = parse_head(head)
                if stop is None:
                    assert status == 200, head
                    length = size
                else:
                    assert status == 206, head
                    assert headers["content-range"] == f"bytes {start}-{stop - 1}/{size}"
                    length = stop - start
                assert int(headers["content-length"]) == length
                digests.append(await hash_body(reader, length, chunk or length))
                total += len(head) + length

            head = await reader.readuntil(b"\r\n\r\n")
            status, headers = parse_head(head)
            assert status == 200 and headers["content-length"] == "5", head
            with await reader.readexactly_view(5) as body:
                assert bytes(body) == b"pong\n"
            total += len(head) + 5

            assert await reader.read() == b""
            return digests, total, reader.stats
        finally:
            await close_writer(writer)

    digests, total, stats = await main()
    assert digests == [nginx.file.slice_sha256(start, stop or size) for start, stop, _ in parts]
    check_stats(stats, policy, total)


@pytest.mark.anyio
async def test_get_file_anyio(nginx: Nginx, config: ZCConfig, policy: str) -> None:
    """The same GET through ``aiozc.anyio.connect_tcp``: the head gathered
    from ``receive_view``, the body read with ``receive_exactly_view``."""
    with anyio.fail_after(60):
        async with await aiozc.anyio.connect_tcp(
            "127.0.0.1", nginx.port, config=config
        ) as stream:
            await stream.send(get(nginx.path))
            received = bytearray()
            while (end := received.find(b"\r\n\r\n")) < 0:
                with await stream.receive_view() as view:
                    received += view
            head = bytes(received[: end + 4])
            status, headers = parse_head(head)
            assert status == 200, head
            assert int(headers["content-length"]) == nginx.file.size

            hasher = hashlib.sha256(received[end + 4 :])  # body bytes that came with the head
            left = nginx.file.size - (len(received) - end - 4)
            assert left >= 0
            while left:
                n = min(left, CHUNK)
                with await stream.receive_exactly_view(n) as view:
                    assert len(view) == n and view.readonly
                    hasher.update(view)
                left -= n
            with pytest.raises(anyio.EndOfStream):
                await stream.receive_view()
            stats = stream.stats

    assert hasher.hexdigest() == nginx.file.sha256
    check_stats(stats, policy, len(head) + nginx.file.size)
