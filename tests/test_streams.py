"""aiozc streams: ZCStreamReader, open_connection, start_server.

Every test runs on the stdlib loop and on uvloop.  The bytes API is checked
against asyncio's own StreamReader on the same input; the view API against
the bytes sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import random
import socket
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import aiozc
import aiozc.testing
from aiozc import ZCConfig
from support import Peer, payload, sha

MiB = 1 << 20
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


Reader = aiozc.ZCStreamReader


async def with_reader(peer: Peer, body: Callable[[Reader], Awaitable[Any]],
                      config: ZCConfig | None = None) -> Any:
    """Connect to ``peer`` with aiozc streams and run ``body`` on the reader."""
    peer.start()
    reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, config=config)
    peer.connected.set()
    try:
        return await body(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):  # a reset is re-raised here
            await writer.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, peer.join)


async def connected_by_hand(
    config: ZCConfig | None = None,
) -> tuple[Reader, asyncio.StreamWriter, socket.socket]:
    """An aiozc streams connection to a plain socket the test drives itself."""
    loop = asyncio.get_running_loop()
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        reader, writer = await aiozc.open_connection(
            "127.0.0.1", ls.getsockname()[1], config=config)
        peer, _ = await loop.run_in_executor(None, ls.accept)
    return reader, writer, peer


class TestIntegrity:
    """Every byte, through both APIs, from both kinds of peer."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("zerocopy_peer", [True, False])
    @pytest.mark.parametrize("api", ["bytes", "views"])
    async def test_random_reads(self, zerocopy_peer: bool, api: str) -> None:
        data = payload(24 * MiB + 11, seed=21)

        async def body(reader: Reader) -> tuple[str, Any]:
            rnd = random.Random(5)
            hasher = hashlib.sha256()
            while True:
                n = rnd.choice([1, 7, 4096, 32768, 100_000, 1 << 20])
                try:
                    if api == "bytes":
                        hasher.update(await reader.readexactly(n))
                    else:
                        with await reader.readexactly_view(n) as view:
                            assert view.readonly
                            hasher.update(view)
                except asyncio.IncompleteReadError as exc:
                    hasher.update(exc.partial)
                    break
            assert reader.at_eof()
            return hasher.hexdigest(), reader.stats

        digest, stats = await with_reader(Peer(data, zerocopy=zerocopy_peer), body,
                                        ZCConfig(zerocopy="always"))
        assert digest == sha(data)
        assert stats.bytes_received == len(data)
        if zerocopy_peer:
            assert stats.mapped_fraction > 0.8, stats
        else:
            assert stats.bytes_mapped == 0

    @pytest.mark.asyncio
    async def test_frames_mostly_zero_copy(self) -> None:
        """32 KiB frames cut from 256 KiB receives: few need assembling."""
        frames = [payload(32 * 1024, seed=i) for i in range(256)]
        data = b"".join(len(f).to_bytes(4, "big") + f for f in frames)

        async def body(reader: Reader) -> Any:
            for frame in frames:
                size = int.from_bytes(await reader.readexactly_view(4), "big")
                with await reader.readexactly_view(size) as view:
                    assert view == frame
            return reader.stats

        stats = await with_reader(Peer(data, zerocopy=False, max_write=1 << 22), body,
                                ZCConfig(zerocopy="never"))
        assert stats.bytes_received == len(data)
        # A frame is assembled only when it straddles two receives.
        assert stats.bytes_assembled < 0.3 * len(data), stats

    @pytest.mark.asyncio
    async def test_readuntil_view_and_read_view(self) -> None:
        lines = [payload(random.Random(i).randint(0, 5000), seed=i).replace(b"\n", b"")
                 + b"\n" for i in range(500)]
        data = b"".join(lines)

        async def body(reader: Reader) -> None:
            for line in lines[:250]:
                with await reader.readuntil_view(b"\n") as view:
                    assert view == line
            rest = bytearray()
            while chunk := await reader.read_view(10_000):
                assert len(chunk) <= 10_000
                rest += chunk
                chunk.release()
            assert bytes(rest) == b"".join(lines[250:])

        await with_reader(Peer(data), body, ZCConfig(zerocopy="always"))


