"""The promises of docs/guarantees.md that an outside review broke.

One class per promise, each test a minimal case that failed before its fix:
views expose only their own connection's bytes; ``set_protocol()`` loses
nothing; nothing is delivered after ``close()`` or ``abort()``;
``connection_lost()`` is the last call and never nested in another; the
memory reserved for a frame stays within ``max_pinned_bytes`` whatever the
peer's header says; a huge bound is a bound, not a wrap-around; copies stay
linear in the frame; ``loop.sendfile()`` works.

Every test runs on the stdlib loop and on uvloop (``run``), the anyio ones
also on trio, over loopback against a real peer; the ones about mapped pages
use a MSG_ZEROCOPY peer and assert from the statistics that pages mapped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import socket
import sys
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import aiozc
import aiozc.anyio
from aiozc import ZCConfig, ZCProtocol, ZCTransport
from aiozc.testing import ZeroCopySender

from support import LOOPS, Peer, payload, sha

MiB = 1 << 20
KiB = 1 << 10

ANYIO_BACKENDS = [
    pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    pytest.param("trio", id="trio"),
]


def vm_size() -> int:
    """The process's virtual size in bytes (VmSize)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


class Holder(ZCProtocol):
    """Hashes every byte and keeps every view; reports the end of the connection."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.views: list[memoryview] = []
        self.transport: Any = None
        self.exc: BaseException | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        self.hasher.update(data)
        self.views.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        self.lost.set_result(None)


async def hold_everything(peer: Peer, config: ZCConfig) -> tuple[Holder, aiozc.ZCStats]:
    peer.start()
    transport, proto = await aiozc.create_connection(Holder, "127.0.0.1", peer.port, config=config)
    await proto.lost
    stats = transport.stats
    await asyncio.get_running_loop().run_in_executor(None, peer.join)
    return proto, stats


class Trickle(Peer):
    """A MSG_ZEROCOPY peer that writes 40 KiB at a time, 0.2 ms apart, then FIN."""

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                sender = ZeroCopySender(conn, zerocopy=True)
                view = memoryview(self.data)
                while view:
                    sender.send(bytes(view[:40 * KiB]))
                    view = view[40 * KiB:]
                    time.sleep(0.0002)
                sender.flush()
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(30)
                while conn.recv(65536):
                    pass
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.listener.close()


class TestNoForeignBytes:
    """Nothing reachable from a view holds bytes its connection did not receive."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("policy", ["always", "never"])
    async def test_views_past_the_bound_expose_only_their_own_bytes(self, policy: str) -> None:
        # Past max_pinned_bytes with on_exhausted='copy', views lie in heap
        # buffers: the buffer behind each (view.obj) must be exactly the
        # view's bytes, neither uninitialised heap (another connection's
        # stream, once) nor 12x the view's size kept alive.
        data = payload(8 * MiB, seed=11)
        config = ZCConfig(zerocopy=policy, max_pinned_bytes=MiB, on_exhausted="copy")  # type: ignore[arg-type]
        # Writes of at most 40 KiB, paced: receives come back short of the
        # 256 KiB they ask for, which is when a heap buffer had a tail.
        peer = Trickle(data)
        proto, stats = await hold_everything(peer, config)
        assert proto.exc is None and proto.hasher.hexdigest() == sha(data)
        assert stats.exhausted_receives > 0, stats
        if policy == "always":
            assert stats.bytes_mapped > 0, stats
        reachable = hashlib.sha256()
        for view in proto.views:
            exported = memoryview(view.obj)
            assert exported.nbytes == view.nbytes, (type(view.obj), exported.nbytes, view.nbytes)
            reachable.update(exported)
        # Everything reachable, in order, is the stream itself.
        assert reachable.hexdigest() == sha(data)


# -- set_protocol ----------------------------------------------------------------


