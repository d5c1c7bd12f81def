"""Hostile peers through aiozc.anyio (ZCSocketStream), on asyncio, uvloop and trio.

The same faults as test_peers.py, through anyio's stream API: a reset in
the middle of a frame, a peer SIGKILLed mid-stream, a peer that vanishes
behind a cut link, a half-close both ways, a one-byte trickle and a 64 MiB
burst into a tiny receive buffer.  Every case runs on the three backends
and over the three links; every byte is checked against the peer's stream.
"""

from __future__ import annotations

import hashlib
import socket
import time
from typing import Any

import anyio
import anyio.to_thread
import pytest

from aiozc import ZCConfig
from aiozc.anyio import ZCSocketStream

from ._harness import (
    LONG,
    Checker,
    Link,
    MiB,
    PeerProcess,
    PeerThread,
    Stream,
    connect_blocking,
    finish,
    link_down,
    link_up,
    reset,
    send_stream,
)
from .conftest import Tally
from .test_peers import BURST, FRAME, assert_mapped, trickle

pytestmark = pytest.mark.anyio

ALWAYS = ZCConfig(zerocopy="always")


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


async def open_stream(link: Link, port: int, *, rcvbuf: int | None = None,
                      config: ZCConfig = ALWAYS) -> ZCSocketStream:
    sock = await anyio.to_thread.run_sync(
        lambda: connect_blocking(link, port, rcvbuf=rcvbuf))
    return await ZCSocketStream.from_socket(sock, config=config)


async def join(peer: PeerThread) -> Any:
    return await anyio.to_thread.run_sync(peer.join)


async def drain(stream: ZCSocketStream, checker: Checker, stall: float = 10) -> None:
    """receive_view until EndOfStream, checking every byte."""
    while True:
        try:
            with anyio.fail_after(stall):
                view = await stream.receive_view(1 << 20)
        except anyio.EndOfStream:
            return
        assert view.readonly
        checker.feed(view)
        view.release()


async def test_reset_mid_frame(link: Link, tally: Tally) -> None:
    """Frames up to the reset, then BrokenResourceError; the partial frame's
    bytes stay readable (anyio's contract), and nothing else is lost."""
    frames = 20
    total = frames * FRAME + FRAME // 2

    def serve(conn: socket.socket) -> None:
        send_stream(conn, 71, total)  # all acked: in our socket before the RST
        reset(conn)

    peer = PeerThread(link, serve).start()
    checker = Checker(71)
    async with await open_stream(link, peer.port) as stream:
        with pytest.raises(anyio.BrokenResourceError) as info:
            while True:
                with await stream.receive_exactly_view(FRAME) as view:
                    checker.feed(view)
        assert isinstance(info.value.__cause__, ConnectionResetError)
        # The frame cut by the reset: its bytes, then the error again.
        with pytest.raises(anyio.BrokenResourceError):
            while True:
                with await stream.receive_view() as view:
                    checker.feed(view)
        stats = stream.stats
    await join(peer)
    checker.check(total)
    assert_mapped(link, stats)
    tally.verified(total, faults=1)


async def test_killed_mid_stream(link: Link, tally: Tally) -> None:
    peer = await anyio.to_thread.run_sync(PeerProcess, link, 72)
    checker = Checker(72)
    try:
        async with await open_stream(link, peer.port) as stream:
            await stream.send(b"never read" * 10_000)
            while checker.received < 2 * MiB:
                with await stream.receive_view(1 << 20) as view:
                    checker.feed(view)
            await anyio.to_thread.run_sync(peer.kill)
            with pytest.raises(anyio.BrokenResourceError) as info:
                await drain(stream, checker)
            assert isinstance(info.value.__cause__, ConnectionResetError)
    finally:
        await anyio.to_thread.run_sync(peer.kill)
    checker.check()
    tally.verified(checker.received, faults=1)


