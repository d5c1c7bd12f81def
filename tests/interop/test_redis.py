"""aiozc reading pipelined GET replies from redis-server over loopback.

Values of assorted sizes (empty to 16 MiB, random bytes) are stored in a
redis-server of the suite's own, then fetched with several GETs in one
write through aiozc's stream reader.  The replies are parsed with a minimal
RESP reader on the view API: ``readuntil_view(b"\\r\\n")`` for the
``$<len>`` header, ``readexactly_view(len + 2)`` for the bulk string and
its CRLF.  Every value is checked by sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections.abc import Iterator

import pytest

import aiozc
from aiozc import ZCConfig
from support import loop_kind

from .conftest import KiB, MiB, BlockingRedis, Redis, check_stats, resp_command

SIZES = {
    b"empty": 0,
    b"1k": 1 * KiB,
    b"page+1": 4097,
    b"1m": 1 * MiB,
    b"3m+1": 3 * MiB + 1,
    b"16m": 16 * MiB,
}

#: One write of GETs: large and small values interleaved, a missing key, and
#: the big one twice so that a large reply follows a tiny one mid-stream.
ORDER = [b"16m", b"1k", b"missing", b"1m", b"empty", b"page+1", b"3m+1", b"1k", b"16m"]


def value_of(name: bytes, seed: int) -> bytes:
    return random.Random(seed * 1000 + len(name) * 31 + sum(name)).randbytes(SIZES[name])


def sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def stored(redis: Redis) -> Iterator[dict[bytes, str]]:
    """The values, SET through a plain blocking socket; their hashes by key."""
    hashes = {}
    with BlockingRedis(redis.port) as client:
        for name in SIZES:
            value = value_of(name, seed=1)
            key = b"interop:get:" + name
            assert client.call(b"SET", key, value) == b"OK"
            hashes[key] = sha(value)
        client.call(b"DEL", b"interop:get:missing")
    try:
        yield hashes
    finally:
        with BlockingRedis(redis.port) as client:
            client.call(b"DEL", *hashes)


def reply_size(name: bytes) -> int:
    """Bytes of the reply to GET of ``name``: ``$<len>\r\n<value>\r\n``
    or the nil reply ``$-1\r\n``."""
    n = SIZES.get(name)
    return len(b"$-1\r\n") if n is None else len(b"$%d\r\n" % n) + n + 2


class RespError(Exception):
    pass


async def read_bulk(reader: aiozc.ZCStreamReader) -> tuple[str | None, int]:
    """One bulk-string reply: (sha256 of the value, or None for a nil reply;
    bytes consumed)."""
    with await reader.readuntil_view(b"\r\n") as header:
        consumed = len(header)
        kind = bytes(header[:1])
        text = bytes(header[1:-2])
    if kind == b"-":
        raise RespError(text.decode(errors="replace"))
    assert kind == b"$", (kind, text)
    n = int(text)
    if n < 0:
        return None, consumed
    with await reader.readexactly_view(n + 2) as body:
        assert len(body) == n + 2 and body.readonly
        with body[n:] as crlf:
            assert bytes(crlf) == b"\r\n"
        with body[:n] as value:
            digest = sha(value)
    return digest, consumed + n + 2


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@pytest.mark.asyncio
async def test_pipelined_gets(redis: Redis, stored: dict[bytes, str],
                        config: ZCConfig, policy: str) -> None:
    keys = [b"interop:get:" + name for name in ORDER]
    request = b"".join(resp_command(b"GET", key) for key in keys)

    async def main() -> tuple[list[str | None], int, object]:
        reader, writer = await aiozc.open_connection("127.0.0.1", redis.port, config=config)
        try:
            writer.write(request)
            await writer.drain()
            digests = []
            total = 0
            for _ in keys:
                digest, consumed = await read_bulk(reader)
                digests.append(digest)
                total += consumed
            # Nothing more was sent: QUIT gets +OK, then redis closes.
            writer.write(resp_command(b"QUIT"))
            assert await reader.readuntil(b"\r\n") == b"+OK\r\n"
            total += 5
            assert await reader.read() == b""
            return digests, total, reader.stats
        finally:
            await close_writer(writer)

    digests, total, stats = await main()
    assert digests == [stored.get(key) for key in keys]
    assert total == sum(map(reply_size, ORDER)) + len(b"+OK\r\n")
    check_stats(stats, policy, total)


@pytest.mark.asyncio
async def test_set_through_aiozc_then_get(redis: Redis, config: ZCConfig, policy: str) -> None:
    """SETs written by aiozc's writer (its MSG_ZEROCOPY send path for large
    bytes), GETs read back pipelined on the same connection, and the stored
    values checked again through a plain blocking socket."""
    prefix = f"interop:set:{loop_kind()}:{policy}:".encode()
    values = {prefix + name: value_of(name, seed=2) for name in SIZES}
    sets = [resp_command(b"SET", key, value) for key, value in values.items()]
    gets = b"".join(resp_command(b"GET", key) for key in values)

    async def main() -> tuple[list[str | None], object]:
        reader, writer = await aiozc.open_connection("127.0.0.1", redis.port, config=config)
        try:
            for command in sets:
                writer.write(command)
            await writer.drain()
            for _ in values:
                assert await reader.readuntil(b"\r\n") == b"+OK\r\n"
            writer.write(gets)
            digests = [(await read_bulk(reader))[0] for _ in values]
            return digests, writer.transport.get_extra_info("aiozc_stats")
        finally:
            await close_writer(writer)

    try:
        digests, stats = await main()
        assert digests == [sha(value) for value in values.values()]
        with BlockingRedis(redis.port) as client:
            for key, value in values.items():
                stored = client.call(b"GET", key)
                assert stored is not None and sha(stored) == sha(value), key
        # Every byte written was sent (redis answered the last GET), by one
        # path or the other.
        sent = sum(map(len, sets)) + len(gets)
        assert stats.bytes_sent_zerocopy + stats.bytes_sent_copied == sent, stats
        assert stats.views_outstanding == 0
    finally:
        with BlockingRedis(redis.port) as client:
            client.call(b"DEL", *values)
