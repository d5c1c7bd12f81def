"""Bugs the fault suite found, each reduced to a minimal case over loopback.

All six are fixed; each test keeps its bug from coming back.  The fixes:
1. the engine keeps an error reported with bytes still queued
   (``Receiver.deferred_err``) and raises it once they are delivered;
2. a starved skip-hint receive is returned to ``pump()``; 3. the transport
asks a stream reader to copy its queue out when it starves
(``ZCStreamReader._unpin``); 4. ``_on_memory_released`` ignores a closed
loop; 5. on uvloop, any drained ``recv()`` (whatever the mode) collects
SO_ERROR, and a pump at its budget checks SO_ERROR and reads on to the
error; 6. the sender reaps with the socket's timeout set to 0.

1. Bytes queued before a reset are lost with ``zerocopy='always'`` or
   ``'auto'``.  ``getsockopt(TCP_ZEROCOPY_RECEIVE)`` reports (and clears)
   the pending socket error in ``zc.err`` on every call, also when bytes
   are still queued behind the ones it returned (``zc.inq > 0``); the
   engine raises it at once (``Receiver._zc_round``), so whatever the
   kernel still held is never delivered.  Plain ``recv()`` returns every
   queued byte before the error, and so does ``zerocopy='never'``.  Seen in
   the suite whenever a reset lands while more than one receive's worth is
   queued: the application paused reading, or simply fell behind
   (test_peers.py ``TestReset``, test_anyio_peers.py
   ``test_reset_mid_frame``).
2. With ``on_exhausted='pause'``, bytes the kernel cannot map (a plain
   peer, or MTU 1500) make the transport spin instead of pausing.  In
   ``Receiver._zc_round`` the skip-hint bytes are read with
   ``self._copy_round(skip)``; when every buffer is pinned that returns
   ``_STARVED``, which ``if n > 0: got += n`` drops, so ``pump()`` returns 0
   ("nothing to read") on a socket that is still readable: the
   level-triggered reader fires again at once, forever, at 100% CPU
   (a million receive calls in three seconds), and reading never pauses.
3. A ``ZCStreamReader`` with ``on_exhausted='pause'`` deadlocks on a frame
   larger than what it may pin: the partial frame it queues holds the
   pooled memory, the transport starves waiting for it to be released,
   and ``readexactly`` waits for the rest forever.  (aiozc.anyio's stream
   copies its queue out once in that case; the asyncio reader does not.)
4. Releasing a view after the event loop closed, when its transport was
   starved (``on_exhausted='pause'``) and never closed (an application
   that died, or ``asyncio.run`` ending with the connection open): the
   engine's ``on_release`` calls ``ZCTransport._on_memory_released``, whose
   ``loop.call_soon_threadsafe`` raises "Event loop is closed", printed as
   an unraisable exception ("Exception ignored in aiozc on_release
   callback") for every such release.
5. On uvloop, a reset can hang a connection forever.  libuv treats
   EPOLLERR as fatal: uvloop runs the reader once more and closes the poll
   handle, so that one ``_read_ready`` must reach the error, and
   ``Receiver.pump()`` collects a pending error after a drained receive
   only ``if self.eager_errors and self._mode == MODE_COPY``.
   Three ways past it, each leaving ECONNRESET pending in SO_ERROR,
   ``_reader_on=True`` and ``connection_lost`` never called (fd, window
   and views' memory held):

   a. the pump stops at its 1 MiB budget with bytes still queued (copy
      mode; the test below: 3 MiB queued, 1 MiB delivered, then silence);
   b. a zerocopy-mode connection whose regions are all pinned receives by
      copy (``_zc_round`` -> ``_copy_round``, ``exhausted_receives``): its
      drained recv is not checked because ``_mode`` is MODE_ZC (seen in
      _scenarios.py ``release_after_close`` over loopback on uvloop, about
      one run in two: all 8 MiB received, 0 unread, SO_ERROR=104);
   c. 'auto' probing: ``_probe_sample`` switches ``_mode`` back to MODE_ZC
      in the round whose recv drained the queue (the soak, on 'auto'
      connections: 2 in 90,000 sessions, mode 'zerocopy', SO_ERROR=104).
6. ``aiozc.testing.ZeroCopySender`` on a socket with a timeout
   (``settimeout``, or ``socket.setdefaulttimeout``): its non-blocking reap,
   ``recvmsg(MSG_ERRQUEUE | MSG_DONTWAIT)``, goes through Python's timeout
   machinery, which polls for POLLIN before giving up: a reap that finds
   the error queue empty waits out the whole timeout, then raises
   ``TimeoutError: timed out`` out of ``send()`` (aiozc/testing, ``_reap``).
"""

from __future__ import annotations

import asyncio
import gc
import random
import socket
import struct
import sys
import threading
import time
import warnings
from typing import Any

import anyio
import pytest

import aiozc
from aiozc import ZCConfig, ZCProtocol
from aiozc.anyio import ZCSocketStream
from aiozc.testing import ZeroCopySender
from support import wait_acked

