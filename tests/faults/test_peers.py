"""Hostile peers: resets mid-frame, SIGKILL, vanishing, half-closes,
one-byte trickles and 64 MiB bursts into a tiny receive buffer.

Every case runs on the stdlib loop and on uvloop (asyncio tests), over the three
links (``link``: veth MTU 1500, veth MTU 4148, loopback MTU 65536), against
a real peer in another network namespace where the link has one.  Every
byte received is compared with what the peer sent, at its offset
(``Checker``); a stall (no progress while the kernel holds unread bytes) is
reported as such.  Peers send with MSG_ZEROCOPY and the receiver uses
``zerocopy='always'``, so the mapped path runs wherever the link lets the
kernel map pages (asserted from the statistics on the 4148 and 65536 links).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
import time
from typing import Any

import pytest

import aiozc
from aiozc import ZCConfig, ZCProtocol, ZCTransport

from ._harness import (
    LONG,
    Checker,
    Link,
    MiB,
    PeerProcess,
    PeerThread,
    Stream,
    connect,
    describe_transport,
    finish,
    link_down,
    link_up,
    reset,
    send_stream,
    sha,
)
from .conftest import Tally

ALWAYS = ZCConfig(zerocopy="always")
BULK = (64 if LONG else 8) * MiB
BURST = (256 if LONG else 64) * MiB
FRAME = 100_003


def maps_pages(link: Link) -> bool:
    """Whether a MSG_ZEROCOPY peer's pages can be mapped over ``link``.

    MTU 1500 carries 1448 bytes of payload per packet, never a whole page.
    """
    return link.mtu >= 4096 + 52


class Verifier(ZCProtocol):
    """Checks every byte against stream ``seed``; records how the connection ends."""

    def __init__(self, seed: int, *, keep_open: bool = False) -> None:
        self.checker = Checker(seed)
        self.keep_open = keep_open
        self.transport: Any = None
        self.eof = False
        self.exc: BaseException | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def received(self) -> int:
        return self.checker.received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        assert isinstance(data, memoryview) and data.readonly
        self.checker.feed(data)
        data.release()

    def eof_received(self) -> bool:
        self.eof = True
        return self.keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        if not self.lost.done():
            self.lost.set_result(None)


async def until_lost(proto: Verifier, stall: float = 10.0, limit: float = 50.0) -> None:
    """Wait for connection_lost, failing on a stall or after ``limit`` seconds.

    A stall is ``stall`` seconds without a byte; the message gives the
    kernel's view of the socket (unread bytes, pending error, TCP state).
    """
    last, since, start = -1, time.monotonic(), time.monotonic()
    while not proto.lost.done():
        await asyncio.wait([proto.lost], timeout=0.2)
        now = time.monotonic()
        if proto.received != last:
            last, since = proto.received, now
        elif now - since > stall or now - start > limit:
            raise AssertionError(
                f"no progress for {now - since:.1f}s at {proto.received} bytes: "
                f"{describe_transport(proto.transport)}")


async def open_verifier(link: Link, peer: PeerThread, seed: int, config: ZCConfig = ALWAYS,
                        *, rcvbuf: int | None = None,
                        keep_open: bool = False) -> tuple[ZCTransport, Verifier]:
    sock = await connect(link, peer.port, rcvbuf=rcvbuf)
    transport, proto = await aiozc.create_connection(
        lambda: Verifier(seed, keep_open=keep_open), sock=sock, config=config)
    assert isinstance(transport, ZCTransport) and isinstance(proto, Verifier)
    return transport, proto


async def join(peer: PeerThread) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, peer.join)


def assert_mapped(link: Link, stats: aiozc.ZCStats) -> None:
    if maps_pages(link):
        assert stats.bytes_mapped > 0, f"nothing mapped over {link.name}: {stats}"


# -- resets --------------------------------------------------------------------------


class TestReset:
    """The peer resets (RST) in the middle of a frame."""

    @pytest.mark.asyncio
    async def test_views_up_to_the_reset(self, link: Link, tally: Tally) -> None:
        """Every byte the peer sent before its RST is delivered, then the reset."""
        frames = (40 if LONG else 20)
        total = frames * FRAME + FRAME // 2

        def serve(conn: socket.socket) -> None:
            # flush() returns once every buffer was released: each byte is
            # in the receiver's socket, so the RST comes after all of them.
            send_stream(conn, 11, total)
            reset(conn)

        async def main() -> tuple[Verifier, aiozc.ZCStats]:
            peer = PeerThread(link, serve).start()
            transport, proto = await open_verifier(link, peer, 11)
            await until_lost(proto)
            await join(peer)
            return proto, transport.stats

        proto, stats = await main()
        proto.checker.check(total)
        assert isinstance(proto.exc, ConnectionResetError), proto.exc
        assert not proto.eof
        assert_mapped(link, stats)
        tally.verified(total, faults=1)

    @pytest.mark.asyncio
    async def test_stream_reader_frames_then_reset(self, link: Link, tally: Tally) -> None:
        frames = (40 if LONG else 20)
        total = frames * FRAME + FRAME // 2

        def serve(conn: socket.socket) -> None:
            send_stream(conn, 12, total)
            reset(conn)

        async def main() -> int:
            peer = PeerThread(link, serve).start()
            sock = await connect(link, peer.port)
            reader, writer = await aiozc.open_connection(sock=sock, config=ALWAYS)
            stream = Stream(12)
            read = 0
            with pytest.raises(ConnectionResetError):
                while True:
                    with await reader.readexactly_view(FRAME) as view:
                        assert view == stream.take(FRAME), f"frame {read} corrupted"
                    read += 1
            # asyncio's semantics: frames still buffered when the reset was
            # seen are dropped with it; none is ever invented.
            assert read <= frames
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            await join(peer)
            return read

        read = await main()
        tally.verified(read * FRAME, faults=1)

    @pytest.mark.asyncio
    async def test_reset_while_paused(self, link: Link, tally: Tally) -> None:
        """A reset that arrives while the application paused reading loses
        none of the bytes queued before it."""
        total = 48 * 1024 + 5  # fits the receive window: all acked before the RST
        paused = threading.Event()

        def serve(conn: socket.socket) -> None:
            paused.wait(10)  # not a byte before the application paused
            send_stream(conn, 13, total)
            reset(conn)

        async def main() -> tuple[Verifier, aiozc.ZCStats]:
            peer = PeerThread(link, serve).start()
            transport, proto = await open_verifier(link, peer, 13)
            try:
                transport.pause_reading()
                paused.set()
                await join(peer)  # the RST has been sent
                await asyncio.sleep(0.1)
                assert not proto.lost.done() and proto.received == 0
                transport.resume_reading()
                await until_lost(proto)
            finally:
                transport.abort()
            return proto, transport.stats

        proto, stats = await main()
        proto.checker.check(total)
        assert isinstance(proto.exc, ConnectionResetError), proto.exc
        # The error came with the first mapping call while bytes were still
        # queued (deferred until they were delivered, Receiver.deferred_err).
        assert_mapped(link, stats)
        tally.verified(total, faults=1)


# -- SIGKILL -------------------------------------------------------------------------


class TestKilled:
    """The peer process is SIGKILLed: the kernel closes its socket for it."""

    @pytest.mark.asyncio
    async def test_killed_mid_stream(self, link: Link, tally: Tally) -> None:
        """Killed while sending, with bytes of ours unread: a reset.  Every
        byte that arrived is the peer's, in order."""

        async def main() -> tuple[Verifier, aiozc.ZCStats]:
            loop = asyncio.get_running_loop()
            peer = await loop.run_in_executor(None, PeerProcess, link, 21)
            try:
                sock = await connect(link, peer.port)
                transport, proto = await aiozc.create_connection(
                    lambda: Verifier(21), sock=sock, config=ALWAYS)
                assert isinstance(proto, Verifier) and isinstance(transport, ZCTransport)
                transport.write(b"never read" * 10_000)
                while proto.received < (4 if maps_pages(link) else 2) * MiB:
                    await asyncio.wait([proto.lost], timeout=0.01)
                    assert not proto.lost.done(), proto.exc
            finally:
                await loop.run_in_executor(None, peer.kill)
            await until_lost(proto)
            return proto, transport.stats

        proto, stats = await main()
        proto.checker.check()
        assert isinstance(proto.exc, ConnectionResetError), proto.exc
        assert_mapped(link, stats)
        tally.verified(proto.received, faults=1)

    @pytest.mark.asyncio
    async def test_killed_after_sending(self, link: Link, tally: Tally) -> None:
        """Killed once everything was sent, nothing of ours unread: a FIN,
        and every byte arrives."""
        total = BULK + 12345

        async def main() -> Verifier:
            loop = asyncio.get_running_loop()
            peer = await loop.run_in_executor(None, PeerProcess, link, 22, "--limit", str(total))
            try:
                sock = await connect(link, peer.port)
                _, proto = await aiozc.create_connection(
                    lambda: Verifier(22), sock=sock, config=ALWAYS)
                assert isinstance(proto, Verifier)
                await loop.run_in_executor(None, peer.wait_for, "done")
            finally:
                await loop.run_in_executor(None, peer.kill)
            await until_lost(proto)
            return proto

        proto = await main()
        proto.checker.check(total)
        assert proto.eof and proto.exc is None
        tally.verified(total, faults=1)


