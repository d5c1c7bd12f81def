"""ZCTransport end to end: integrity, views, faults, load and leaks.

Every test runs on the stdlib loop and on uvloop (the ``run`` fixture), over
loopback, against a real peer.  Tests that claim the mapped path ran use a
MSG_ZEROCOPY peer and assert it from the transport's statistics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import gc
import hashlib
import random
import select
import socket
import threading
import time
import warnings
from typing import Any

import pytest

import aiozc
import aiozc.testing
from aiozc import ZCConfig, ZCProtocol, ZCTransport
from aiozc._engine import PUMP_EOF, Receiver
from aiozc._policy import ProbeHistory, history_for

from support import (Peer, Plain, count_fds, count_maps, count_socket_maps, crowded, inq,
                     loop_kind, payload, sha, watched_by_loop)

MiB = 1 << 20


class Collector(ZCProtocol):
    """Hashes every byte; optionally keeps every view it is given."""

    def __init__(self, *, hold: bool = False) -> None:
        self.hold = hold
        self.hasher = hashlib.sha256()
        self.received = 0
        self.views: list[memoryview] = []
        self.transport: Any = None
        self.eof = False
        self.exc: BaseException | None = None
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.calls_while_paused = 0
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        assert isinstance(data, memoryview) and data.readonly
        if self.paused:
            self.calls_while_paused += 1
        self.hasher.update(data)
        self.received += len(data)
        if self.hold:
            self.views.append(data)
        else:
            data.release()

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        if not self.lost.done():
            self.lost.set_result(None)

    @property
    def digest(self) -> str:
        return self.hasher.hexdigest()


async def receive(
    peer: Peer, config: ZCConfig | None = None, **kw: Any
) -> tuple[Collector, aiozc.ZCStats]:
    """Connect to ``peer`` with a Collector and wait until the connection ends."""
    peer.start()
    transport, proto = await aiozc.create_connection(
        lambda: Collector(**kw), "127.0.0.1", peer.port, config=config
    )
    assert isinstance(transport, ZCTransport) and isinstance(proto, Collector)
    await proto.lost
    stats = transport.stats
    await asyncio.get_running_loop().run_in_executor(None, peer.join)
    return proto, stats


#: Views may pin 2 MiB, then reading pauses until one is released.
PAUSING = ZCConfig(zerocopy="always", window_size=MiB, max_pinned_bytes=2 * MiB,
                   on_exhausted="pause")

SIZES = [1, 4095, 4097, 3 * 65536 + 7, MiB + 3, 64 * MiB]


class TestIntegrity:
    """Byte-exact delivery, hashed at both ends, for every path."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("size", SIZES)
    async def test_zerocopy_peer_always(self, size: int) -> None:
        data = payload(size, seed=size)
        proto, stats = await receive(Peer(data, zerocopy=True), ZCConfig(zerocopy="always"))
        assert proto.received == size == stats.bytes_received
        assert proto.digest == sha(data)
        assert proto.eof and proto.exc is None
        assert stats.bytes_mapped + stats.bytes_copied == size
        assert stats.views_outstanding == 0
        if size >= MiB:
            # The kernel mapped the MSG_ZEROCOPY peer's pages.
            assert stats.mode == "zerocopy"
            assert stats.mapped_fraction > 0.8, stats
            assert stats.fallback_reason is None, stats

    @pytest.mark.asyncio
    @pytest.mark.parametrize("size", SIZES)
    async def test_plain_peer(self, size: int) -> None:
        data = payload(size, seed=size + 1)
        proto, stats = await receive(Peer(data, zerocopy=False), ZCConfig(zerocopy="always"))
        assert proto.digest == sha(data) and proto.received == size
        # Nothing a plain send() sends over loopback can be mapped; the
        # mode stays 'zerocopy' (it keeps trying), and the stats say why
        # nothing mapped.
        assert stats.bytes_mapped == 0 and stats.bytes_copied == size
        assert stats.mode == "zerocopy", stats
        assert str(stats.fallback_reason).startswith("nothing has been mapped"), stats
        assert "plain send()" in str(stats.fallback_reason)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("policy", ["never", "auto"])
    @pytest.mark.parametrize("zerocopy_peer", [True, False])
    async def test_policies(self, policy: str, zerocopy_peer: bool) -> None:
        data = payload(24 * MiB, seed=7)
        config = ZCConfig(zerocopy=policy, probe_bytes=MiB)  # type: ignore[arg-type]
        proto, stats = await receive(Peer(data, zerocopy=zerocopy_peer), config)
        assert proto.digest == sha(data)
        if policy == "never":
            assert stats.bytes_mapped == 0 and stats.mode == "copy"
            assert stats.fallback_reason is not None and "never" in stats.fallback_reason
        elif zerocopy_peer:
            # auto copied its first probe_after_bytes, probed both paths
            # (mapped some bytes, copied some), then chose by measured cost.
            assert stats.bytes_mapped > 0 and stats.bytes_copied >= config.probe_after_bytes
            assert stats.mode == "zerocopy" or "measured" in str(stats.fallback_reason)
        else:
            # A peer whose pages cannot be mapped: auto settles on copying.
            assert stats.mode == "copy" and stats.bytes_mapped == 0
            assert "mapped" in str(stats.fallback_reason)

    @pytest.mark.asyncio
    async def test_echo_and_write_eof(self) -> None:
        """The write side: echo a payload back, then half-close."""

        class Echo(ZCProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: Any = transport

            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                self.transport.write(data)

            def eof_received(self) -> bool:
                # Half-close our side too; returning False then closes the
                # transport, which must still flush what is buffered.
                assert self.transport.can_write_eof()
                self.transport.write_eof()
                return False

        async def main() -> None:
            server = await aiozc.create_server(Echo, "127.0.0.1", 0)
            async with server:
                port = server.sockets[0].getsockname()[1]
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                data = payload(5 * MiB)
                writer.write(data)
                writer.write_eof()
                echoed = await reader.read()
                assert sha(echoed) == sha(data)
                writer.close()
                await writer.wait_closed()

        await main()


class TestViews:
    """What the application may do with its views, and what it may not."""

    @pytest.mark.asyncio
    async def test_read_only(self) -> None:
        data = payload(2 * MiB)
        proto, stats = await receive(Peer(data), ZCConfig(zerocopy="always"), hold=True)
        assert stats.bytes_mapped > 0
        for view in proto.views:
            with pytest.raises(TypeError):
                view[0] = 0
            with pytest.raises(TypeError):
                (ctypes.c_char * len(view)).from_buffer(view)  # type: ignore[arg-type]
            with memoryview(view.obj) as again:  # a second export: read-only too
                assert again.readonly
                with pytest.raises(TypeError):
                    again[0] = 0
        assert sha(b"".join(proto.views)) == sha(data)

    @pytest.mark.asyncio
    async def test_readable_after_close_and_peer_gone(self) -> None:
        data = payload(8 * MiB, seed=3)
        windows_before = count_socket_maps()
        proto, stats = await receive(Peer(data), ZCConfig(zerocopy="always"), hold=True)
        # The transport is closed and the peer gone; the mapped pages stay.
        assert proto.transport.is_closing()
        assert stats.bytes_mapped > 0.8 * len(data)
        assert stats.views_outstanding == len(proto.views) > 0
        assert sha(b"".join(proto.views)) == sha(data)
        assert count_socket_maps() == windows_before + 1  # the window is still mapped
        for view in proto.views:
            view.release()
        proto.views.clear()
        gc.collect()
        assert proto.transport.stats.views_outstanding == 0
        assert count_socket_maps() == windows_before  # unmapped with the last view

    @pytest.mark.asyncio
    async def test_released_view_cannot_be_revived(self) -> None:
        proto, _ = await receive(Peer(payload(MiB)), ZCConfig(zerocopy="always"), hold=True)
        exporter = proto.views[0].obj
        for view in proto.views:
            view.release()
        with pytest.raises(BufferError, match="released"):
            memoryview(exporter)

    @pytest.mark.asyncio
    async def test_slices_keep_pages_alive(self) -> None:
        """Slices outlive their view while the window is recycled around them."""
        data = payload(48 * MiB, seed=4)
        # A small window forces regions to be zapped and reused many times.
        config = ZCConfig(zerocopy="always", window_size=2 * MiB, region_size=256 * 1024)
        checked: list[int] = []

        class Slicer(Collector):
            kept: list[tuple[int, memoryview]] = []
            views_seen = 0

            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                self.views_seen += 1
                if self.views_seen % 40 == 0 and len(data) > 100:
                    # Keep a slice of this view; the view itself is released.
                    self.kept.append((self.received + 10, data[10:100]))
                    if len(self.kept) > 3:
                        # Checked after ~120 more receives, and regions
                        # being recycled in between.
                        offset, piece = self.kept.pop(0)
                        assert bytes(piece) == data_at(offset)
                        piece.release()
                        checked.append(offset)
                super().data_received(data)

        def data_at(offset: int) -> bytes:
            return data[offset:offset + 90]

        proto, stats = await _receive_with(Slicer, Peer(data), config)
        assert proto.digest == sha(data)
        assert stats.bytes_mapped > 0.8 * len(data)
        assert stats.regions_recycled > 16  # regions really were recycled
        assert len(checked) > 10

    @pytest.mark.asyncio
    @pytest.mark.parametrize("zerocopy_peer", [True, False])
    async def test_holding_every_view_exhausts_the_pool_safely(
        self, zerocopy_peer: bool
    ) -> None:
        data = payload(24 * MiB, seed=5)
        config = ZCConfig(zerocopy="always", window_size=2 * MiB, max_pinned_bytes=4 * MiB)
        proto, stats = await receive(Peer(data, zerocopy=zerocopy_peer), config, hold=True)
        assert sha(b"".join(proto.views)) == sha(data)
        assert stats.exhausted_receives > 0
        assert stats.bytes_pinned <= 4 * MiB + config.region_size + config.receive_size

    @pytest.mark.asyncio
    async def test_pause_policy_resumes_on_release_from_another_thread(self) -> None:
        # The wake-up callback is made at the first starvation; releases
        # from another thread, at any moment, must still resume reading.
        data = payload(16 * MiB, seed=7)
        held: list[memoryview] = []
        stop = threading.Event()

        class Holder(Collector):
            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                self.hasher.update(data)
                self.received += len(data)
                held.append(data)

        def releaser() -> None:
            while not stop.is_set():
                while held:
                    held.pop(0).release()
                time.sleep(0.003)

        thread = threading.Thread(target=releaser, daemon=True)
        thread.start()
        try:
            proto, stats = await _receive_with(Holder, Peer(data), PAUSING)
        finally:
            stop.set()
            thread.join(10)
        assert proto.digest == sha(data)
        assert stats.exhausted_receives > 0 and stats.bytes_mapped > 0

    @pytest.mark.asyncio
    async def test_pause_policy_waits_for_released_views(self) -> None:
        data = payload(16 * MiB, seed=6)

        starved_seen: list[bool] = []
        pinned: list[int] = []

        class SlowReleaser(Collector):
            """Holds views for 20 ms at a time: long enough to fill the pool."""

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                self.held: list[memoryview] = []
                self.timer = asyncio.get_running_loop().call_later(0.02, self.release_all)

            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                self.hasher.update(data)
                self.received += len(data)
                self.held.append(data)
                # The bound holds, give or take the region and the slab
                # being received into.
                pinned.append(self.transport.stats.bytes_pinned)

            def release_all(self) -> None:
                # Was reading stopped for want of memory?
                starved_seen.append(self.transport._starved)
                for view in self.held:
                    view.release()
                self.held.clear()
                self.timer = asyncio.get_running_loop().call_later(0.02, self.release_all)

            def connection_lost(self, exc: Exception | None) -> None:
                self.timer.cancel()
                self.release_all()
                self.timer.cancel()
                super().connection_lost(exc)

        proto, stats = await _receive_with(SlowReleaser, Peer(data), PAUSING)
        assert proto.digest == sha(data)
        assert stats.exhausted_receives > 0 and any(starved_seen)
        assert max(pinned) <= 2 * MiB + PAUSING.region_size + PAUSING.receive_size
        assert stats.views_outstanding == 0


async def _receive_with(
    cls: type[Collector], peer: Peer, config: ZCConfig
) -> tuple[Collector, aiozc.ZCStats]:
    peer.start()
    transport, proto = await aiozc.create_connection(cls, "127.0.0.1", peer.port, config=config)
    await proto.lost
    await asyncio.get_running_loop().run_in_executor(None, peer.join)
    return proto, transport.stats


class TestThreads:
    """Views may be released in any thread, while the loop keeps receiving."""

    @pytest.mark.asyncio
    async def test_views_released_in_worker_threads(self) -> None:
        data = payload(32 * MiB, seed=9)
        # A small window, so regions are recycled while workers release.
        config = ZCConfig(zerocopy="always", window_size=2 * MiB, region_size=256 * 1024)
        workers = concurrent.futures.ThreadPoolExecutor(4)

        class Offloader(Collector):
            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                self.hasher.update(data)
                self.received += len(data)
                workers.submit(lambda: bytes(data[:64]) and data.release())

        try:
            proto, stats = await _receive_with(Offloader, Peer(data), config)
        finally:
            workers.shutdown(wait=True)
        assert proto.digest == sha(data)
        # Regions released by the workers were mapped again: more recycled
        # than the window holds (8).  Not a mapped fraction: a receive that
        # finds every region still held copies instead, and how often that
        # happens depends on how soon the workers get a CPU (a loaded
        # machine saw 69% mapped, 80% was asserted).
        assert stats.bytes_mapped > 0 and stats.regions_recycled > 8, stats
        assert proto.transport.stats.views_outstanding == 0


class TestFaults:
    """Faults reach the protocol through the standard callbacks, losing nothing."""

    @pytest.mark.asyncio
    async def test_eof_mid_stream(self) -> None:
        # The peer stops halfway through what the application expects.
        data = payload(3 * MiB + 123)
        proto, stats = await receive(Peer(data, finish="close"), ZCConfig(zerocopy="always"))
        assert proto.eof and proto.exc is None
        assert proto.digest == sha(data)

    @pytest.mark.asyncio
    async def test_eof_while_views_held(self) -> None:
        data = payload(4 * MiB + 5)
        proto, _ = await receive(Peer(data), ZCConfig(zerocopy="always"), hold=True)
        assert proto.eof
        assert sha(b"".join(proto.views)) == sha(data)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("watch", ["alone", "crowded"])
    async def test_peer_reset(self, watch: str) -> None:
        data = payload(6 * MiB)

        async def main() -> Collector:
            peer = Peer(data, finish="reset").start()
            transport, proto = await aiozc.create_connection(
                Collector, "127.0.0.1", peer.port, config=ZCConfig(zerocopy="always"))
            assert watched_by_loop(transport) is (watch == "alone" or loop_kind() == "asyncio")
            peer.connected.set()
            await proto.lost
            await asyncio.get_running_loop().run_in_executor(None, peer.join)
            assert isinstance(proto, Collector)
            return proto

        async with crowded(watch == "crowded"):
            proto = await main()
        # Whatever arrived before the RST is intact; then the reset is reported.
        assert isinstance(proto.exc, ConnectionResetError), proto.exc
        assert not proto.eof
        assert proto.received <= len(data)
        assert proto.digest == sha(data[:proto.received])

    @pytest.mark.asyncio
    async def test_pause_resume_under_load(self) -> None:
        data = payload(32 * MiB, seed=8)

        class Pauser(Collector):
            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                super().data_received(data)
                if random.random() < 0.3:
                    self.paused = True
                    self.transport.pause_reading()
                    assert not self.transport.is_reading()
                    asyncio.get_running_loop().call_later(0.0005, self.unpause)

            def unpause(self) -> None:
                self.paused = False
                self.transport.resume_reading()

        proto, stats = await _receive_with(Pauser, Peer(data), ZCConfig(zerocopy="always"))
        assert proto.digest == sha(data)
        assert proto.calls_while_paused == 0
        assert stats.bytes_mapped > 0

    @pytest.mark.asyncio
    @pytest.mark.parametrize("unread", [True, False], ids=["unread", "all-read"])
    @pytest.mark.parametrize("how", ["abort", "close"])
    async def test_ending_with_views_held(self, how: str, unread: bool) -> None:
        """The peer sees what close() of the socket would show it: a reset
        if bytes were left unread, else a FIN; even though views held over
        mapped pages keep the socket's file open (the window maps it), so
        that the fd's close() alone does not end the connection.  (With a
        FIN instead of the reset, a peer blocked on our full window stayed
        blocked for as long as the views lived.)"""
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        first, second = payload(MiB, seed=21), payload(256 * 1024, seed=22)
        paused = concurrent.futures.Future[None]()

        def peer() -> BaseException | bytes:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(20)
                sender = aiozc.testing.ZeroCopySender(conn)
                sender.send(first)
                sender.flush()
                paused.result(20)
                if unread:
                    sender.send(second)
                    sender.flush()
                try:
                    return conn.recv(1)
                except OSError as exc:
                    return exc

        outcome = loop.run_in_executor(None, peer)
        try:
            transport, proto = await aiozc.create_connection(
                lambda: Collector(hold=True), "127.0.0.1", listener.getsockname()[1],
                config=ZCConfig(zerocopy="always"))
            assert isinstance(transport, ZCTransport) and isinstance(proto, Collector)
            while proto.received < len(first):
                await asyncio.sleep(0.001)
            assert transport.stats.bytes_mapped > 0
            sock = transport.get_extra_info("socket")
            transport.pause_reading()
            paused.set_result(None)
            if unread:
                while inq(sock) < len(second):
                    await asyncio.sleep(0.001)
            if how == "abort":
                transport.abort()
            else:
                transport.close()
            await proto.lost
            seen = await asyncio.wait_for(outcome, 30)
        finally:
            listener.close()
            if not paused.done():
                paused.set_result(None)
        if unread:
            assert isinstance(seen, ConnectionResetError), seen
        else:
            assert seen == b"", seen
        # The views are intact after all of it, and the connection is gone.
        assert proto.received == len(first)
        assert sha(b"".join(proto.views)) == sha(first)
        for view in proto.views:
            view.release()

    @pytest.mark.asyncio
    async def test_data_received_error_closes_with_it(self) -> None:
        class Boom(Collector):
            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                raise ValueError("boom")

        async def main() -> Collector:
            loop = asyncio.get_running_loop()
            errors: list[dict[str, Any]] = []
            loop.set_exception_handler(lambda _, ctx: errors.append(ctx))
            peer = Peer(payload(4 * MiB), finish="close", may_be_cut_off=True).start()
            _, proto = await aiozc.create_connection(Boom, "127.0.0.1", peer.port)
            await proto.lost
            await loop.run_in_executor(None, peer.join)
            assert errors and isinstance(errors[0]["exception"], ValueError)
            assert isinstance(proto, Collector)
            return proto

        proto = await main()
        assert isinstance(proto.exc, ValueError)

    @pytest.mark.asyncio
    async def test_unix_socket_falls_back_to_copy(self) -> None:
        """A socket the kernel cannot map (AF_UNIX) works, in copy mode."""
        data = payload(3 * MiB)

        async def main() -> tuple[Collector, aiozc.ZCStats]:
            ours, theirs = socket.socketpair()
            transport, proto = await aiozc.connect_accepted_socket(Collector, ours)
            assert isinstance(proto, Collector) and isinstance(transport, ZCTransport)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, theirs.sendall, data)
            theirs.shutdown(socket.SHUT_WR)
            await proto.lost
            theirs.close()
            return proto, transport.stats

        proto, stats = await main()
        assert proto.digest == sha(data)
        assert stats.mode == "copy" and stats.bytes_mapped == 0
        assert stats.fallback_reason is not None
        assert "does not support" in stats.fallback_reason

    @pytest.mark.asyncio
    async def test_datagram_socket_refused(self) -> None:
        async def main() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                with pytest.raises(ValueError, match="stream socket"):
                    await aiozc.connect_accepted_socket(Collector, udp)

        await main()