async def test_vanished_peer(veth_link: Link, tally: Tally) -> None:
    """SIGKILL behind a cut link: the application's silence timeout fires,
    aclose() returns at once, nothing leaks."""
    link = veth_link
    total = 4 * MiB + 99
    peer = await anyio.to_thread.run_sync(PeerProcess, link, 73, "--limit", str(total))
    checker = Checker(73)
    try:
        async with await open_stream(link, peer.port) as stream:
            async with anyio.create_task_group() as tg:
                done = anyio.Event()

                async def wait_and_cut() -> None:
                    await anyio.to_thread.run_sync(peer.wait_for, "done")
                    done.set()  # every byte is in our socket: none will follow
                    await anyio.to_thread.run_sync(link_down, link)
                    await anyio.to_thread.run_sync(peer.kill)

                tg.start_soon(wait_and_cut)
                # The application's own timeout: 0.5 s of silence, counted
                # once the peer has sent everything (before that, a loaded
                # machine may keep the peer's process off the CPU as long).
                while True:
                    with anyio.move_on_after(0.5) as silence:
                        view = await stream.receive_view(1 << 20)
                        checker.feed(view)
                        view.release()
                    if silence.cancelled_caught and done.is_set():
                        break
            await stream.send(b"are you there?")
            started = time.monotonic()
        # A close that waited on the vanished peer would take TCP's
        # retransmission timeouts (minutes): seconds of slack for a loaded
        # machine still tell the two apart.
        assert time.monotonic() - started < 5
    finally:
        await anyio.to_thread.run_sync(peer.kill)
        await anyio.to_thread.run_sync(link_up, link)
    checker.check(total)
    tally.verified(total, faults=1)


async def test_we_half_close_first(link: Link, tally: Tally) -> None:
    """We send a request and EOF; the peer answers after our FIN."""
    total = 8 * MiB + 1

    def serve(conn: socket.socket) -> None:
        request = b""
        while chunk := conn.recv(1024):  # until our FIN
            request += chunk
        assert request == b"go"
        send_stream(conn, 74, total)
        conn.shutdown(socket.SHUT_WR)

    peer = PeerThread(link, serve).start()
    checker = Checker(74)
    async with await open_stream(link, peer.port) as stream:
        await stream.send(b"go")
        await stream.send_eof()
        await drain(stream, checker)
        stats = stream.stats
    await join(peer)
    checker.check(total)
    assert_mapped(link, stats)
    tally.verified(total, faults=1)


async def test_peer_half_closes_first(link: Link, tally: Tally) -> None:
    """The peer sends and shuts its side, then waits for our reply."""
    total = 8 * MiB + 2

    def serve(conn: socket.socket) -> None:
        digest = send_stream(conn, 77, total)
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(1024):
            reply += chunk
        assert reply == digest.encode(), reply

    peer = PeerThread(link, serve).start()
    checker = Checker(77)
    hasher = hashlib.sha256()
    async with await open_stream(link, peer.port) as stream:
        while True:
            try:
                view = await stream.receive_view(1 << 20)
            except anyio.EndOfStream:
                break
            checker.feed(view)
            hasher.update(view)
            view.release()
        await stream.send(hasher.hexdigest().encode())
    await join(peer)  # the peer checked the reply
    checker.check(total)
    tally.verified(total, faults=1)


async def test_trickle_then_frames(link: Link, tally: Tally) -> None:
    size = 3000
    count = 4 if not LONG else 20
    flood = 4 * MiB

    def serve(conn: socket.socket) -> None:
        from aiozc.testing import ZeroCopySender

        stream = Stream(75)
        trickle(conn, stream, size * count)
        sender = ZeroCopySender(conn)
        sender.send(stream.take(flood))
        sender.flush()
        finish(conn)

    peer = PeerThread(link, serve).start()
    checker = Checker(75)
    async with await open_stream(link, peer.port) as stream:
        for _ in range(count):
            with await stream.receive_exactly_view(size) as view:
                checker.feed(view)
        await drain(stream, checker)
        stats = stream.stats
    await join(peer)
    checker.check(size * count + flood)
    assert_mapped(link, stats)
    tally.verified(size * count + flood, faults=1)


async def test_burst_into_a_tiny_receive_buffer(link: Link, tally: Tally) -> None:
    burst = BURST // 4  # x3 backends: 16 MiB each keeps the suite short

    def serve(conn: socket.socket) -> None:
        from aiozc.testing import ZeroCopySender

        sender = ZeroCopySender(conn)
        sender.send(Stream(76).take(burst))
        sender.flush(120)
        finish(conn)

    peer = PeerThread(link, serve).start()
    checker = Checker(76)
    async with await open_stream(link, peer.port, rcvbuf=16 * 1024) as stream:
        await drain(stream, checker)
    await join(peer)
    checker.check(burst)
    tally.verified(burst, faults=1)