class Chain:
    """The state the protocols of one connection share as they hand over."""

    def __init__(self, transport_box: list[Any]) -> None:
        self.hasher = hashlib.sha256()
        self.received = 0
        self.calls = 0
        self.eof = False
        self.exc: BaseException | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self.box = transport_box
        self.switch: Callable[[], None] = lambda: None

    def take(self, data: bytes | memoryview) -> None:
        self.hasher.update(data)
        self.received += len(data)
        self.calls += 1
        if self.calls % 7 == 0:
            self.switch()


class Link:
    """One protocol of a Chain: whichever holds the connection at its end reports it."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain

    def eof_received(self) -> None:
        self.chain.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.chain.exc = exc
        self.chain.lost.set_result(None)


class ViewsLink(Link, ZCProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.chain.box.append(transport)

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        with data:
            self.chain.take(data)


class BytesLink(Link, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self.chain.take(data)


class BufferedLink(Link, asyncio.BufferedProtocol):
    def __init__(self, chain: Chain) -> None:
        super().__init__(chain)
        self.buf = bytearray(5000)  # smaller than a receive: one view, several buffers

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.chain.take(bytes(self.buf[:nbytes]))


class TestSetProtocol:
    """Switching protocols, anywhere, loses and repeats nothing (as asyncio)."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("other", ["bytes", "buffered"])
    @pytest.mark.parametrize("pause", [False, True], ids=["switch", "pause-switch-resume"])
    async def test_switching_inside_data_received(self, other: str, pause: bool) -> None:
        # Every 7th call hands the connection to the other protocol, from
        # inside data_received, with views of the same pump still to come,
        # and (pause) with views held back by the pause: each switch must
        # take them along, into whatever the new protocol takes.
        data = payload(16 * MiB, seed=21)
        peer = Peer(data, zerocopy=True)

        async def main() -> Chain:
            loop = asyncio.get_running_loop()
            box: list[Any] = []
            chain = Chain(box)
            plain = BytesLink(chain) if other == "bytes" else BufferedLink(chain)
            views = ViewsLink(chain)

            def switch() -> None:
                transport = box[0]
                new = plain if transport.get_protocol() is views else views
                if pause:
                    transport.pause_reading()
                    transport.set_protocol(new)
                    loop.call_soon(transport.resume_reading)
                else:
                    transport.set_protocol(new)

            chain.switch = switch
            peer.start()
            transport, _ = await aiozc.create_connection(
                lambda: views, "127.0.0.1", peer.port, config=ZCConfig(zerocopy="always")
            )
            assert isinstance(transport, ZCTransport)
            await chain.lost
            await loop.run_in_executor(None, peer.join)
            return chain

        chain = await main()
        assert chain.exc is None
        assert chain.eof
        assert chain.calls >= 14  # switched both ways, several times
        assert chain.received == len(data)
        assert chain.hasher.hexdigest() == sha(data)


# -- close() and abort() inside data_received --------------------------------------


class Closer(ZCProtocol):
    """Closes (or aborts) in its first data_received; records every later call."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.transport: Any = None
        self.calls = 0
        self.after_close: list[str] = []
        self.closed = False
        self.in_callback = False
        self.nested: list[str] = []
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        data.release()
        self.calls += 1
        if self.closed:
            self.after_close.append("data_received")
            return
        self.closed = True
        getattr(self.transport, self.how)()

    def eof_received(self) -> None:
        if self.closed:
            self.after_close.append("eof_received")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


class TestNothingAfterClose:
    """After close() or abort(), the protocol gets only connection_lost()."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("policy", ["always", "never"])
    @pytest.mark.parametrize("how", ["close", "abort"])
    async def test_close_inside_data_received(self, how: str, policy: str) -> None:
        # Small receives, so one pump would make many more calls.
        data = payload(8 * MiB, seed=31)
        peer = Peer(data, zerocopy=True, may_be_cut_off=True, finish="close")
        config = ZCConfig(zerocopy=policy, receive_size=16 * KiB, copybuf_size=16 * KiB)  # type: ignore[arg-type]

        async def main() -> Closer:
            peer.start()
            _, proto = await aiozc.create_connection(
                lambda: Closer(how), "127.0.0.1", peer.port, config=config
            )
            # Let the peer fill our receive queue before the first read.
            await asyncio.sleep(0.05)
            await proto.lost
            await asyncio.get_running_loop().run_in_executor(None, peer.join)
            return proto

        proto = await main()
        assert proto.calls == 1
        assert proto.after_close == []