class TestPlainProtocols:
    """Protocols that are not ZCProtocols get asyncio's semantics exactly."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("kind", ["bytes", "buffered"])
    async def test_copy_path(self, kind: str) -> None:
        data = payload(4 * MiB + 17)

        class Plain(asyncio.Protocol):
            def __init__(self) -> None:
                self.got = bytearray()
                self.lost = asyncio.get_running_loop().create_future()
                self.types: set[type] = set()

            def data_received(self, chunk: bytes) -> None:
                self.types.add(type(chunk))
                self.got += chunk

            def connection_lost(self, exc: Exception | None) -> None:
                self.lost.set_result(exc)

        class Buffered(asyncio.BufferedProtocol):
            def __init__(self) -> None:
                self.got = bytearray()
                self.buf = bytearray(65536)
                self.lost = asyncio.get_running_loop().create_future()
                self.types = {bytes}

            def get_buffer(self, sizehint: int) -> bytearray:
                return self.buf

            def buffer_updated(self, nbytes: int) -> None:
                self.got += self.buf[:nbytes]

            def connection_lost(self, exc: Exception | None) -> None:
                self.lost.set_result(exc)

        async def main() -> tuple[Any, aiozc.ZCStats]:
            peer = Peer(data).start()
            loop = asyncio.get_running_loop()
            sock = socket.create_connection(("127.0.0.1", peer.port))
            proto = Plain() if kind == "bytes" else Buffered()
            waiter = loop.create_future()
            transport = ZCTransport(loop, sock, proto, waiter=waiter)
            await waiter
            await proto.lost
            await loop.run_in_executor(None, peer.join)
            return proto, transport.stats

        proto, stats = await main()
        assert sha(bytes(proto.got)) == sha(data)
        assert proto.types == {bytes}
        assert stats.mode == "copy" and stats.bytes_received == len(data)
        assert "not a ZCProtocol" in str(stats.fallback_reason)


class TestLoad:
    """Many connections at once, and no leak after a thousand."""

    @pytest.mark.asyncio
    async def test_200_concurrent_connections(self) -> None:
        async def main() -> None:
            done: list[tuple[str, int]] = []

            class Sink(Collector):
                def connection_lost(self, exc: Exception | None) -> None:
                    done.append((self.digest, self.received))
                    super().connection_lost(exc)

            server = await aiozc.create_server(Sink, "127.0.0.1", 0, backlog=256,
                                               config=ZCConfig(zerocopy="always"))
            port = server.sockets[0].getsockname()[1]
            blobs = [payload(64 * 1024 + i, seed=i) for i in range(200)]

            async def client(blob: bytes) -> None:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(blob)
                await writer.drain()
                writer.close()
                await writer.wait_closed()

            await asyncio.gather(*(client(b) for b in blobs))
            while len(done) < len(blobs):
                await asyncio.sleep(0.01)
            server.close()
            await server.wait_closed()
            assert sorted(done) == sorted((sha(b), len(b)) for b in blobs)

        await main()

    @pytest.mark.asyncio
    async def test_no_fd_or_mapping_leak_after_1000_connections(self) -> None:
        async def main() -> None:
            server = await aiozc.create_server(
                lambda: Collector(hold=True), "127.0.0.1", 0, backlog=256,
                config=ZCConfig(zerocopy="always"))
            port = server.sockets[0].getsockname()[1]
            blob = payload(20000)

            async def client() -> None:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(blob)
                writer.close()
                await writer.wait_closed()

            async def batch(n: int) -> None:
                await asyncio.gather(*(client() for _ in range(n)))
                while server._clients:  # every connection closed on our side
                    await asyncio.sleep(0.01)
                gc.collect()

            # Warm up (lazily created pools, malloc arenas), then measure.
            await batch(50)
            fds0, maps0 = count_fds(), count_maps()
            for _ in range(20):
                await batch(50)
            fds1, maps1 = count_fds(), count_maps()
            server.close()
            await server.wait_closed()
            assert count_socket_maps() == 0  # every window unmapped
            assert fds1 <= fds0, (fds0, fds1)
            # A few mappings of slack for malloc; a leaked window or slab per
            # connection would show up as 1,000.
            assert maps1 <= maps0 + 8, (maps0, maps1)

        await main()


class TestResetRace:
    """A reset that lands while bytes are still queued is reported, on every loop.

    libuv (uvloop) reports EPOLLERR once, calls the reader one last time and
    then drops it: a receive that took the queued bytes and left the reset
    pending used to hang the connection forever on uvloop (found by the
    gather tests).  Repeated, because whether the RST arrives before or
    after the first read is a race.
    """

    @pytest.mark.asyncio
    @pytest.mark.parametrize(("kind", "watch"), [
        ("views-copy", "alone"), ("views-copy", "crowded"), ("views-map", "alone"),
        ("views-map", "crowded"), ("bytes", "alone"), ("buffered", "alone"),
        ("switched-to-plain", "alone"), ("switched-to-plain", "crowded"),
    ])  # (plain protocols get the loop's own transport: no poller to crowd)
    async def test_reset_with_bytes_queued(self, kind: str, watch: str) -> None:
        data = payload(400_000, seed=31)

        class Buffered(asyncio.BufferedProtocol, Plain):
            buf = bytearray(65536)

            def get_buffer(self, sizehint: int) -> memoryview:
                return memoryview(self.buf)

            def buffer_updated(self, nbytes: int) -> None:
                self.data_received(self.buf[:nbytes])

        # switched-to-plain: a ZCTransport whose protocol becomes a plain
        # one (read with recv(): _read_ready_plain).
        factory: Any = {"bytes": Plain, "buffered": Buffered}.get(kind, Collector)
        config = ZCConfig(zerocopy="always" if kind == "views-map" else "never")

        async def once() -> None:
            with socket.create_server(("127.0.0.1", 0)) as listener:
                transport, proto = await aiozc.create_connection(
                    factory, "127.0.0.1", listener.getsockname()[1], config=config)
                conn, _ = listener.accept()
            if isinstance(transport, ZCTransport):  # (plain protocols get the loop's own)
                assert watched_by_loop(transport) is (watch == "alone" or loop_kind() == "asyncio")
            if kind == "switched-to-plain":
                proto = Plain()
                transport.set_protocol(proto)
            conn.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                conn.send(data)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            conn.close()
            try:
                await asyncio.wait_for(asyncio.shield(proto.lost), 5)
            except TimeoutError:
                pytest.fail(f"{kind}: the reset was never reported ({transport!r})")
            finally:
                transport.close()
            assert isinstance(proto.exc, ConnectionResetError), proto.exc
            # What arrived before the reset is a prefix of what was sent.
            assert proto.hasher.hexdigest() == sha(data[:proto.received])

        async def main() -> None:
            for _ in range(25):
                await once()

        async with crowded(watch == "crowded"):
            await main()


class TestDropped:
    """A transport dropped unclosed warns and closes its socket, as asyncio's do."""

    @pytest.mark.asyncio
    async def test_dropped_transport_warns_and_closes(self) -> None:
        async def main() -> tuple[list[str], int]:
            with socket.create_server(("127.0.0.1", 0)) as listener:
                transport, _ = await aiozc.create_connection(
                    ZCProtocol, "127.0.0.1", listener.getsockname()[1])
                peer, _ = listener.accept()
            with peer:
                # Paused, the loop holds no callback of it (as with asyncio,
                # a transport the loop reads for stays alive).
                transport.pause_reading()
                fd = transport.get_extra_info("socket").fileno()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    del transport
                    gc.collect()
                peer.settimeout(5)
                eof = peer.recv(1)  # the socket was closed: EOF at the peer
            return [str(w.message) for w in caught if w.category is ResourceWarning], \
                len(eof) if fd >= 0 else -1

        messages, eof = await main()
        assert any(m.startswith("unclosed transport <ZCTransport") for m in messages), messages
        assert eof == 0