QUEUED = 100_000  # more than one receive takes with the default config
PAUSE = ZCConfig(zerocopy="always", window_size=1 << 20, region_size=128 * 1024,
                 max_pinned_bytes=512 * 1024, on_exhausted="pause")


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        theirs, _ = server.accept()
    return ours, theirs


def _reset_after_queueing(theirs: socket.socket, ours: socket.socket) -> None:
    """Send QUEUED bytes, wait until they sit in our socket, then RST, and
    wait until our socket has seen it (bytes queued behind a reset).

    Waited for in the kernel, not slept for: on a loaded machine loopback's
    delivery (softirq work, left to ksoftirqd) can take longer than any
    sleep, and an RST sent with bytes unacked discards them.
    """
    theirs.sendall(b"x" * QUEUED)
    wait_acked(theirs)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()
    wait_tcp_closed(ours)


def wait_tcp_closed(sock: socket.socket, timeout: float = 30.0) -> None:
    """Wait until ``sock`` is in TCP_CLOSE (it received the RST), without
    reading SO_ERROR (which would clear the error the receiver must see)."""
    deadline = time.monotonic() + timeout
    while sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_CLOSE:
        assert time.monotonic() < deadline, "the RST never arrived"
        time.sleep(0.001)


_TCP_CLOSE = 7


class Counter(ZCProtocol):
    def __init__(self) -> None:
        self.received = 0
        self.exc: BaseException | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        self.received += len(data)
        data.release()

    def connection_lost(self, exc: Exception | None) -> None:
        self.exc = exc
        self.lost.set_result(None)


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["always", "auto", "never"])
async def test_bytes_queued_before_a_reset_are_delivered(policy: str) -> None:
    async def main() -> Counter:
        ours, theirs = _pair()
        transport, proto = await aiozc.create_connection(
            Counter, sock=ours, config=ZCConfig(zerocopy=policy))  # type: ignore[arg-type]
        assert isinstance(proto, Counter)
        transport.pause_reading()
        await asyncio.get_running_loop().run_in_executor(None, _reset_after_queueing, theirs,
                                                         ours)
        transport.resume_reading()
        await proto.lost
        return proto

    proto = await main()
    assert isinstance(proto.exc, ConnectionResetError), proto.exc
    assert proto.received == QUEUED


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["always", "never"])
@pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
     pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
     pytest.param("trio", id="trio")],
)
async def test_anyio_bytes_queued_before_a_reset_are_delivered(policy: str) -> None:
    ours, theirs = _pair()
    async with ZCSocketStream(ours, config=ZCConfig(zerocopy=policy)) as stream:  # type: ignore[arg-type]
        await anyio.to_thread.run_sync(_reset_after_queueing, theirs, ours)
        received = 0
        with pytest.raises(anyio.BrokenResourceError):
            while True:
                received += len(await stream.receive(1 << 20))
    assert received == QUEUED


class Sending:
    """``theirs.sendall(data)`` then a FIN, in a daemon thread.

    ``stop()`` shuts the socket down, which wakes a sendall blocked on a
    receiver that stopped reading (close() alone would not), joins the
    thread and closes the socket: a failing test never hangs on it.
    """

    def __init__(self, theirs: socket.socket, data: bytes) -> None:
        self.theirs = theirs
        self.thread = threading.Thread(target=self._run, args=(data,), daemon=True)
        self.thread.start()

    def _run(self, data: bytes) -> None:
        try:
            self.theirs.sendall(data)
            self.theirs.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stop(self) -> None:
        try:
            self.theirs.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(10)
        self.theirs.close()