class OrderWatcher(ZCProtocol):
    """Writes a zerocopy reply, waits for its completion, then closes, all
    inside data_received; records any callback out of asyncio's order."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.transport: Any = None
        self.inside: str | None = None
        self.violations: list[str] = []
        self.is_lost = False
        self.closed = False
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        data.release()
        if self.is_lost:
            self.violations.append("data_received after connection_lost")
        if self.closed:
            return
        self.inside = "data_received"
        try:
            self.transport.write(self.reply)  # MSG_ZEROCOPY: held until completed
            assert self.transport.stats.zerocopy_sends_pending > 0
            # Wait (inside the callback) until the completion is queued on
            # the error queue, so that close() itself finds it.
            poller = select.poll()
            poller.register(self.transport.get_extra_info("socket").fileno(), select.POLLERR)
            assert poller.poll(10_000), "no MSG_ZEROCOPY completion within 10 s"
            self.closed = True
            self.transport.close()
        finally:
            self.inside = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inside is not None:
            self.violations.append(f"connection_lost inside {self.inside}")
        if self.is_lost:
            self.violations.append("connection_lost twice")
        self.is_lost = True
        self.lost.set_result(exc)


class TestCallbackOrder:
    """connection_lost() is the last call, and never runs inside another."""

    @pytest.mark.asyncio
    async def test_close_with_zerocopy_sends_completing(self) -> None:
        reply = payload(256 * KiB, seed=41)
        data = payload(4 * MiB, seed=42)
        listener = socket.create_server(("127.0.0.1", 0))
        received = bytearray()

        def peer() -> None:
            # Sends and reads at once, so our zerocopy reply completes.
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                reader = threading.Thread(target=lambda: _drain(conn, received))
                reader.start()
                try:
                    conn.sendall(data)
                except OSError:
                    pass  # we close early: a reset is expected
                reader.join(30)

        async def main() -> OrderWatcher:
            thread = threading.Thread(target=peer, daemon=True)
            thread.start()
            # Unbatched: the reply must leave inside data_received, so that
            # close() there finds its completion (batch_writes would send
            # it when the read event ends).
            config = ZCConfig(send_zerocopy="always", batch_writes=False)
            _, proto = await aiozc.create_connection(
                lambda: OrderWatcher(reply), "127.0.0.1", listener.getsockname()[1], config=config
            )
            await proto.lost
            await asyncio.sleep(0.05)  # anything scheduled after connection_lost runs now
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)
            return proto

        try:
            proto = await main()
        finally:
            listener.close()
        assert proto.is_lost and proto.closed
        assert proto.violations == []
        assert bytes(received) == reply  # close() sent the reply before the FIN


def _drain(conn: socket.socket, into: bytearray) -> None:
    try:
        while chunk := conn.recv(65536):
            into += chunk
    except OSError:
        pass


# -- memory a peer can make us reserve -------------------------------------------------


HUGE_FRAME = 512 * MiB
BOUND = 4 * MiB
# Copying (as 'auto' settles on where mapping does not pay), where big
# frames are received whole into one buffer (gather): that buffer is what
# a header could inflate.
FRAME_CONFIG = ZCConfig(zerocopy="never", max_pinned_bytes=BOUND)


def _header_then_silence(listener: socket.socket, go: threading.Event, stop: threading.Event) -> None:
    conn, _ = listener.accept()
    with conn:
        # A 512 MiB length header; once the reader waits for the frame,
        # 6 bytes of it; then nothing.
        conn.sendall(HUGE_FRAME.to_bytes(4, "big"))
        go.wait(30)
        conn.sendall(b"abcdef")
        stop.wait(30)


class TestFrameMemoryBound:
    """A length header cannot make a connection reserve more than max_pinned_bytes."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("method", ["readexactly", "readexactly_view"])
    async def test_stream_reader(self, method: str) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        go, stop = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=_header_then_silence, args=(listener, go, stop), daemon=True
        )
        thread.start()

        async def main() -> tuple[int, int]:
            reader, writer = await aiozc.open_connection(
                "127.0.0.1", listener.getsockname()[1], config=FRAME_CONFIG
            )
            size = int.from_bytes(await reader.readexactly(4), "big")
            assert size == HUGE_FRAME
            before = vm_size()
            task = asyncio.ensure_future(getattr(reader, method)(size))
            await asyncio.sleep(0.1)
            go.set()
            await asyncio.sleep(0.2)
            stats = reader.stats
            assert stats is not None
            grown = vm_size() - before
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Cancelling lost nothing: the 6 bytes are still there.
            assert await reader.readexactly(6) == b"abcdef"
            writer.close()
            return stats.bytes_pinned, grown

        try:
            pinned, grown = await main()
        finally:
            stop.set()
            thread.join(10)
            listener.close()
        assert pinned <= BOUND, pinned
        assert grown < 64 * MiB, grown

    @pytest.mark.anyio
    @pytest.mark.parametrize("anyio_backend", ANYIO_BACKENDS)
    async def test_anyio_stream(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        go, stop = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=_header_then_silence, args=(listener, go, stop), daemon=True
        )
        thread.start()
        try:
            async with await aiozc.anyio.connect_tcp(
                "127.0.0.1", listener.getsockname()[1], config=FRAME_CONFIG
            ) as stream:
                with await stream.receive_exactly_view(4) as header:
                    size = int.from_bytes(header, "big")
                assert size == HUGE_FRAME
                before = vm_size()


                async def send_the_six_bytes_later() -> None:
                    await anyio.sleep(0.1)  # once the receive below waits
                    go.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(send_the_six_bytes_later)
                    with anyio.move_on_after(0.4):
                        await stream.receive_exactly_view(size)
                        pytest.fail("a 512 MiB frame arrived from 6 bytes")
                grown = vm_size() - before
                assert stream.stats.bytes_pinned <= BOUND, stream.stats
                assert grown < 64 * MiB, grown
                with await stream.receive_exactly_view(6) as rest:
                    assert rest == b"abcdef"
        finally:
            stop.set()
            thread.join(10)
            listener.close()