class TestAlwaysWithAPeerThatNeverMaps:
    """``always`` against a plain sender, whose pages never map over loopback.

    Engine-level (no loop): the whole payload is queued before the engine
    reads, so the count of receive calls depends on the engine alone.
    """

    def test_unmappable_runs_are_received_in_few_calls(self) -> None:
        size = 2 * MiB
        data = payload(size, seed=3)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            # Room for the whole payload (root may pass rmem_max; else the
            # test would wait on a full window).
            listener.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 * MiB)
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
        with client, server:
            client.sendall(data)
            deadline = 50
            while deadline and inq(server) < size:
                deadline -= 1
                time.sleep(0.1)
            assert inq(server) == size, "the payload did not fit in the receive buffer"
            server.setblocking(False)
            hasher = hashlib.sha256()

            def sink(view: memoryview) -> None:
                with view:
                    hasher.update(view)

            rx = Receiver(server.fileno(), ZCConfig(zerocopy="always"), sink)
            got = 0
            while got < size:
                n = rx.pump()
                assert n > 0
                got += n
            st = rx.stats()
            rx.close()
        assert got == size and hasher.hexdigest() == sha(data)
        assert st.bytes_mapped == 0 and st.mode == "zerocopy"
        # The kernel's skip hint ends at each ~64 KiB skb: a getsockopt and
        # a recv per skb would be 64 calls for 2 MiB.  After the second
        # unmappable round the engine takes up to a receive (256 KiB) per
        # recv: about 18 calls.
        assert st.receive_calls <= 24, st


