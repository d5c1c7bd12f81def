"""aiozc servers receiving from socat over loopback.

socat connects to an aiozc server and sends either a file (``FILE:``) or
its standard input, which the test feeds slowly and in uneven pieces from
a thread: how the stream is cut into reads, writes and segments is up to
socat and the kernel, not aiozc.  The server hashes what it receives until
EOF; the hash and the byte count are compared with what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import subprocess
import threading
import time
from typing import IO, Any

import pytest

import aiozc
from aiozc import ZCConfig, ZCProtocol, ZCStats

from .conftest import KiB, MiB, BigFile, check_stats

#: How long socat may take to send everything.
SEND_TIMEOUT = 30.0


class HashSink(ZCProtocol):
    """Hashes every view, releases it, and reports at EOF."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.received = 0
        self.transport: Any = None
        self.done: asyncio.Future[ZCStats] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        with data:
            assert data.readonly
            self.hasher.update(data)
            self.received += len(data)

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(self.transport.stats)
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed before EOF"))


def spawn(argv: list[str], stdin: int | IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=stdin, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


async def wait_exit(proc: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    """socat's exit status and stderr; it is killed if it takes too long."""
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, proc.wait, SEND_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stderr is not None
        with proc.stderr:
            err = proc.stderr.read()
    return proc.returncode, err


@pytest.mark.asyncio
async def test_file_to_protocol(socat: str, big_file: BigFile,
                          config: ZCConfig, policy: str) -> None:
    """``socat -u FILE:big.bin TCP:...`` into a ZCProtocol server."""

    async def main() -> tuple[str, int, ZCStats, int, bytes]:
        sinks: list[HashSink] = []

        def factory() -> HashSink:
            sinks.append(HashSink())
            return sinks[-1]

        server = await aiozc.create_server(factory, "127.0.0.1", 0, config=config)
        async with server:
            port = server.sockets[0].getsockname()[1]
            proc = spawn([socat, "-u", f"FILE:{big_file.path}", f"TCP:127.0.0.1:{port}"],
                         subprocess.DEVNULL)
            status, err = await wait_exit(proc)
            assert len(sinks) == 1
            stats = await asyncio.wait_for(sinks[0].done, SEND_TIMEOUT)
            return sinks[0].hasher.hexdigest(), sinks[0].received, stats, status, err

    digest, received, stats, status, err = await main()
    assert status == 0, err
    assert received == big_file.size
    assert digest == big_file.sha256
    check_stats(stats, policy, big_file.size)


def feed_slowly(pipe: IO[bytes], data: bytes, seed: int, errors: list[BaseException]) -> None:
    """Write ``data`` in uneven pieces (1 byte to 192 KiB) with short pauses."""
    rnd = random.Random(seed)
    view = memoryview(data)
    try:
        while view:
            n = min(len(view), rnd.choice([1, 3, 100, 1460, 4096, 8193, 65536, 192 * KiB]))
            pipe.write(view[:n])
            pipe.flush()
            view = view[n:]
            if rnd.random() < 0.2:
                time.sleep(rnd.choice([0.0005, 0.002, 0.005]))
    except BaseException as exc:  # reported by the test
        errors.append(exc)
    finally:
        with contextlib.suppress(OSError):
            pipe.close()  # EOF: socat shuts down its side


@pytest.mark.asyncio
async def test_slow_pipe_to_streams(socat: str, config: ZCConfig, policy: str) -> None:
    """socat relaying a pipe the test feeds in uneven, paused pieces, into an
    ``aiozc.start_server`` reader that takes views of assorted sizes."""
    data = random.Random(77).randbytes(6 * MiB + 12345)

    async def main() -> tuple[str, int, ZCStats | None, int, bytes]:
        loop = asyncio.get_running_loop()
        result: asyncio.Future[tuple[str, int, ZCStats | None]] = loop.create_future()
        connections = 0

        async def handle(reader: aiozc.ZCStreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            try:
                rnd = random.Random(5)
                hasher = hashlib.sha256()
                received = 0
                while True:
                    n = rnd.choice([1, 7, 1000, 4096, 65537, 300_000, MiB])
                    try:
                        view = await reader.readexactly_view(n)
                    except asyncio.IncompleteReadError as exc:
                        hasher.update(exc.partial)
                        received += len(exc.partial)
                        break
                    with view:
                        assert len(view) == n and view.readonly
                        hasher.update(view)
                        received += n
                assert reader.at_eof()
                if not result.done():
                    result.set_result((hasher.hexdigest(), received, reader.stats))
            except BaseException as exc:
                if not result.done():
                    result.set_exception(exc)
                raise
            finally:
                writer.close()

        server = await aiozc.start_server(handle, "127.0.0.1", 0, config=config)
        async with server:
            port = server.sockets[0].getsockname()[1]
            proc = spawn([socat, "-u", "STDIN", f"TCP:127.0.0.1:{port},nodelay"],
                         subprocess.PIPE)
            assert proc.stdin is not None
            errors: list[BaseException] = []
            feeder = threading.Thread(target=feed_slowly, args=(proc.stdin, data, 3, errors),
                                      daemon=True)
            feeder.start()
            try:
                status, err = await wait_exit(proc)
            finally:
                await loop.run_in_executor(None, feeder.join, SEND_TIMEOUT)
            assert not feeder.is_alive(), "the feeder thread hung"
            assert not errors, errors
            digest, received, stats = await asyncio.wait_for(result, SEND_TIMEOUT)
            assert connections == 1
            return digest, received, stats, status, err

    digest, received, stats, status, err = await main()
    assert status == 0, err
    assert received == len(data)
    assert digest == hashlib.sha256(data).hexdigest()
    check_stats(stats, policy, len(data))