class TestHugeBound:
    """A max_pinned_bytes near sys.maxsize bounds nothing, and wraps to nothing."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("bound", [sys.maxsize, 2**51], ids=["maxsize", "2**51"])
    @pytest.mark.parametrize("exhausted", ["pause", "copy"])
    async def test_every_view_held(self, bound: int, exhausted: str) -> None:
        data = payload(12 * MiB, seed=51)
        config = ZCConfig(zerocopy="never", max_pinned_bytes=bound, on_exhausted=exhausted)  # type: ignore[arg-type]

        async def main() -> tuple[Holder, aiozc.ZCStats]:
            # A hang (the bug: reading stopped for good at 2 MiB) fails fast.
            return await asyncio.wait_for(
                hold_everything(Peer(data, zerocopy=False), config), 30
            )

        proto, stats = await main()
        assert proto.exc is None and proto.hasher.hexdigest() == sha(data)
        # Nothing was ever past the bound: no heap copies, no starvation.
        assert stats.exhausted_receives == 0, stats
        assert stats.bytes_pinned >= len(data)
        for view in proto.views:
            view.release()


# -- copies linear in the frame ------------------------------------------------------


BIG_FRAME = 24 * MiB
SMALL_BOUND = MiB


class TestLinearCopies:
    """A frame far bigger than the pinned bound costs a bounded number of copies."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("exhausted", ["pause", "copy"])
    async def test_stream_reader(self, exhausted: str) -> None:
        data = payload(BIG_FRAME, seed=61)
        peer = Peer(data, zerocopy=False, max_write=256 * KiB)
        config = ZCConfig(zerocopy="never", max_pinned_bytes=SMALL_BOUND, on_exhausted=exhausted)  # type: ignore[arg-type]

        async def main() -> int:
            peer.start()
            reader, writer = await aiozc.open_connection("127.0.0.1", peer.port, config=config)
            with await reader.readexactly_view(BIG_FRAME) as frame:
                assert sha(frame) == sha(data)
            stats = reader.stats
            assert stats is not None
            writer.close()
            await asyncio.get_running_loop().run_in_executor(None, peer.join)
            return stats.bytes_assembled

        assembled = await main()
        assert assembled <= 2 * BIG_FRAME + SMALL_BOUND, assembled / BIG_FRAME

    @pytest.mark.anyio
    @pytest.mark.parametrize("anyio_backend", ANYIO_BACKENDS)
    @pytest.mark.parametrize("exhausted", ["pause", "copy"])
    async def test_anyio_stream(self, exhausted: str) -> None:
        data = payload(BIG_FRAME, seed=62)
        peer = Peer(data, zerocopy=False, max_write=256 * KiB).start()
        config = ZCConfig(zerocopy="never", max_pinned_bytes=SMALL_BOUND, on_exhausted=exhausted)  # type: ignore[arg-type]
        async with await aiozc.anyio.connect_tcp("127.0.0.1", peer.port, config=config) as stream:
            with await stream.receive_exactly_view(BIG_FRAME) as frame:
                assert sha(frame) == sha(data)
            assembled = stream.bytes_assembled
        await anyio.to_thread.run_sync(peer.join)
        assert assembled <= 2 * BIG_FRAME + SMALL_BOUND, assembled / BIG_FRAME