class TestAutoWithAFrameReader:
    """'auto' against a reader whose frames span receives (engine level).

    The probe times receives, not what the reader does afterwards; a
    reader that joins mapped views into frames copies every byte that
    mapping saved.  The steady mapping state must notice and copy.  The
    probe is made to pick mapping every time (the sink burns CPU on copied
    views only), so that the steady state is what is tested.
    """

    FRAME = MiB

    def _receive(self, assemble: bool) -> tuple[aiozc.ZCStats, int]:
        frames = 40
        data = payload(frames * self.FRAME, seed=31)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()

        def send() -> None:
            sender = aiozc.testing.ZeroCopySender(client)
            for i in range(0, len(data), self.FRAME):
                sender.send(data[i:i + self.FRAME])
            sender.flush()

        from aiozc._buffer import ViewBuffer

        vb = ViewBuffer()
        rx: Receiver

        def sink(view: memoryview) -> None:
            if rx.mode == "copy" and rx.stats().mode_switches == 0:
                end = time.thread_time() + 0.002  # copying looks dear
                while time.thread_time() < end:
                    pass
            vb.append(view)

        config = ZCConfig(zerocopy="auto", probe_after_bytes=0, probe_bytes=2 * MiB)
        hasher = hashlib.sha256()
        with client, server, concurrent.futures.ThreadPoolExecutor(1) as pool:
            done = pool.submit(send)
            server.setblocking(False)
            rx = Receiver(server.fileno(), config, sink)
            got = 0
            try:
                while got < len(data):
                    n = rx.pump(self.FRAME)
                    if n == 0:
                        select.select([server], [], [], 5)
                        continue
                    assert n > 0
                    while len(vb) >= (self.FRAME if assemble else 1):
                        view = vb.take(self.FRAME if assemble else vb.first_size)
                        got += len(view)
                        hasher.update(view)
                        view.release()
                    if assemble and len(vb) < self.FRAME:
                        vb.gather(rx, self.FRAME)
                done.result(30)
                st = rx.stats()
            finally:
                vb.clear()
                rx.close()
        assert hasher.hexdigest() == sha(data)
        return st, vb.bytes_assembled

    def test_a_reader_that_assembles_mapped_frames_gets_copies(self) -> None:
        st, assembled = self._receive(assemble=True)
        assert st.bytes_mapped > 0 and assembled > 0
        assert st.mode == "copy", st
        assert st.fallback_reason is not None and "assemble" in st.fallback_reason, st
        # The probe picked mapping (the mode it starts in), then it was given up.
        assert st.mode_switches == 1, st

    def test_a_reader_of_views_keeps_mapping(self) -> None:
        st, assembled = self._receive(assemble=False)
        assert assembled == 0
        assert st.mode == "zerocopy" and st.bytes_mapped > st.bytes_received // 2, st
        assert st.mode_switches == 0, st