async def _until_starved(transport: aiozc.ZCTransport, timeout: float = 30.0) -> None:
    """Wait until a receive found every buffer pinned (``on_exhausted='pause'``:
    the transport starves from then on).  Polled rather than slept for: how
    long the peer takes to fill the bound depends on the CPU it gets."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while transport.stats.exhausted_receives == 0:
        assert loop.time() < deadline, f"never starved: {transport.stats}"
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_pause_policy_pauses_instead_of_spinning() -> None:
    """Views held past max_pinned_bytes, with bytes the kernel cannot map:
    reading must pause (a few receive calls), not spin."""

    class Hoarder(Counter):
        def __init__(self) -> None:
            super().__init__()
            self.views: list[memoryview] = []
            self.hoarding = True

        def data_received(self, data: memoryview) -> None:  # type: ignore[override]
            self.received += len(data)
            if self.hoarding:
                self.views.append(data)
            else:
                data.release()

    async def main() -> tuple[int, int, int]:
        ours, theirs = _pair()
        sending = Sending(theirs, b"z" * (4 << 20))
        transport, proto = await aiozc.create_connection(Hoarder, sock=ours, config=PAUSE)
        assert isinstance(proto, Hoarder) and isinstance(transport, aiozc.ZCTransport)
        try:
            await _until_starved(transport)  # the bound is full: reading pauses
            calls = transport.stats.receive_calls
            await asyncio.sleep(0.5)  # paused: no receive at all meanwhile
            idle_calls = transport.stats.receive_calls - calls
            held = proto.received
            proto.hoarding = False
            for view in proto.views:
                view.release()
            proto.views.clear()
            await asyncio.wait_for(asyncio.shield(proto.lost), 10)
        finally:
            transport.abort()
            sending.stop()
        return held, idle_calls, proto.received

    held, idle_calls, received = await main()
    assert held < 4 << 20
    assert idle_calls < 100, f"{idle_calls} receive calls in 0.5 s while starved"
    assert received == 4 << 20


@pytest.mark.asyncio
async def test_stream_reader_frame_larger_than_the_pinned_bound() -> None:
    """Found by test_random.py::test_reader_splits, reduced: copy slabs of
    256 KiB, 256 KiB pinnable.  The reader holds the start of the stream
    (readexactly(1) queued a whole receive), then waits for a 300 KiB frame:
    the first slab fills with it and the next would pass the bound."""
    config = ZCConfig(zerocopy="never", receive_size=64 * 1024,
                      max_pinned_bytes=256 * 1024, on_exhausted="pause")
    data = random.Random(5).randbytes(1 << 20)

    async def main() -> bytes:
        ours, theirs = _pair()
        sending = Sending(theirs, data)
        reader, writer = await aiozc.open_connection(sock=ours, config=config)
        try:
            first = await reader.readexactly(1)
            try:
                frame = await asyncio.wait_for(reader.readexactly(300 * 1024), 5)
            except TimeoutError:
                stats = writer.transport.get_extra_info("aiozc_stats")
                raise AssertionError(
                    f"readexactly(300 KiB) hung: reader {reader!r}, "
                    f"views_outstanding={stats.views_outstanding}, "
                    f"bytes_pinned={stats.bytes_pinned}, "
                    f"exhausted_receives={stats.exhausted_receives}") from None
        finally:
            writer.transport.abort()
            sending.stop()
        return first + frame

    assert (await main()) == data[:1 + 300 * 1024]


def test_release_after_the_loop_closed_under_a_starved_transport(loop_name: str) -> None:
    from support import LOOPS

    unraisable: list[str] = []  # (not the exceptions: their frames hold the transport)

    async def starve() -> tuple[Any, list[memoryview], Sending]:
        ours, theirs = _pair()
        sending = Sending(theirs, b"z" * (4 << 20))
        views: list[memoryview] = []

        class Keeper(ZCProtocol):
            def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                views.append(data)

        transport, _ = await aiozc.create_connection(Keeper, sock=ours, config=PAUSE)
        assert isinstance(transport, aiozc.ZCTransport)
        await _until_starved(transport)  # the pinned bound is reached
        return transport, views, sending

    hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(f"{u.err_msg}: {u.exc_value!r}")
    transport: Any = None
    sending: Sending | None = None
    try:
        with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
            transport, views, sending = runner.run(starve())
        # The loop is closed; the application lets go of its views.
        for view in views:
            view.release()
    finally:
        sys.unraisablehook = hook
        if sending is not None:
            sending.stop()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # the unclosed transport
            del transport
            gc.collect()
    assert not unraisable, unraisable


@pytest.mark.asyncio
@pytest.mark.parametrize("policy", ["never", "always"])
async def test_reset_behind_more_than_a_pump_budget(policy: str) -> None:
    size = 3 << 20  # three times Receiver's PUMP_BUDGET

    async def main() -> Counter:
        with socket.create_server(("127.0.0.1", 0)) as server:
            ours = socket.socket()
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)  # room to queue it
            ours.connect(server.getsockname())
            theirs, _ = server.accept()
        transport, proto = await aiozc.create_connection(
            Counter, sock=ours, config=ZCConfig(zerocopy=policy))  # type: ignore[arg-type]
        assert isinstance(proto, Counter)
        transport.pause_reading()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, theirs.sendall, b"r" * size)
        await loop.run_in_executor(None, wait_acked, theirs)  # all 3 MiB in our socket
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        theirs.close()
        await loop.run_in_executor(None, wait_tcp_closed, ours)  # ... and the RST behind them
        transport.resume_reading()
        try:
            await asyncio.wait_for(asyncio.shield(proto.lost), 5)
        except TimeoutError:
            transport.abort()
            await asyncio.sleep(0.01)
            raise AssertionError(f"hung after {proto.received} of {size} bytes") from None
        return proto

    proto = await main()
    assert isinstance(proto.exc, ConnectionResetError), proto.exc
    assert proto.received == size


def test_zerocopy_sender_on_a_socket_with_a_timeout() -> None:
    ours, theirs = _pair()
    got: list[int] = []

    def drain() -> None:
        n = 0
        while chunk := theirs.recv(1 << 20):
            n += len(chunk)
        got.append(n)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        ours.settimeout(2.0)
        sender = ZeroCopySender(ours)
        started = time.monotonic()
        for _ in range(4):
            sender.send(b"y" * (256 * 1024))
        sender.flush()
        elapsed = time.monotonic() - started
    finally:
        ours.close()
        reader.join(10)
        theirs.close()
    assert got == [1 << 20]
    # The bug waited out the socket's whole timeout (2 s) in a reap; 1 MiB
    # over loopback takes milliseconds, even on a loaded machine.
    assert elapsed < 2.0, f"1 MiB took {elapsed:.1f}s (the socket's timeout is 2 s)"