# -- sendfile --------------------------------------------------------------------------


class Quiet(ZCProtocol):
    def __init__(self) -> None:
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        data.release()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def _serve_sink(listener: socket.socket, out: list[bytes]) -> None:
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(30)
        got = bytearray()
        while chunk := conn.recv(1 << 20):
            got += chunk
        out.append(bytes(got))


@pytest.fixture
def big_file(tmp_path: Path) -> tuple[Path, bytes]:
    data = payload(8 * MiB + 123, seed=71)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    return path, data


class TestSendfile:
    """loop.sendfile(transport, file) on a ZCTransport, in order with write()."""

    @pytest.mark.parametrize("via", ["loop", "aiozc-loop", "transport"])
    def test_file_between_writes(self, loop_name: str, via: str, big_file: tuple[Path, bytes]) -> None:
        path, data = big_file
        if via == "loop" and loop_name == "uvloop":
            pytest.skip("uvloop does not implement loop.sendfile() for any transport; "
                        "aiozc's uvloop loop and transport.sendfile() do (the other cases)")
        factory = (
            (lambda: aiozc.new_event_loop(use_uvloop=loop_name == "uvloop"))
            if via == "aiozc-loop" else LOOPS[loop_name]
        )
        listener = socket.create_server(("127.0.0.1", 0))
        out: list[bytes] = []
        thread = threading.Thread(target=_serve_sink, args=(listener, out), daemon=True)
        thread.start()

        async def main() -> tuple[int, int, aiozc.ZCStats]:
            loop = asyncio.get_running_loop()
            transport, proto = await aiozc.create_connection(
                Quiet, "127.0.0.1", listener.getsockname()[1]
            )
            assert isinstance(transport, ZCTransport)
            transport.write(b"head" * 50_000)  # more than the socket takes at once
            with open(path, "rb") as f:
                if via == "transport":
                    sent = await transport.sendfile(f, 100, len(data) - 200)
                else:
                    sent = await loop.sendfile(transport, f, 100, len(data) - 200)
                position = f.tell()
            transport.write(b"tail")
            transport.write_eof()
            stats = transport.stats
            await loop.run_in_executor(None, thread.join, 30)
            transport.close()
            await proto.lost
            return sent, position, stats

        try:
            with asyncio.Runner(loop_factory=factory) as runner:
                sent, position, stats = runner.run(asyncio.wait_for(main(), 60))
        finally:
            listener.close()
        assert sent == len(data) - 200
        assert position == len(data) - 100
        assert out and sha(out[0]) == sha(b"head" * 50_000 + data[100:-100] + b"tail")

    @pytest.mark.asyncio
    async def test_writes_during_sendfile_follow_the_file(self, big_file: tuple[Path, bytes]) -> None:
        path, data = big_file
        listener = socket.create_server(("127.0.0.1", 0))
        out: list[bytes] = []
        thread = threading.Thread(target=_serve_sink, args=(listener, out), daemon=True)
        thread.start()

        async def main() -> None:
            loop = asyncio.get_running_loop()
            transport, proto = await aiozc.create_connection(
                Quiet, "127.0.0.1", listener.getsockname()[1]
            )
            assert isinstance(transport, ZCTransport)
            with open(path, "rb") as f:
                task = asyncio.ensure_future(transport.sendfile(f))
                await asyncio.sleep(0)
                transport.write(b"after")  # while the file is being sent
                transport.close()  # takes effect after the file and the write
                assert await task == len(data)
            await proto.lost
            await loop.run_in_executor(None, thread.join, 30)

        try:
            await main()
        finally:
            listener.close()
        assert out and sha(out[0]) == sha(data + b"after")

    @pytest.mark.asyncio
    async def test_not_a_regular_file_is_copied(self) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        out: list[bytes] = []
        thread = threading.Thread(target=_serve_sink, args=(listener, out), daemon=True)
        thread.start()
        data = payload(3 * MiB, seed=72)
        read_end, write_end = os.pipe()

        def feed() -> None:
            with open(write_end, "wb") as f:
                f.write(data)

        async def main() -> int:
            loop = asyncio.get_running_loop()
            transport, proto = await aiozc.create_connection(
                Quiet, "127.0.0.1", listener.getsockname()[1]
            )
            assert isinstance(transport, ZCTransport)
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            with open(read_end, "rb") as f:
                with pytest.raises(asyncio.SendfileNotAvailableError):
                    await transport.sendfile(f, fallback=False)
                sent = await transport.sendfile(f)
            transport.close()
            await proto.lost
            await loop.run_in_executor(None, thread.join, 30)
            feeder.join(10)
            return sent

        try:
            sent = await main()
        finally:
            listener.close()
        assert sent == len(data)
        assert out and sha(out[0]) == sha(data)


