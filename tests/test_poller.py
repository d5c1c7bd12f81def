"""aiozc's poller: how the sockets of a loop are watched for reading.

Up to ``DIRECT_MAX`` connections of a loop at a time are watched by the
loop (``add_reader``); on uvloop, every other one by the poller's own
epoll, level-triggered (aiozc/_poller.pyx).  ``TestPoller`` drives a
``Poller`` directly, over real socket pairs, on both loops.  ``TestCrowd``
runs transports with other connections beside them (``support.crowded``),
so that on uvloop the poller's epoll watches them, with peers sending with
MSG_ZEROCOPY and resets behind queued bytes: the faults whose handling
depends on how the loop reports errors.  (The transport and send suites
run their reset and completion tests both ways too.)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import aiozc
from aiozc import ZCConfig, ZCTransport
from aiozc._poller import DIRECT_MAX, Poller, poller_for

from support import Peer, count_fds, crowded, loop_kind, payload, sha, watched_by_loop
from test_transport import Collector

MiB = 1 << 20

_var: contextvars.ContextVar[str] = contextvars.ContextVar("_var", default="unset")


@contextlib.contextmanager
def socket_pairs(n: int) -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    pairs = [socket.socketpair() for _ in range(n)]
    for a, b in pairs:
        a.setblocking(False)
    try:
        yield pairs
    finally:
        for a, b in pairs:
            a.close()
            b.close()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def iterations(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class TestPoller:
    """The poller over real sockets, on both loops."""

    @pytest.mark.asyncio
    async def test_alone_with_the_loop_then_epoll(self) -> None:
        poller = Poller(asyncio.get_running_loop(), 1)
        calls: list[int] = []
        with socket_pairs(3) as pairs:
            fds = [a.fileno() for a, _ in pairs]
            assert poller.register(fds[0], lambda: calls.append(0)) is True
            assert poller.register(fds[1], lambda: calls.append(1)) is False
            assert poller.register(fds[2], lambda: calls.append(2)) is False
            assert [poller.watched_by_loop(fd) for fd in fds] == [True, False, False]
            assert poller.registered == 3
            with pytest.raises(RuntimeError, match="already watched"):
                poller.register(fds[1], lambda: None)
            for _, b in pairs:
                b.send(b"x")
            await until(lambda: {0, 1, 2} <= set(calls))
            # Level-triggered: called again while the byte stays unread ...
            seen = calls.count(1)
            await iterations()
            assert calls.count(1) > seen
            # ... and no more once it is read.
            for a, _ in pairs:
                assert a.recv(10) == b"x"
            await iterations(2)
            calls.clear()
            await iterations()
            assert calls == []
            for fd in fds:
                poller.unregister(fd)
                poller.unregister(fd)  # twice: nothing
            assert poller.registered == 0
            assert poller.watched_by_loop(fds[1]) is None
            pairs[1][1].send(b"y")
            await iterations()
            assert calls == []

    @pytest.mark.asyncio
    async def test_the_loop_watches_the_first_few(self) -> None:
        poller = Poller(asyncio.get_running_loop())
        assert poller.direct_max == DIRECT_MAX > 1
        with socket_pairs(DIRECT_MAX + 2) as pairs:
            ways = [poller.register(a.fileno(), lambda: None) for a, _ in pairs]
            assert ways == [True] * DIRECT_MAX + [False, False]
            # One the loop watched stops: the next to come takes its place.
            poller.unregister(pairs[0][0].fileno())
            poller.unregister(pairs[-1][0].fileno())
            assert poller.register(pairs[-1][0].fileno(), lambda: None) is True
            for a, _ in pairs[1:]:
                poller.unregister(a.fileno())
            assert poller.registered == 0

    @pytest.mark.asyncio
    async def test_epoll_descriptor_lives_while_used(self) -> None:
        poller = Poller(asyncio.get_running_loop(), 1)
        with socket_pairs(3) as pairs:
            before = count_fds()
            poller.register(pairs[0][0].fileno(), lambda: None)
            assert count_fds() == before  # the loop watches the first
            poller.register(pairs[1][0].fileno(), lambda: None)
            assert count_fds() == before + 1  # the poller's epoll
            poller.register(pairs[2][0].fileno(), lambda: None)
            assert count_fds() == before + 1
            poller.unregister(pairs[1][0].fileno())
            assert count_fds() == before + 1
            poller.unregister(pairs[2][0].fileno())
            assert count_fds() == before  # closed with its last socket
            # And made again when needed, still working.
            got = []
            poller.register(pairs[1][0].fileno(), lambda: got.append(1))
            assert count_fds() == before + 1
            pairs[1][1].send(b"z")
            await until(lambda: bool(got))
            poller.unregister(pairs[1][0].fileno())
            poller.unregister(pairs[0][0].fileno())
            assert count_fds() == before

    @pytest.mark.asyncio
    async def test_exception_goes_to_the_loop_and_others_still_run(self) -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        poller = Poller(loop, 1)
        ran: list[str] = []

        def bad() -> None:
            ran.append("bad")
            raise ValueError("from a callback")

        try:
            with socket_pairs(3) as pairs:
                poller.register(pairs[0][0].fileno(), lambda: None)
                poller.register(pairs[1][0].fileno(), bad)
                poller.register(pairs[2][0].fileno(), lambda: ran.append("good"))
                pairs[1][1].send(b"x")
                pairs[2][1].send(b"x")
                await until(lambda: "good" in ran and "bad" in ran)
                for fd in (pairs[0][0].fileno(), pairs[1][0].fileno(), pairs[2][0].fileno()):
                    poller.unregister(fd)
        finally:
            loop.set_exception_handler(None)
        assert errors and isinstance(errors[0]["exception"], ValueError)
        assert "Exception in callback" in errors[0]["message"]

    @pytest.mark.asyncio
    async def test_callbacks_run_in_the_context_of_their_registration(self) -> None:
        poller = Poller(asyncio.get_running_loop(), 1)
        seen: dict[int, str] = {}

        def make(i: int) -> Callable[[], None]:
            def callback() -> None:
                seen.setdefault(i, _var.get())
                _var.set(f"changed by {i}")  # stays in its own context
            return callback

        with socket_pairs(3) as pairs:
            poller.register(pairs[0][0].fileno(), lambda: None)
            for i in (1, 2):
                _var.set(f"registered {i}")
                poller.register(pairs[i][0].fileno(), make(i))
            _var.set("later")
            pairs[1][1].send(b"x")
            pairs[2][1].send(b"x")
            await until(lambda: len(seen) == 2)
            for a, _ in pairs:
                poller.unregister(a.fileno())
        assert seen == {1: "registered 1", 2: "registered 2"}
        assert _var.get() == "later"

    @pytest.mark.asyncio
    async def test_unregistered_during_a_dispatch_is_not_called(self) -> None:
        # Both become ready in one dispatch; whichever runs first stops the
        # other, closes its socket and registers a new socket (which may
        # reuse the number): the stale event reaches neither.
        poller = Poller(asyncio.get_running_loop(), 1)
        ran: list[int] = []
        fresh_calls: list[int] = []
        made: list[tuple[socket.socket, socket.socket]] = []
        with socket_pairs(3) as pairs:
            fds = [a.fileno() for a, _ in pairs]

            def make(i: int) -> Callable[[], None]:
                def callback() -> None:
                    ran.append(i)
                    other = 3 - i
                    poller.unregister(fds[other])
                    pairs[other][0].close()
                    fresh = socket.socketpair()
                    made.append(fresh)
                    poller.register(fresh[0].fileno(), lambda: fresh_calls.append(1))
                    poller.unregister(fds[i])
                return callback

            poller.register(fds[0], lambda: None)
            poller.register(fds[1], make(1))
            poller.register(fds[2], make(2))
            pairs[1][1].send(b"x")
            pairs[2][1].send(b"x")
            await until(lambda: bool(ran))
            await iterations()
            assert len(ran) == 1
            assert fresh_calls == []
            poller.unregister(fds[0])
            for a, b in made:
                poller.unregister(a.fileno())
                a.close()
                b.close()
        assert poller.registered == 0

    @pytest.mark.asyncio
    async def test_which_the_loops_get(self) -> None:
        # uvloop stops watching a socket at its first error: aiozc's own
        # epoll there.  The stdlib loop reports errors until collected, and
        # its selector is cheaper than a second epoll: the loop itself.
        poller = poller_for(asyncio.get_running_loop())
        assert poller is poller_for(asyncio.get_running_loop())
        if loop_kind() == "uvloop":
            assert poller.direct_max == DIRECT_MAX
        else:
            assert poller.direct_max > 1 << 30
            with socket_pairs(DIRECT_MAX + 2) as pairs:
                before = count_fds()
                ways = [poller.register(a.fileno(), lambda: None) for a, _ in pairs]
                assert ways == [True] * (DIRECT_MAX + 2)
                assert count_fds() == before  # no epoll of its own
                assert poller.registered == DIRECT_MAX + 2
                for a, _ in pairs:
                    poller.unregister(a.fileno())
                assert poller.watched_by_loop(pairs[1][0].fileno()) is None


class TestCrowd:
    """Transports watched by the poller's epoll (on uvloop), end to end."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("finish", ["shutdown", "reset"])
    async def test_many_mapped_connections_at_once(self, finish: str) -> None:
        # Eight MSG_ZEROCOPY peers at once, mapped receives, every byte
        # hashed; ended by FIN or by RST behind the last bytes.
        config = ZCConfig(zerocopy="always")
        async with crowded():
            peers = [Peer(payload(3 * MiB + i, seed=i), finish=finish) for i in range(8)]
            conns = []
            for peer in peers:
                peer.start()
                transport, proto = await aiozc.create_connection(
                    Collector, "127.0.0.1", peer.port, config=config)
                assert isinstance(transport, ZCTransport) and isinstance(proto, Collector)
                expected = loop_kind() == "asyncio"  # uvloop: the poller's epoll
                assert watched_by_loop(transport) is expected
                peer.connected.set()
                conns.append((peer, transport, proto))
            for peer, transport, proto in conns:
                await asyncio.wait_for(asyncio.shield(proto.lost), 30)
                stats = transport.stats
                transport.close()
                await asyncio.get_running_loop().run_in_executor(None, peer.join)
                assert stats.bytes_mapped > 0
                if finish == "shutdown":
                    assert proto.eof and proto.exc is None
                    assert proto.digest == sha(peer.data)
                else:
                    assert isinstance(proto.exc, ConnectionResetError), proto.exc
                    assert proto.digest == sha(peer.data[:proto.received])

    @pytest.mark.asyncio
    async def test_server_connections_come_and_go(self) -> None:
        # A server whose connections open and close in waves: the epoll is
        # made and dropped as they do, and no descriptor is left behind.
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
            finally:
                writer.close()

        server = await aiozc.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        counts = []
        for wave in range(4):
            pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
            for i, (_, w) in enumerate(pairs):
                w.write(payload(1000 + i, seed=wave))
            for i, (r, _) in enumerate(pairs):
                assert await r.readexactly(1000 + i) == payload(1000 + i, seed=wave)
            for _, w in pairs:
                w.close()
            await until(lambda: poller_for(asyncio.get_running_loop()).registered == 0)
            await iterations()
            counts.append(count_fds())
        server.close()
        await server.wait_closed()
        # (The first wave's count may include what the loop opens once: uvloop
        # keeps a /dev/null descriptor in reserve after its first connect.)
        assert counts[1:] == [counts[1]] * 3, counts

    @pytest.mark.asyncio
    @pytest.mark.parametrize("watch", ["alone", "crowded"])
    async def test_errors_collected_eagerly_only_where_the_loop_watches(
        self, watch: str,
    ) -> None:
        # The point of the poller on uvloop: no getsockopt(SO_ERROR) after
        # each drained receive.  A socket uvloop watches itself still needs
        # it (libuv stops watching at the first error); the stdlib loop
        # never does.  (The engine's flag is read here because no stat
        # shows it; the reset tests show the behaviour.)
        async with crowded(watch == "crowded"):
            with socket.create_server(("127.0.0.1", 0)) as listener:
                transport, _ = await aiozc.create_connection(
                    Collector, "127.0.0.1", listener.getsockname()[1])
                conn, _ = listener.accept()
            assert isinstance(transport, ZCTransport)
            direct = watched_by_loop(transport)
            assert direct is (watch == "alone" or loop_kind() == "asyncio")
            assert transport._rx.eager_errors is (loop_kind() == "uvloop" and direct)
            # Paused, the socket is watched by nothing; resumed, it is
            # placed again, with the flag to match.
            transport.pause_reading()
            assert watched_by_loop(transport) is None
            transport.resume_reading()
            assert watched_by_loop(transport) is direct
            assert transport._rx.eager_errors is (loop_kind() == "uvloop" and direct)
            transport.close()
            conn.close()
            await asyncio.sleep(0)
            assert watched_by_loop(transport) is None