class TestVanished:
    """The peer is SIGKILLed while its link is down: no FIN, no RST ever
    arrives.  The application gives up after a silence and closes; nothing
    hangs, nothing leaks, every byte that arrived is right."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("api", ["protocol", "streams"])
    async def test_vanished_peer(self, veth_link: Link, tally: Tally, api: str) -> None:
        link = veth_link
        total = 4 * MiB + 77

        async def main() -> int:
            loop = asyncio.get_running_loop()
            peer = await loop.run_in_executor(None, PeerProcess, link, 23, "--limit", str(total))
            try:
                sock = await connect(link, peer.port)
                if api == "protocol":
                    transport, proto = await aiozc.create_connection(
                        lambda: Verifier(23), sock=sock, config=ALWAYS)
                    assert isinstance(proto, Verifier)
                    await loop.run_in_executor(None, peer.wait_for, "done")
                    await loop.run_in_executor(None, link_down, link)
                    await loop.run_in_executor(None, peer.kill)
                    # The application's own timeout: 0.5 s of silence.
                    transport.write(b"are you there?")  # unanswerable
                    while not proto.lost.done():
                        before = proto.received
                        await asyncio.wait([proto.lost], timeout=0.5)
                        if proto.received == before:
                            transport.abort()
                    await proto.lost
                    assert proto.exc is None and not proto.eof
                    proto.checker.check(total)
                    received = proto.received
                else:
                    reader, writer = await aiozc.open_connection(sock=sock, config=ALWAYS)
                    checker = Checker(23)
                    done = asyncio.Event()

                    async def read_until_silence() -> None:
                        # The application's own timeout: 0.5 s of silence,
                        # counted once the peer has sent everything (before
                        # that, a loaded machine may keep the peer's process
                        # off the CPU as long; a timed-out read loses nothing).
                        while True:
                            try:
                                view = await asyncio.wait_for(reader.read_view(1 << 20), 0.5)
                            except TimeoutError:
                                if done.is_set():
                                    return
                                continue
                            assert view, "EOF from a vanished peer"
                            checker.feed(view)
                            view.release()

                    reading = asyncio.create_task(read_until_silence())
                    await loop.run_in_executor(None, peer.wait_for, "done")
                    done.set()  # every byte is in our socket: none will follow
                    await loop.run_in_executor(None, link_down, link)
                    await loop.run_in_executor(None, peer.kill)
                    await reading
                    checker.check(total)
                    received = checker.received
                    writer.write(b"are you there?")
                    writer.close()
                    await asyncio.wait_for(writer.wait_closed(), 5)
            finally:
                await loop.run_in_executor(None, peer.kill)
                await loop.run_in_executor(None, link_up, link)
            return received

        received = await main()
        tally.verified(received, faults=1)


# -- half-close ----------------------------------------------------------------------


def _reply(data_len: int, digest: str) -> bytes:
    return f"{data_len} {digest}".encode()


class TestHalfClose:
    @pytest.mark.asyncio
    async def test_peer_half_closes_then_reads_our_reply(self, link: Link,
                                                   tally: Tally) -> None:
        """The peer sends, shuts its side (FIN), then waits for a reply: the
        receiver answers after EOF on the same connection."""
        total = BULK + 3

        def serve(conn: socket.socket) -> None:
            digest = send_stream(conn, 31, total)
            conn.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := conn.recv(1024):
                got += chunk
            assert got == _reply(total, digest), got

        class Replier(Verifier):
            def __init__(self, seed: int) -> None:
                super().__init__(seed)
                self.hasher = hashlib.sha256()

            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                self.hasher.update(data)
                super().data_received(data)

            def eof_received(self) -> bool:
                super().eof_received()
                self.transport.write(_reply(self.received, self.hasher.hexdigest()))
                self.transport.close()
                return True

        async def main() -> tuple[Verifier, aiozc.ZCStats]:
            peer = PeerThread(link, serve).start()
            sock = await connect(link, peer.port)
            transport, proto = await aiozc.create_connection(
                lambda: Replier(31), sock=sock, config=ALWAYS)
            assert isinstance(proto, Replier) and isinstance(transport, ZCTransport)
            await until_lost(proto)
            await join(peer)  # the peer checked our reply
            return proto, transport.stats

        proto, stats = await main()
        proto.checker.check(total)
        assert proto.eof and proto.exc is None
        assert_mapped(link, stats)
        tally.verified(total, faults=1)

    @pytest.mark.asyncio
    async def test_we_half_close_then_receive(self, link: Link, tally: Tally) -> None:
        """The receiver sends a request and shuts its side first; the peer
        answers after our FIN, and reading (mapping) goes on."""
        total = BULK + 5

        def serve(conn: socket.socket) -> str:
            request = b""
            while chunk := conn.recv(1024):  # until our FIN
                request += chunk
            assert request == b"send me %d" % total
            digest = send_stream(conn, 32, total)
            conn.shutdown(socket.SHUT_WR)
            return digest

        async def main() -> tuple[int, str, aiozc.ZCStats]:
            peer = PeerThread(link, serve).start()
            sock = await connect(link, peer.port)
            reader, writer = await aiozc.open_connection(sock=sock, config=ALWAYS)
            writer.write(b"send me %d" % total)
            writer.write_eof()
            hasher = hashlib.sha256()
            received = 0
            while view := await reader.read_view(1 << 20):
                hasher.update(view)
                received += len(view)
                view.release()
            stats = reader.stats
            assert stats is not None
            writer.close()
            await writer.wait_closed()
            assert await join(peer) == hasher.hexdigest()
            return received, hasher.hexdigest(), stats

        received, digest, stats = await main()
        assert received == total
        assert_mapped(link, stats)
        tally.verified(total, faults=1)


# -- trickle -------------------------------------------------------------------------


def trickle(conn: socket.socket, stream: Stream, n: int) -> str:
    """Send ``n`` bytes of ``stream`` one byte per send (TCP_NODELAY), with
    a pause every 512 bytes so that the receiver sees them separately."""
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    hasher = hashlib.sha256()
    for i in range(n):
        byte = stream.take(1)
        hasher.update(byte)
        conn.sendall(byte)
        if i % 512 == 511:
            time.sleep(0.001)
    return hasher.hexdigest()


class TestTrickle:
    TRICKLE = (64 if LONG else 12) * 1024

    @pytest.mark.asyncio
    async def test_one_byte_at_a_time_then_a_flood(self, link: Link, tally: Tally) -> None:
        """Thousands of one-byte segments, then a zerocopy flood: the
        receiver keeps every byte and maps again after the trickle."""
        flood = BULK

        def serve(conn: socket.socket) -> None:
            from aiozc.testing import ZeroCopySender

            stream = Stream(41)
            trickle(conn, stream, self.TRICKLE)
            sender = ZeroCopySender(conn)
            left = flood
            while left:
                piece = stream.take(min(left, MiB))
                sender.send(piece)
                left -= len(piece)
            sender.flush()
            finish(conn)

        async def main() -> tuple[Verifier, aiozc.ZCStats, int]:
            peer = PeerThread(link, serve).start()
            transport, proto = await open_verifier(link, peer, 41)
            while proto.received < self.TRICKLE:
                await asyncio.wait([proto.lost], timeout=0.01)
            calls_in_trickle = transport.stats.receive_calls
            await until_lost(proto)
            await join(peer)
            return proto, transport.stats, calls_in_trickle

        proto, stats, calls = await main()
        proto.checker.check(self.TRICKLE + flood)
        # The pauses alone make 24 separate arrivals; in practice hundreds.
        assert calls >= self.TRICKLE // 512, calls
        assert_mapped(link, stats)
        tally.verified(self.TRICKLE + flood, faults=1)

    @pytest.mark.asyncio
    async def test_frames_from_a_trickle(self, link: Link, tally: Tally) -> None:
        """A stream reader waiting for frames that arrive a byte at a time."""
        size = 3000
        count = self.TRICKLE // size

        def serve(conn: socket.socket) -> None:
            trickle(conn, Stream(42), size * count)
            finish(conn)

        async def main() -> None:
            peer = PeerThread(link, serve).start()
            sock = await connect(link, peer.port)
            reader, writer = await aiozc.open_connection(sock=sock, config=ALWAYS)
            expected = Stream(42)
            for i in range(count):
                with await reader.readexactly_view(size) as view:
                    assert view == expected.take(size), f"frame {i}"
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            await join(peer)

        await main()
        tally.verified(size * count, faults=1)


# -- bursts --------------------------------------------------------------------------


class TestBurst:
    @pytest.mark.asyncio
    async def test_64_mib_burst_into_a_tiny_receive_buffer(self, link: Link,
                                                     tally: Tally) -> None:
        """One 64 MiB send into SO_RCVBUF=16 KiB (32 KiB after the kernel
        doubles it).  (Smaller buffers stall TCP itself at MTU 1500: the
        window falls below one MSS and only persist probes get through, with
        plain recv() too.)"""

        def serve(conn: socket.socket) -> str:
            from aiozc.testing import ZeroCopySender

            data = Stream(51).take(BURST)
            sender = ZeroCopySender(conn)
            sender.send(data)  # one call: the whole burst
            sender.flush(120)
            finish(conn)
            return sha(data)

        async def main() -> tuple[Verifier, aiozc.ZCStats]:
            peer = PeerThread(link, serve).start()
            transport, proto = await open_verifier(link, peer, 51, rcvbuf=16 * 1024)
            assert transport.get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, socket.SO_RCVBUF) <= 32 * 1024
            await until_lost(proto, limit=100)
            await join(peer)
            return proto, transport.stats

        proto, stats = await main()
        proto.checker.check(BURST)
        assert proto.eof and proto.exc is None
        tally.verified(BURST, faults=1)