class TestProbeHistory:
    """'auto' connections of one loop share what their probes measured.

    Engine level, with a :class:`~aiozc._policy.ProbeHistory` of the test's
    own (the transport takes its loop's: see test_the_loop_shares_one).  The
    probe's verdict is steered as in TestAutoWithAFrameReader: the sink burns
    CPU on the views of the mode that must look dear, inside the probe's
    clock.
    """

    CONFIG = ZCConfig(zerocopy="auto", probe_after_bytes=0, probe_bytes=MiB)

    @staticmethod
    def _steer(engine: list[Receiver], dear: str | None, hasher: Any) -> Any:
        """A sink that hashes every view and, while the engine (``engine[0]``)
        is in mode ``dear`` and has not switched, burns 2 ms of CPU per view
        inside the probe's clock: that mode measures dear."""

        def sink(view: memoryview) -> None:
            with view:
                rx = engine[0]
                if rx.mode == dear and rx.stats().mode_switches == 0:
                    end = time.thread_time() + 0.002
                    while time.thread_time() < end:
                        pass
                hasher.update(view)

        return sink

    def _receive(self, history: ProbeHistory, data: bytes, dear: str | None,
                 burst: int = 0) -> tuple[aiozc.ZCStats, int]:
        """``data`` from a MSG_ZEROCOPY peer through an engine sharing
        ``history``, hashed at both ends; its stats, and how often it went
        idle.  With ``burst``, the peer sends bursts of that size and waits
        for each to be read, the connection going idle (release_idle, as the
        loops' drivers call it) in between."""
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
        read = threading.Semaphore(0)
        step = burst or len(data)

        def send() -> None:
            sender = aiozc.testing.ZeroCopySender(client)
            for i in range(0, len(data), step):
                sender.send(data[i:i + step])
                sender.flush()
                if burst:
                    assert read.acquire(timeout=30)
            client.shutdown(socket.SHUT_WR)

        hasher = hashlib.sha256()
        engine: list[Receiver] = []
        got = pauses = 0
        with client, server, concurrent.futures.ThreadPoolExecutor(1) as pool:
            done = pool.submit(send)
            server.setblocking(False)
            rx = Receiver(server.fileno(), self.CONFIG, self._steer(engine, dear, hasher),
                          history=history)
            engine.append(rx)
            try:
                while (n := rx.pump()) != PUMP_EOF:
                    got += max(n, 0)
                    if n == 0:
                        if burst and got and got % burst == 0:
                            rx.release_idle()  # a burst read: idle now
                            pauses += 1
                            read.release()
                        select.select([server], [], [], 5)
                done.result(30)
                st = rx.stats()
            finally:
                rx.close()
        assert hasher.hexdigest() == sha(data) and st.bytes_received == len(data)
        return st, pauses

    @staticmethod
    def _modes(history: ProbeHistory, count: int) -> list[str]:
        # Connections that receive nothing: with probe_after_bytes=0 the
        # choice (probe or not) is made when the engine is made.
        modes = []
        with socket.create_server(("127.0.0.1", 0)) as listener:
            pairs = []
            for _ in range(count):
                client = socket.create_connection(listener.getsockname())
                pairs.append((listener.accept()[0], client))
        for a, b in pairs:
            with a, b:
                rx = Receiver(a.fileno(), TestProbeHistory.CONFIG, history=history)
                modes.append(rx.mode)
                rx.close()
        return modes

    def test_three_copy_verdicts_in_a_row_skip_the_next_probe(self) -> None:
        history = ProbeHistory()
        for seed in range(3):
            st, _ = self._receive(history, payload(8 * MiB, seed=seed), dear="zerocopy")
            assert st.bytes_mapped > 0, st  # it probed: mapped some
            assert "no cheaper" in str(st.fallback_reason), st
        assert history.streak == 3 and history.probes_skipped == 0
        st, _ = self._receive(history, payload(8 * MiB, seed=3), dear=None)
        # It copied everything from a peer whose pages map, and says why.
        assert st.bytes_mapped == 0 and st.mode == "copy", st
        assert "in a row on this event loop" in str(st.fallback_reason), st
        assert st.mode_switches == 0, st
        assert history.probes_skipped == 1

    def test_one_connection_in_sixteen_still_probes(self) -> None:
        history = ProbeHistory()
        assert self._modes(history, 3) == ["zerocopy"] * 3  # no streak: all probe
        for _ in range(3):
            history.record(mapping_won=False)
        modes = self._modes(history, 32)
        assert [i for i, m in enumerate(modes) if m == "zerocopy"] == [15, 31], modes
        assert history.probes_skipped == 30

    def test_a_probe_that_finds_mapping_cheaper_ends_the_streak(self) -> None:
        history = ProbeHistory()
        for _ in range(3):
            history.record(mapping_won=False)
        assert set(self._modes(history, 15)) == {"copy"}
        # The sixteenth probes, and finds copying dear (twice: mapping must
        # win two probes in a row).
        st, _ = self._receive(history, payload(8 * MiB, seed=7), dear="copy")
        assert st.mode == "zerocopy" and st.bytes_mapped > 0, st
        assert history.streak == 0
        assert self._modes(history, 4) == ["zerocopy"] * 4

    @pytest.mark.asyncio
    async def test_the_loop_shares_one(self) -> None:
        loop = asyncio.get_running_loop()
        history = history_for(loop)
        for _ in range(3):
            history.record(mapping_won=False)
        data = payload(4 * MiB, seed=11)
        config = ZCConfig(zerocopy="auto", probe_after_bytes=0, probe_bytes=MiB)
        proto, stats = await receive(Peer(data, zerocopy=True), config)
        assert proto.digest == sha(data)
        assert stats.bytes_mapped == 0 and stats.mode == "copy", stats
        assert "in a row on this event loop" in str(stats.fallback_reason), stats
        assert history.probes_skipped == 1
        # Another loop has a history of its own.
        other_loop = asyncio.new_event_loop()
        try:
            other = history_for(other_loop)
            assert other is not history and other.streak == 0
        finally:
            other_loop.close()

    def test_probes_take_turns(self) -> None:
        history = ProbeHistory()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            pairs = []
            for _ in range(4):
                client = socket.create_connection(listener.getsockname())
                pairs.append((listener.accept()[0], client))
        try:
            def release(view: memoryview) -> None:
                view.release()

            rxs = [Receiver(a.fileno(), self.CONFIG, release, history=history)
                   for a, _ in pairs[:3]]
            # Two probe (mapping first); the third copies and waits its turn.
            assert [rx.mode for rx in rxs] == ["zerocopy", "zerocopy", "copy"]
            assert "other connections of this event loop" in str(rxs[2].fallback_reason)
            assert history.probing == 2
            # An idle prober keeps its slot (a pause between bursts is no
            # reason to lose its turn)...
            rxs[1].release_idle()
            assert history.probing == 2 and rxs[1].mode == "zerocopy"
            # ... until it made no probe round for STALE_NS (0.2 s) and
            # another connection asks: that one takes it.
            time.sleep(0.25)
            fourth = Receiver(pairs[3][0].fileno(), self.CONFIG, release, history=history)
            assert fourth.mode == "zerocopy" and history.probing == 2
            # The one it was taken from (the last stale one, rxs[1]) finds out
            # at its next round: it copies and waits for a slot.
            server, client = pairs[1]
            server.setblocking(False)

            def receive(nbytes: int) -> None:
                client.sendall(b"x" * nbytes)
                got = 0
                while got < nbytes:
                    select.select([server], [], [], 5)
                    got += max(rxs[1].pump(), 0)

            receive(4096)
            assert rxs[1].mode == "copy" and history.probing == 2
            assert "other connections of this event loop" in str(rxs[1].fallback_reason)
            # A closed connection gives its slot back; at its next ask (after
            # probe_bytes / 8) the paused probe takes it and goes on mapping,
            # what it had measured kept.
            rxs[0].close()
            assert history.probing == 1
            receive(160 * 1024)
            assert rxs[1].mode == "zerocopy" and history.probing == 2
            for rx in (*rxs[1:], fourth):
                rx.close()
            assert history.probing == 0
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    def test_a_dropped_engine_gives_its_slot_back(self) -> None:
        history = ProbeHistory()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            server, _ = listener.accept()
        with client, server:
            rx = Receiver(server.fileno(), self.CONFIG, history=history)
            assert history.probing == 1
            del rx
            gc.collect()
            assert history.probing == 0
            # In a garbage cycle too (the collector may clear the engine's
            # parts in any order; the slot must still come back).
            holder: list[Any] = []
            rx = Receiver(server.fileno(), self.CONFIG, holder.append, history=history)
            holder.append(rx)
            assert history.probing == 1
            del rx, holder
            gc.collect()
            assert history.probing == 0

    def test_a_probe_idle_between_bursts_goes_on_to_its_verdict(self) -> None:
        # The peer sends in bursts of 256 KiB and waits for each to be read;
        # between bursts the connection goes idle (release_idle, as the
        # loops' drivers call it: the anyio stream at every wait on an empty
        # queue).  The probe needs 2 MiB (1 MiB mapped, 1 MiB copied): it
        # only gets there if idleness neither ends it nor costs its turn.
        history = ProbeHistory()
        burst, bursts = 256 * 1024, 32
        st, pauses = self._receive(history, payload(burst * bursts, seed=41), "zerocopy",
                                   burst=burst)
        assert pauses >= bursts // 2, pauses
        assert st.bytes_mapped > 0 and "no cheaper" in str(st.fallback_reason), st
        assert history.streak == 1 and history.probing == 0