class TestAsyncioParity:
    """The bytes API behaves exactly as asyncio.StreamReader on the same input."""

    SCRIPT: list[tuple[str, Any]] = [
        ("readline", None), ("readexactly", 5), ("read", 3), ("readuntil", b"--"),
        ("readline", None), ("read", 0), ("readuntil", b"\r\n"), ("readexactly", 0),
        ("readline", None), ("read", -1), ("readline", None), ("read", 10),
    ]
    DATA = b"first line\nabcdefghij--second\n\r\nthird line\nand the rest, no newline"

    async def _play(self, reader: asyncio.StreamReader) -> list[Any]:
        out: list[Any] = []
        for op, arg in self.SCRIPT:
            try:
                result = await (getattr(reader, op)() if arg is None
                                else getattr(reader, op)(arg))
                out.append((op, result))
            except Exception as exc:  # compared, not swallowed
                out.append((op, type(exc).__name__, getattr(exc, "partial", None)))
        out.append(("at_eof", reader.at_eof()))
        return out

    @pytest.mark.asyncio
    async def test_same_results(self) -> None:
        async def main() -> None:
            results = []
            for opener in (asyncio.open_connection, aiozc.open_connection):
                peer = Peer(self.DATA, zerocopy=False, max_write=7).start()
                reader, writer = await opener("127.0.0.1", peer.port)
                results.append(await self._play(reader))
                writer.close()
                await writer.wait_closed()
                await asyncio.get_running_loop().run_in_executor(None, peer.join)
            assert results[0] == results[1]

        await main()

    @pytest.mark.asyncio
    async def test_iteration(self) -> None:
        data = b"".join(b"line %d\n" % i for i in range(300)) + b"tail"

        async def main() -> None:
            results = []
            for opener in (asyncio.open_connection, aiozc.open_connection):
                peer = Peer(data, zerocopy=False, max_write=50).start()
                reader, writer = await opener("127.0.0.1", peer.port, limit=100)
                results.append([line async for line in reader])
                writer.close()
                await writer.wait_closed()
                await asyncio.get_running_loop().run_in_executor(None, peer.join)
            assert results[0] == results[1]
            assert results[1][-1] == b"tail" and len(results[1]) == 301

        await main()

    @pytest.mark.asyncio
    async def test_limit_overrun(self) -> None:
        """A line longer than the limit: ValueError, as asyncio (what is
        dropped with it depends on what was buffered, in asyncio too)."""
        data = b"short\n" + b"x" * 1000 + b"\nlast\n"

        async def body(reader: Reader) -> None:
            assert await reader.readline() == b"short\n"
            with pytest.raises(ValueError, match="limit"):
                await reader.readline()
            with pytest.raises(asyncio.LimitOverrunError):
                await reader.readuntil_view(b"nothere")

        async def main() -> None:
            peer = Peer(data + b"y" * 1000, zerocopy=False).start()
            reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, limit=100)
            await asyncio.sleep(0.1)  # let the whole input arrive
            await body(reader)
            writer.close()
            await writer.wait_closed()
            await asyncio.get_running_loop().run_in_executor(None, peer.join)

        await main()