# -- an application that walks away ----------------------------------------------------


ABANDON = """
import asyncio, gc, socket, sys, threading
import aiozc

class Holder(aiozc.ZCProtocol):
    def connection_made(self, transport):
        self.transport, self.views = transport, []   # a cycle, as applications make
        self.done = asyncio.get_running_loop().create_future()
    def data_received(self, data):
        self.views.append(data)                      # never released

def peer(listener):
    conn, _ = listener.accept()
    try:
        conn.sendall(bytes(12 << 20))
    except OSError:
        pass

async def main():
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=peer, args=(listener,), daemon=True).start()
    config = aiozc.ZCConfig(zerocopy="never", max_pinned_bytes=2 << 20, on_exhausted="pause")
    transport, _ = await aiozc.create_connection(
        Holder, "127.0.0.1", listener.getsockname()[1], config=config)
    for _ in range(500):
        if transport.stats.exhausted_receives:
            break
        await asyncio.sleep(0.01)
    assert transport.stats.exhausted_receives, "never starved"

factory = asyncio.SelectorEventLoop
if sys.argv[1] == "uvloop":
    import uvloop
    factory = uvloop.new_event_loop
for _ in range(3):
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())
    gc.collect()   # the views, the transport, its pool and the loop die together
print("done")
"""


class TestAbandonedConnection:
    """An application that ends with a starved connection open and every view
    held: the garbage collector takes it all, quietly and without a crash."""

    def test_collected_with_its_views(self, loop_name: str) -> None:
        # Before the fix, each release that the collector made called back
        # into the half-destroyed transport (an "Exception ignored" per view),
        # and printing that error once crashed CPython (SIGSEGV in its
        # attribute-name suggestions on the dying object).
        proc = subprocess.run(
            [sys.executable, "-X", "dev", "-c", ABANDON, loop_name],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip() == "done"
        assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