class TestFaults:
    @pytest.mark.asyncio
    async def test_eof_mid_frame(self) -> None:
        data = payload(3 * MiB + 100)

        async def body(reader: Reader) -> None:
            with await reader.readexactly_view(3 * MiB) as view:
                assert view == data[:3 * MiB]
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly_view(4096)
            assert info.value.partial == data[3 * MiB:]
            assert info.value.expected == 4096
            assert reader.at_eof()

        await with_reader(Peer(data, finish="close"), body, ZCConfig(zerocopy="always"))

    @pytest.mark.asyncio
    async def test_peer_reset(self) -> None:
        data = payload(2 * MiB)

        async def body(reader: Reader) -> None:
            got = bytearray()
            with pytest.raises(ConnectionResetError):
                while True:
                    with await reader.readexactly_view(65536) as view:
                        got += view
            assert data.startswith(bytes(got))

        await with_reader(Peer(data, finish="reset"), body, ZCConfig(zerocopy="always"))

    @pytest.mark.asyncio
    @pytest.mark.parametrize("zerocopy_peer", [True, False])
    async def test_header_wait_cancelled(self, zerocopy_peer: bool) -> None:
        # A small read waits in its own loop (no frame reader): cancelled
        # with nothing queued, then with half a header queued, the reader
        # keeps those bytes, reads on, and the 2 MiB body after the header,
        # read in small pieces (each one such a wait), arrives intact:
        # mapped pages from a MSG_ZEROCOPY peer, copies from a plain one.
        # (What it guards is the bytes and the reader's state; a read hint
        # left set would only cost speed.)
        body = payload(2 * MiB, seed=7)
        loop = asyncio.get_running_loop()
        config = ZCConfig(zerocopy="always") if zerocopy_peer else None
        reader, writer, peer = await connected_by_hand(config)
        with peer:
            sender = aiozc.testing.ZeroCopySender(peer, zerocopy=zerocopy_peer)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(4), 0.05)
            frame = len(body).to_bytes(4, "big") + body
            sender.send(frame[:2])
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(4), 0.05)

            def send_rest() -> None:
                sender.send(frame[2:])
                sender.flush()

            sending = loop.run_in_executor(None, send_rest)
            size = int.from_bytes(await reader.readexactly(4), "big")
            assert size == len(body)
            hasher = hashlib.sha256()
            for _ in range(size // (64 * 1024)):
                with await reader.readexactly_view(64 * 1024) as view:
                    hasher.update(view)
            assert hasher.hexdigest() == sha(body)
            await sending
            if zerocopy_peer:
                assert reader.stats.bytes_mapped > 0
            peer.shutdown(socket.SHUT_WR)
            assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()

    @pytest.mark.asyncio
    @pytest.mark.parametrize("method", ["readexactly", "readexactly_view"])
    async def test_second_waiter_refused(self, method: str) -> None:
        # A second reader waiting while a short read waits is refused as
        # asyncio refuses it, and takes nothing from the first.
        reader, writer, peer = await connected_by_hand()
        with peer:
            first = asyncio.ensure_future(getattr(reader, method)(6))
            await asyncio.sleep(0.01)
            assert not first.done()
            with pytest.raises(RuntimeError, match="another coroutine is already waiting"):
                await getattr(reader, method)(2)
            peer.sendall(b"abcdef")
            got = await asyncio.wait_for(first, 5)
            assert bytes(got) == b"abcdef"
            if isinstance(got, memoryview):
                got.release()
            peer.sendall(b"gh")
            peer.shutdown(socket.SHUT_WR)
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await reader.readexactly(3)
            assert info.value.partial == b"gh"
        writer.close()
        await writer.wait_closed()

    @pytest.mark.asyncio
    async def test_views_outlive_the_connection(self) -> None:
        data = payload(4 * MiB)

        async def main() -> tuple[list[memoryview], Any]:
            peer = Peer(data).start()
            reader, writer = await aiozc.open_connection(
                "127.0.0.1", peer.port, config=ZCConfig(zerocopy="always"))
            views = [await reader.readexactly_view(MiB) for _ in range(4)]
            stats = reader.stats
            writer.close()
            await writer.wait_closed()
            await asyncio.get_running_loop().run_in_executor(None, peer.join)
            return views, stats

        views, stats = await main()
        assert stats.bytes_mapped > 0
        assert b"".join(views) == data  # after close, with the peer gone


class TestServer:
    @pytest.mark.asyncio
    async def test_rpc_example(self) -> None:
        rpc = load_example("rpc_streams")

        async def main() -> None:
            server = await rpc.serve(config=ZCConfig(zerocopy="always"))
            async with server:
                port = server.sockets[0].getsockname()[1]
                requests = [payload(32 * 1024, seed=i) for i in range(200)]
                replies = await rpc.call("127.0.0.1", port, requests)
                assert replies == [zlib.crc32(r) for r in requests]

        await main()

    @pytest.mark.asyncio
    async def test_start_server_echo_with_plain_client(self) -> None:
        async def handler(reader: Reader, writer: asyncio.StreamWriter) -> None:
            assert isinstance(reader, aiozc.ZCStreamReader)
            while line := await reader.readline():
                writer.write(line.upper())
            writer.close()

        async def main() -> None:
            server = await aiozc.start_server(handler, "127.0.0.1", 0)
            async with server:
                port = server.sockets[0].getsockname()[1]
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"hello\nworld\n")
                writer.write_eof()
                assert await reader.read() == b"HELLO\nWORLD\n"
                writer.close()
                await writer.wait_closed()

        await main()

    @pytest.mark.asyncio
    async def test_datagram_socket_refused(self) -> None:
        async def main() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                with pytest.raises(ValueError, match="stream socket"):
                    await aiozc.open_connection(sock=udp)

        await main()
