"""ZCTransport.write() with MSG_ZEROCOPY: integrity, holds, completions, fallbacks.

Every test runs on the stdlib loop and on uvloop (the ``run`` fixture), over
loopback, against a real peer thread (``Sink``) that hashes what it
receives.  Loopback always reports its completions as copied (the kernel
copies at delivery), so tests of the zerocopy path itself use
``send_zerocopy='always'``, which never falls back.

Holds are checked with ``Tracked``: ``bytes`` that record their own
deallocation.  ``bytes`` cannot be weakly referenced, and a check that
really fails when a buffer leaks (or is released before its completion)
needs the object itself to say when it goes.
"""

from __future__ import annotations

import array
import asyncio
import gc
import hashlib
import json
import mmap
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

import aiozc
from aiozc import ZCConfig, ZCProtocol, ZCTransport
from aiozc._zerocopy_send import immutable_view

from support import (Peer, count_fds, crowded, epoll_watchers, inq, loop_kind, payload,
                     run_module, sha, watched_by_loop)

MiB = 1 << 20
KiB = 1 << 10
ROOT = Path(__file__).resolve().parent.parent
ALWAYS = ZCConfig(send_zerocopy="always")


class Tracked(bytes):
    """``bytes`` that record their deallocation in ``Tracked.alive``."""

    alive: ClassVar[set[int]] = set()

    def __new__(cls, data: bytes) -> Tracked:
        obj = super().__new__(cls, data)
        cls.alive.add(id(obj))
        return obj

    def __del__(self) -> None:
        Tracked.alive.discard(id(self))


@pytest.fixture(autouse=True)
def _no_tracked_left() -> Any:
    Tracked.alive.clear()
    yield
    gc.collect()
    assert not Tracked.alive, f"{len(Tracked.alive)} written buffers were never released"


@dataclass
class Sink:
    """A blocking peer in a thread that reads and hashes everything.

    ``gate``: read nothing until it is set (so sends stay pending; with a
    small ``rcvbuf`` the kernel's queues fill quickly).  ``reply``: after
    every ``reply_every`` bytes, send ``reply`` back.  ``finish``: 'eof'
    (read to EOF, then close) or 'reset' (once the gate opens, reset the
    connection without reading).
    """

    gate: threading.Event | None = None
    rcvbuf: int | None = None
    reply: bytes = b""
    reply_every: int = 0
    finish: str = "eof"
    received: int = 0
    error: BaseException | None = None
    hasher: Any = field(default_factory=hashlib.sha256)
    listener: socket.socket = field(default_factory=socket.socket)
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.rcvbuf is not None:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()
        return host, port

    def _serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                if self.gate is not None:
                    self.gate.wait(30)
                if self.finish == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    return
                next_reply = self.reply_every
                while chunk := conn.recv(1 << 20):
                    self.hasher.update(chunk)
                    self.received += len(chunk)
                    while self.reply_every and self.received >= next_reply:
                        conn.sendall(self.reply)
                        next_reply += self.reply_every
        except BaseException as exc:
            self.error = exc
        finally:
            self.listener.close()

    async def join(self) -> None:
        assert self.thread is not None
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 30)
        assert not self.thread.is_alive(), "sink thread hung"
        if self.error is not None:
            raise self.error

    @property
    def digest(self) -> str:
        return str(self.hasher.hexdigest())


class Writer(ZCProtocol):
    """Writes; records flow control, what comes back, and the end."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: ZCTransport = None  # type: ignore[assignment]
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.received = bytearray()
        self.got_data = asyncio.Event()
        self.pauses = 0
        self.resumes = 0
        self._resumed: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, ZCTransport)
        self.transport = transport

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        self.received += data
        data.release()
        self.got_data.set()

    def eof_received(self) -> bool:
        return True

    def pause_writing(self) -> None:
        self.pauses += 1
        self._resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self.resumes += 1
        assert self._resumed is not None
        self._resumed.set_result(None)
        self._resumed = None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def drain(self) -> None:
        """Wait until writing is resumed (at once if it is not paused)."""
        if self._resumed is not None:
            await self._resumed

    async def flush(self) -> None:
        """Wait until nothing is queued or held (high-water mark 0)."""
        self.transport.set_write_buffer_limits(high=0)
        await self.drain()
        assert self.transport.get_write_buffer_size() == 0


async def connect(sink: Sink, config: ZCConfig | None = ALWAYS) -> tuple[ZCTransport, Writer]:
    transport, proto = await aiozc.create_connection(Writer, *sink.address, config=config)
    assert isinstance(transport, ZCTransport) and isinstance(proto, Writer)
    return transport, proto


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of loopback TCP sockets (socketpair() is AF_UNIX only)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    return a, b


# tcp_info.tcpi_state (its first byte), and the kernel's TCP_CLOSE.
_TCP_CLOSE = 7


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def send_all(chunks: list[Any], config: ZCConfig = ALWAYS) -> tuple[Sink, aiozc.ZCStats]:
    """Write every chunk without waiting, close, and return the sink and final stats."""
    sink = Sink()
    transport, proto = await connect(sink, config)
    transport.set_write_buffer_limits(high=1 << 40)  # everything in flight at once
    for chunk in chunks:
        transport.write(chunk)
    transport.close()
    assert await proto.lost is None
    await sink.join()
    return sink, transport.stats


SIZES = [1, 4095, 65535, 65536, 3 * 65536 + 7, MiB + 3, 16 * MiB]


class TestIntegrity:
    """Every byte arrives, in order, whichever way each write went."""

    @pytest.mark.asyncio
    @pytest.mark.parametrize("size", SIZES)
    @pytest.mark.parametrize("policy", ["always", "auto", "never"])
    async def test_every_size(self, size: int, policy: str) -> None:
        data = payload(size, seed=size)
        config = ZCConfig(send_zerocopy=policy)  # type: ignore[arg-type]
        sink, stats = await send_all([data], config)
        assert sink.digest == sha(data) and sink.received == size
        assert stats.bytes_sent_zerocopy + stats.bytes_sent_copied == size
        assert stats.zerocopy_sends_pending == 0
        if policy == "always":
            assert stats.bytes_sent_zerocopy == size and stats.bytes_write_buffered == 0
            assert stats.send_fallback_reason is None
        elif policy == "never" or size < config.send_zerocopy_threshold:
            assert stats.bytes_sent_zerocopy == 0
        else:
            # Zerocopy from the start; a write the socket takes in many
            # pieces may see loopback's copied completions and finish by copy.
            assert stats.bytes_sent_zerocopy > 0

    @pytest.mark.asyncio
    async def test_mixed_writes_in_order(self) -> None:
        """Zerocopy, copied and queued writes interleave in the order written."""
        rnd = random.Random(3)
        blob = payload(24 * MiB, seed=4)
        chunks: list[Any] = []
        pos = 0
        while pos < len(blob):
            n = min(len(blob) - pos, rnd.choice([1, 700, 4096, 70000, 300000, MiB + 1]))
            piece = blob[pos:pos + n]
            kind = rnd.randrange(5)
            if kind == 0:
                chunks.append(piece)  # bytes: zerocopy
            elif kind == 1:
                chunks.append(bytearray(piece))  # mutable: copied
            elif kind == 2:
                chunks.append(memoryview(bytearray(piece)))  # writable view: copied
            elif kind == 3:
                chunks.append(memoryview(blob)[pos:pos + n])  # read-only view of bytes
            else:
                chunks.append(array.array("B", piece))  # another exporter: rejected
            pos += n
        chunks = [c if not isinstance(c, array.array) else memoryview(c) for c in chunks]
        sink, stats = await send_all(chunks)
        assert sink.digest == sha(blob)
        immutable = sum(len(c) for c in chunks
                        if isinstance(c, bytes)
                        or (isinstance(c, memoryview) and c.readonly))
        assert stats.bytes_sent_zerocopy == immutable
        assert stats.bytes_sent_copied == len(blob) - immutable

    @pytest.mark.asyncio
    async def test_writelines_sends_big_buffers_as_themselves(self) -> None:
        parts = [payload(n, seed=n) for n in (10, MiB, 20, 3 * MiB, 5)]

        async def main() -> tuple[Sink, aiozc.ZCStats]:
            sink = Sink()
            transport, proto = await connect(sink, ZCConfig())  # auto: 64 KiB threshold
            transport.writelines(parts)
            await proto.flush()
            stats = transport.stats
            transport.close()
            await proto.lost
            await sink.join()
            return sink, stats

        sink, stats = await main()
        assert sink.digest == sha(b"".join(parts))
        assert stats.bytes_sent_zerocopy == 4 * MiB
        assert stats.bytes_sent_copied == 35

    @pytest.mark.asyncio
    async def test_mutable_buffers_are_copied_at_write(self) -> None:
        """A bytearray changed right after write() goes out as it was."""
        original = payload(8 * MiB, seed=9)

        async def main() -> tuple[Sink, aiozc.ZCStats]:
            gate = threading.Event()
            sink = Sink(gate=gate, rcvbuf=64 * KiB)
            transport, proto = await connect(sink)
            data = bytearray(original)
            transport.write(data)
            transport.write(memoryview(data))
            data[:] = bytes(len(data))  # the caller reuses its buffer at once
            gate.set()
            await proto.flush()
            stats = transport.stats
            transport.close()
            await proto.lost
            await sink.join()
            return sink, stats

        sink, stats = await main()
        assert sink.digest == sha(original + original)
        assert stats.bytes_sent_zerocopy == 0
        assert stats.bytes_write_buffered > 0  # the socket could not take it all


class TestEligibility:
    """Which buffers may be sent without a copy (no event loop needed)."""

    def test_immutable(self) -> None:
        data = b"x" * 100

        class Sub(bytes):
            pass

        for buf in (data, Sub(data), memoryview(data), memoryview(data)[10:],
                    memoryview(memoryview(data)), memoryview(data).toreadonly(),
                    memoryview(b"\0" * 64).cast("I")):
            view = immutable_view(buf)
            assert view is not None and view.readonly and view.format == "B"
            assert view is not buf and view.nbytes == memoryview(buf).nbytes

    def test_mutable_or_unknown(self) -> None:
        ba = bytearray(100)
        with mmap.mmap(-1, 4096) as m:
            ro_map = memoryview(m).toreadonly()
            for buf in (ba, memoryview(ba), memoryview(ba).toreadonly(),
                        memoryview(array.array("B", ba)).toreadonly(), ro_map,
                        memoryview(b"x" * 100)[::2]):
                assert immutable_view(buf) is None
            ro_map.release()

    @pytest.mark.asyncio
    async def test_views_from_the_receive_engine(self) -> None:
        async def main() -> list[bool]:
            peer = Peer(payload(3 * MiB), zerocopy=True).start()
            verdicts: list[bool] = []
            done = asyncio.get_running_loop().create_future()

            class Check(ZCProtocol):
                def data_received(self, data: memoryview) -> None:  # type: ignore[override]
                    view = immutable_view(data)
                    verdicts.append(view is not None)
                    if view is not None:
                        view.release()
                    data.release()

                def connection_lost(self, exc: Exception | None) -> None:
                    done.set_result(None)

            await aiozc.create_connection(Check, "127.0.0.1", peer.port,
                                          config=ZCConfig(zerocopy="always"))
            await done
            await asyncio.get_running_loop().run_in_executor(None, peer.join)
            return verdicts

        verdicts = await main()
        assert verdicts and all(verdicts)


class TestHolds:
    """A buffer sent zerocopy is held until its completion, then released once."""

    @pytest.mark.asyncio
    async def test_held_until_completion_then_released(self) -> None:
        # 96 KiB buffers live on the malloc heap (under glibc's mmap
        # threshold): released early, their memory would be reused by the
        # filler below and the sink would see the filler's bytes.
        blobs = [payload(96 * KiB, seed=i) for i in range(64)]

        async def main() -> Sink:
            gate = threading.Event()
            sink = Sink(gate=gate, rcvbuf=64 * KiB)
            transport, proto = await connect(sink)
            transport.set_write_buffer_limits(high=1 << 40)
            for blob in blobs:
                transport.write(Tracked(blob))
            await asyncio.sleep(0.05)
            stats = transport.stats
            assert stats.zerocopy_sends_pending > 0
            assert transport.get_write_buffer_size() > 0
            # The test holds no reference: only the transport keeps them.
            assert len(Tracked.alive) > 0
            filler = [bytes([i]) * (96 * KiB) for i in range(256)]
            gate.set()
            await proto.flush()
            del filler
            gc.collect()
            assert not Tracked.alive
            assert transport.stats.zerocopy_sends_pending == 0
            transport.close()
            await proto.lost
            await sink.join()
            return sink

        sink = await main()
        assert sink.digest == sha(b"".join(blobs))

    @pytest.mark.asyncio
    async def test_many_writes_in_flight(self) -> None:
        rnd = random.Random(11)
        blobs = [payload(rnd.randint(1, 256 * KiB), seed=i) for i in range(600)]

        async def main() -> tuple[Sink, aiozc.ZCStats, int]:
            sink = Sink()
            transport, proto = await connect(sink)
            transport.set_write_buffer_limits(high=1 << 40)
            for blob in blobs:
                transport.write(Tracked(blob))
            await proto.flush()
            gc.collect()
            assert not Tracked.alive
            stats = transport.stats
            notifications = transport._zc.notifications
            transport.close()
            await proto.lost
            await sink.join()
            return sink, stats, notifications

        sink, stats, notifications = await main()
        assert sink.digest == sha(b"".join(blobs))
        assert stats.bytes_sent_zerocopy == sum(map(len, blobs))
        assert stats.zerocopy_sends_pending == 0
        assert stats.zerocopy_completions_copied >= len(blobs)  # loopback copies
        # Completions of consecutive sends arrive coalesced.
        assert notifications < stats.zerocopy_completions_copied

    @pytest.mark.asyncio
    async def test_caller_may_release_its_view_at_once(self) -> None:
        """The transport holds its own view: ``with data: write(data)`` is safe."""
        blob = payload(4 * MiB, seed=12)

        async def main() -> tuple[Sink, int]:
            sink = Sink(gate=threading.Event(), rcvbuf=64 * KiB)
            transport, proto = await connect(sink)
            base = sys.getrefcount(blob)
            view = memoryview(blob)
            with view:
                transport.write(view)
            assert sys.getrefcount(blob) > base  # held through the transport's view
            assert sink.gate is not None
            sink.gate.set()
            await proto.flush()
            after = sys.getrefcount(blob)
            transport.close()
            await proto.lost
            await sink.join()
            return sink, after - base

        sink, leaked = await main()
        assert sink.digest == sha(blob)
        assert leaked == 0


class TestFallbacks:
    """When and why writes go by copy."""

    @pytest.mark.asyncio
    async def test_auto_falls_back_on_loopback(self) -> None:
        blobs = [payload(MiB, seed=i) for i in range(48)]

        async def main() -> tuple[Sink, aiozc.ZCStats]:
            sink = Sink()
            transport, proto = await connect(sink, ZCConfig())
            for blob in blobs:  # one at a time: completions arrive in between
                transport.write(blob)
                await proto.flush()
            stats = transport.stats
            transport.close()
            await proto.lost
            await sink.join()
            return sink, stats

        sink, stats = await main()
        assert sink.digest == sha(b"".join(blobs))
        limit = ZCConfig().send_zerocopy_copied_limit
        assert stats.send_fallback_reason is not None
        assert "copied" in stats.send_fallback_reason
        assert stats.zerocopy_completions_copied >= limit
        assert stats.bytes_sent_zerocopy == limit * MiB  # one completion per write
        assert stats.bytes_sent_copied == (48 - limit) * MiB

    @pytest.mark.asyncio
    async def test_always_keeps_zerocopy(self) -> None:
        blobs = [payload(MiB, seed=i) for i in range(16)]
        sink, stats = await send_all(blobs)
        assert stats.send_fallback_reason is None
        assert stats.bytes_sent_zerocopy == 16 * MiB and stats.bytes_sent_copied == 0
        assert stats.zerocopy_completions_copied >= 16

    @pytest.mark.asyncio
    async def test_threshold(self) -> None:
        config = ZCConfig(send_zerocopy_threshold=100 * KiB)
        small, big = payload(100 * KiB - 1, seed=1), payload(100 * KiB, seed=2)
        sink, stats = await send_all([small, big], config)
        assert sink.digest == sha(small + big)
        assert stats.bytes_sent_zerocopy == len(big)
        assert stats.bytes_sent_copied == len(small)

    @pytest.mark.asyncio
    async def test_unix_socket_refuses_so_zerocopy(self) -> None:
        data = payload(2 * MiB, seed=5)

        async def main() -> tuple[bytes, aiozc.ZCStats]:
            ours, theirs = socket.socketpair()
            transport, proto = await aiozc.connect_accepted_socket(Writer, ours, config=ALWAYS)
            assert isinstance(transport, ZCTransport) and isinstance(proto, Writer)
            received = bytearray()

            def read() -> None:
                while chunk := theirs.recv(1 << 20):
                    received.extend(chunk)

            reader = asyncio.get_running_loop().run_in_executor(None, read)
            transport.write(data)
            transport.close()
            await proto.lost
            await reader
            theirs.close()
            return bytes(received), transport.stats

        received, stats = await main()
        assert received == data
        assert stats.bytes_sent_zerocopy == 0 and stats.bytes_sent_copied == len(data)
        assert stats.send_fallback_reason is not None
        assert "SO_ZEROCOPY" in stats.send_fallback_reason

    def test_config_validation(self) -> None:
        with pytest.raises(ValueError):
            ZCConfig(send_zerocopy="sometimes")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            ZCConfig(send_zerocopy_threshold=-1)
        with pytest.raises(ValueError):
            ZCConfig(send_zerocopy_copied_limit=0)


# Run in a private network namespace whose net.core.optmem_max (per
# namespace since Linux 6.8) leaves room for only a few notification skbs.
_ENOBUFS_CHILD = r"""
import asyncio, hashlib, json, random, socket, sys, threading
import uvloop
import aiozc

async def main():
    rnd = random.Random(5)
    data = rnd.randbytes(32 << 20)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    digest = []

    def sink():
        conn, _ = listener.accept()
        h = hashlib.sha256()
        with conn:
            while chunk := conn.recv(1 << 20):
                h.update(chunk)
        digest.append(h.hexdigest())

    th = threading.Thread(target=sink)
    th.start()
    loop = asyncio.get_running_loop()

    class P(aiozc.ZCProtocol):
        def __init__(self):
            self.lost = loop.create_future()
            self.waiter = None
        def data_received(self, d):
            d.release()
        def pause_writing(self):
            self.waiter = loop.create_future()
        def resume_writing(self):
            self.waiter.set_result(None)
            self.waiter = None
        def connection_lost(self, exc):
            self.lost.set_result(exc)

    t, p = await aiozc.create_connection(
        P, *listener.getsockname(), config=aiozc.ZCConfig(send_zerocopy="always"))
    t.set_write_buffer_limits(high=1 << 40)
    i = 0
    while i < len(data):
        n = rnd.randint(1, 512 << 10)
        t.write(data[i:i + n])
        i += n
    t.set_write_buffer_limits(high=0)
    if p.waiter is not None:
        await p.waiter
    s = t.stats
    t.close()
    await p.lost
    await loop.run_in_executor(None, th.join)
    return {"ok": digest == [hashlib.sha256(data).hexdigest()], "size": len(data),
            "zerocopy": s.bytes_sent_zerocopy, "copied": s.bytes_sent_copied,
            "enobufs": s.zerocopy_enobufs, "pending": s.zerocopy_sends_pending}

factory = uvloop.new_event_loop if sys.argv[1] == "uvloop" else asyncio.SelectorEventLoop
with asyncio.Runner(loop_factory=factory) as runner:
    print(json.dumps(runner.run(asyncio.wait_for(main(), 60))))
"""


class TestENOBUFS:
    """The kernel refuses a zerocopy send when option memory is full."""

    def test_enobufs_falls_back_for_that_write(self, loop_name: str) -> None:
        if shutil.which("unshare") is None or shutil.which("ip") is None:
            pytest.skip("needs unshare(1) and ip(8) for a private network namespace")
        script = (
            "ip link set lo up && sysctl -qw net.core.optmem_max=2048 && "
            f'exec "{sys.executable}" -c "$CHILD" {loop_name}'
        )
        try:
            proc = subprocess.run(
                ["unshare", "--net", "sh", "-c", script], cwd=ROOT, capture_output=True,
                text=True, timeout=90,
                env={"CHILD": _ENOBUFS_CHILD, "PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
        except subprocess.TimeoutExpired:
            pytest.fail("the child in the network namespace hung")
        if proc.returncode != 0 and ("Operation not permitted" in proc.stderr
                                     or "unshare failed" in proc.stderr):
            pytest.skip(f"no private network namespace here: {proc.stderr.strip()[:200]}")
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["ok"], result
        assert result["enobufs"] > 0, result
        assert result["zerocopy"] > 0, result  # the first sends fit
        assert result["zerocopy"] + result["copied"] == result["size"], result
        assert result["pending"] == 0, result


class TestClosing:
    """close() and abort() with zerocopy sends in the kernel."""

    @pytest.mark.asyncio
    async def test_close_waits_for_completions(self) -> None:
        blobs = [payload(96 * KiB, seed=i) for i in range(64)]

        async def main() -> Sink:
            gate = threading.Event()
            sink = Sink(gate=gate, rcvbuf=64 * KiB)
            transport, proto = await connect(sink)
            transport.set_write_buffer_limits(high=1 << 40)
            for blob in blobs:
                transport.write(Tracked(blob))
            transport.close()
            await asyncio.sleep(0.1)
            # Still waiting: the kernel holds sends the peer has not taken.
            assert not proto.lost.done()
            assert transport.get_extra_info("socket").fileno() >= 0
            assert Tracked.alive
            gate.set()
            assert await proto.lost is None
            # connection_lost came only after the last completion.
            assert not Tracked.alive
            assert transport.stats.zerocopy_sends_pending == 0
            assert transport.get_extra_info("socket").fileno() == -1
            await sink.join()
            return sink

        sink = await main()
        assert sink.digest == sha(b"".join(blobs))

    @pytest.mark.asyncio
    async def test_abort_holds_what_the_kernel_took(self) -> None:
        blobs = [payload(96 * KiB, seed=i) for i in range(64)]

        async def main() -> Sink:
            gate = threading.Event()
            sink = Sink(gate=gate, rcvbuf=64 * KiB)
            transport, proto = await connect(sink)
            transport.set_write_buffer_limits(high=1 << 40)
            for blob in blobs:
                transport.write(Tracked(blob))
            await asyncio.sleep(0.05)
            assert transport.stats.zerocopy_sends_pending > 0
            transport.abort()
            assert await proto.lost is None  # at once, as asyncio's abort
            # The socket stays open, shut down, until the kernel is done.
            assert transport.get_extra_info("socket").fileno() >= 0
            assert Tracked.alive
            gate.set()
            await wait_for(lambda: transport.get_extra_info("socket").fileno() == -1)
            gc.collect()
            assert not Tracked.alive
            assert transport.stats.zerocopy_sends_pending == 0
            await sink.join()
            return sink

        sink = await main()
        # What the kernel had taken arrives: a prefix of what was written.
        joined = b"".join(blobs)
        assert 0 < sink.received <= len(joined)
        assert sink.digest == sha(joined[:sink.received])

    @pytest.mark.asyncio
    async def test_abort_with_bytes_unread_resets_at_once(self) -> None:
        # abort() with zerocopy sends in the kernel keeps the fd open (the
        # linger), so the kernel's close() does not run: the transport ends
        # the connection itself, as close() would.  With bytes left unread
        # that is a reset, not a FIN: a peer blocked sending into our full
        # window would otherwise wait out the linger's minute.  The reset
        # drops the write queue, so the completions and the buffers follow.
        loop = asyncio.get_running_loop()
        with socket.socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            transport, proto = await aiozc.create_connection(
                Writer, *listener.getsockname(), config=ALWAYS)
            assert isinstance(transport, ZCTransport) and isinstance(proto, Writer)
            peer, _ = await loop.sock_accept(listener)
        with peer:
            transport.pause_reading()
            peer.sendall(b"x" * 4096)  # never read
            transport.set_write_buffer_limits(high=1 << 40)
            for i in range(32):  # never read by the peer: sends stay pending
                transport.write(Tracked(payload(96 * KiB, seed=i)))
            await wait_for(lambda: inq(transport.get_extra_info("socket")) == 4096)
            assert transport.stats.zerocopy_sends_pending > 0
            transport.abort()
            await proto.lost
            # The peer's side of the connection is reset (TCP_CLOSE), not
            # half-closed (TCP_CLOSE_WAIT, what a FIN leaves).
            await wait_for(lambda: _tcp_state(peer) == _TCP_CLOSE, timeout=5)
            await wait_for(lambda: transport.get_extra_info("socket").fileno() == -1)
        gc.collect()
        assert not Tracked.alive
        assert transport.stats.zerocopy_sends_pending == 0

    @pytest.mark.asyncio
    async def test_abort_resets_after_the_linger_timeout(self,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(aiozc._transport, "_LINGER_TIMEOUT", 0.2)

        async def main() -> None:
            gate = threading.Event()  # never set: the peer reads nothing
            sink = Sink(gate=gate, rcvbuf=64 * KiB)
            transport, proto = await connect(sink)
            transport.set_write_buffer_limits(high=1 << 40)
            for i in range(32):
                transport.write(Tracked(payload(96 * KiB, seed=i)))
            await asyncio.sleep(0.05)
            transport.abort()
            await proto.lost
            await wait_for(lambda: transport.get_extra_info("socket").fileno() == -1)
            gc.collect()
            assert not Tracked.alive
            assert transport.stats.zerocopy_sends_pending == 0
            gate.set()
            with pytest.raises(ConnectionResetError):
                await sink.join()

        await main()

    @pytest.mark.asyncio
    async def test_peer_reset_releases_everything(self) -> None:
        async def main() -> None:
            gate = threading.Event()
            sink = Sink(gate=gate, rcvbuf=64 * KiB, finish="reset")
            transport, proto = await connect(sink)
            transport.set_write_buffer_limits(high=1 << 40)
            for i in range(32):
                transport.write(Tracked(payload(96 * KiB, seed=i)))
            await asyncio.sleep(0.05)
            gate.set()
            await sink.join()
            exc = await proto.lost
            assert isinstance(exc, ConnectionError), exc
            await wait_for(lambda: transport.get_extra_info("socket").fileno() == -1)
            gc.collect()
            assert not Tracked.alive

        await main()

    @pytest.mark.asyncio
    async def test_no_fd_leak(self) -> None:
        async def one() -> None:
            sink = Sink()
            transport, proto = await connect(sink)
            transport.write(payload(MiB))
            transport.close()
            await proto.lost
            await sink.join()

        async def main() -> tuple[int, int]:
            await one()
            before = count_fds()
            for _ in range(30):
                await one()
            gc.collect()
            return before, count_fds()

        before, after = await main()
        assert after <= before


class TestLoopWakeups:
    """What the error queue wakes on each loop, and that the transport copes."""

    @pytest.mark.asyncio
    async def test_errqueue_raw_behaviour(self) -> None:
        loop_name = loop_kind()
        """Pin down what each loop does with EPOLLERR from a completion.

        The stdlib loop calls the reader every iteration until the error
        queue is read; uvloop calls it once and then stops watching the fd
        for good (libuv stops the poll handle on POLLERR), after which
        add_reader() on the fd raises until remove_reader() is called.
        ZCTransport._rearm() exists for the second.
        """
        async def main() -> tuple[int, bool, str]:
            loop = asyncio.get_running_loop()
            a, b = tcp_pair()
            a.setblocking(False)
            a.setsockopt(socket.SOL_SOCKET, 60, 1)  # SO_ZEROCOPY
            calls = [0]
            loop.add_reader(a.fileno(), lambda: calls.__setitem__(0, calls[0] + 1))
            a.send(b"x" * 10000, 0x4000000)  # MSG_ZEROCOPY
            b.recv(20000)
            for _ in range(5):
                await asyncio.sleep(0.01)
            fired = calls[0]
            b.send(b"data")  # readable now: is the fd still watched?
            before = calls[0]
            for _ in range(5):
                await asyncio.sleep(0.01)
            still_watched = calls[0] > before
            try:
                loop.add_reader(a.fileno(), lambda: None)
                readd = "ok"
            except RuntimeError:
                readd = "RuntimeError"
            loop.remove_reader(a.fileno())
            a.close()
            b.close()
            return fired, still_watched, readd

        fired, still_watched, readd = await main()
        if loop_name == "asyncio":
            assert fired > 3 and still_watched and readd == "ok"
        else:
            assert fired == 1 and not still_watched and readd == "RuntimeError"

    @pytest.mark.asyncio
    @pytest.mark.parametrize("watch", ["alone", "crowded"])
    async def test_reading_continues_after_completions(self, watch: str) -> None:
        """Replies keep arriving while completions come in (uvloop's re-arm
        of a socket the loop watches; the poller's epoll otherwise)."""
        rounds, size = 40, 256 * KiB

        async def main() -> tuple[Sink, Writer, aiozc.ZCStats]:
            sink = Sink(reply=b"ok", reply_every=size)
            transport, proto = await connect(sink)
            assert watched_by_loop(transport) is (watch == "alone" or loop_kind() == "asyncio")
            fd = transport.get_extra_info("socket").fileno()
            watchers = set()
            for i in range(rounds):
                proto.got_data.clear()
                transport.write(payload(size, seed=i))
                await asyncio.wait_for(proto.got_data.wait(), 10)
                while len(proto.received) < 2 * (i + 1):
                    proto.got_data.clear()
                    await asyncio.wait_for(proto.got_data.wait(), 10)
                # The re-arms after the completions leave the socket in one
                # epoll for reading: the loop's, or the poller's, never both.
                await asyncio.sleep(0.002)
                watchers.add(epoll_watchers(fd))
            stats = transport.stats
            assert watchers == {1}, watchers
            transport.close()
            await proto.lost
            await sink.join()
            return sink, proto, stats

        async with crowded(watch == "crowded"):
            sink, proto, stats = await main()
        assert bytes(proto.received) == b"ok" * rounds
        assert stats.bytes_sent_zerocopy == rounds * size
        assert stats.zerocopy_sends_pending == 0

    @pytest.mark.asyncio
    async def test_completions_reaped_while_reading_paused(self) -> None:
        async def main() -> None:
            sink = Sink()
            transport, proto = await connect(sink)
            transport.pause_reading()
            transport.write(Tracked(payload(4 * MiB)))
            # Nothing registered with the loop now: the timer reaps.
            await wait_for(lambda: transport.stats.zerocopy_sends_pending == 0)
            assert transport.get_write_buffer_size() == 0
            gc.collect()
            assert not Tracked.alive
            transport.close()
            await proto.lost
            await sink.join()

        await main()

    @pytest.mark.asyncio
    async def test_completions_reaped_after_peer_eof(self) -> None:
        async def main() -> None:
            ours, theirs = tcp_pair()
            transport, proto = await aiozc.connect_accepted_socket(Writer, ours, config=ALWAYS)
            assert isinstance(transport, ZCTransport) and isinstance(proto, Writer)
            theirs.shutdown(socket.SHUT_WR)  # our side reaches EOF: reader off
            await asyncio.sleep(0.05)
            received = bytearray()

            def read() -> None:
                while chunk := theirs.recv(1 << 20):
                    received.extend(chunk)

            reader = asyncio.get_running_loop().run_in_executor(None, read)
            blob = payload(4 * MiB, seed=8)
            transport.write(Tracked(blob))
            await proto.flush()
            gc.collect()
            assert not Tracked.alive
            transport.close()
            await proto.lost
            await reader
            theirs.close()
            assert received == blob

        await main()


class TestFlowControl:
    """Bytes not yet completed count as buffered."""

    @pytest.mark.asyncio
    async def test_pause_and_resume_follow_completions(self) -> None:
        async def main() -> tuple[Writer, list[int]]:
            gate = threading.Event()
            sink = Sink(gate=gate, rcvbuf=64 * KiB)
            transport, proto = await connect(sink)
            sizes = []
            transport.write(payload(4 * MiB))
            # Whatever the socket took is pending, the rest queued: both count.
            sizes.append(transport.get_write_buffer_size())
            assert proto.pauses == 1 and proto.resumes == 0
            gate.set()
            await proto.drain()
            sizes.append(transport.get_write_buffer_size())
            transport.close()
            await proto.lost
            await sink.join()
            return proto, sizes

        proto, sizes = await main()
        assert sizes[0] == 4 * MiB
        assert proto.resumes == 1
        assert sizes[1] <= 16 * KiB  # the low-water mark

    @pytest.mark.asyncio
    async def test_stream_writer_drain(self) -> None:
        blob = payload(8 * MiB, seed=21)

        async def main() -> tuple[Sink, int]:
            sink = Sink()
            reader, writer = await aiozc.open_connection(*sink.address, config=ALWAYS)
            writer.transport.set_write_buffer_limits(high=0)
            writer.write(Tracked(blob))
            await writer.drain()
            gc.collect()
            left = len(Tracked.alive) + writer.transport.get_write_buffer_size()
            writer.close()
            await writer.wait_closed()
            await sink.join()
            return sink, left

        sink, left = await main()
        assert left == 0
        assert sink.digest == sha(blob)


def _load_proxy() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("zc_proxy", ROOT / "examples" / "zc_proxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestProxy:
    """examples/zc_proxy.py end to end.

    The MSG_ZEROCOPY ``Peer`` is the proxy's target, so its pages reach the
    proxy's target leg, which can map them; the client leg writes each view
    back out with MSG_ZEROCOPY to a client thread that hashes every byte.
    """

    @pytest.mark.asyncio
    @pytest.mark.parametrize("receive", ["always", "never"])
    async def test_forwards_views_without_user_space_copies(self, receive: str) -> None:
        zc_proxy = _load_proxy()
        data = payload(48 * MiB, seed=31)

        async def main() -> tuple[str, Any]:
            peer = Peer(data, zerocopy=True).start()
            proxy = zc_proxy.Proxy(("127.0.0.1", peer.port), ZCConfig(
                zerocopy=receive, send_zerocopy="always"))  # type: ignore[arg-type]
            server = await proxy.start()
            port = server.sockets[0].getsockname()[1]

            def client() -> str:
                h = hashlib.sha256()
                with socket.create_connection(("127.0.0.1", port)) as conn:
                    while chunk := conn.recv(1 << 20):
                        h.update(chunk)
                return h.hexdigest()

            loop = asyncio.get_running_loop()
            digest = await loop.run_in_executor(None, client)
            await loop.run_in_executor(None, peer.join)
            await proxy.wait_idle()
            server.close()
            await server.wait_closed()
            return digest, proxy.reports[0]

        digest, report = await main()
        assert digest == sha(data)
        client, target = report.client, report.target
        assert target.bytes_received == len(data) and report.forwarded == len(data)
        if receive == "always":
            assert target.bytes_mapped > len(data) // 2  # mapped pages were forwarded
        assert client.views_outstanding == 0 and target.views_outstanding == 0
        # Every byte went out as the view it arrived in, with MSG_ZEROCOPY:
        # nothing was copied into a write buffer, nothing sent by plain send().
        assert client.bytes_sent_zerocopy == len(data)
        assert client.bytes_sent_copied == 0 and client.bytes_write_buffered == 0
        assert client.zerocopy_sends_pending == 0
        assert report.copied_in_user_space == 0

    @pytest.mark.asyncio
    @pytest.mark.parametrize("send", ["auto", "always"])
    async def test_demo(self, send: str) -> None:
        zc_proxy = _load_proxy()
        report = await zc_proxy.demo(16, ZCConfig(send_zerocopy=send))  # type: ignore[arg-type]
        assert report.forwarded == 16 * MiB
        t = report.target
        assert t.bytes_sent_zerocopy + t.bytes_sent_copied == 16 * MiB
        if send == "always":
            assert report.copied_in_user_space == 0


@pytest.mark.benchmarks
class TestBenchmarks:
    """``python -m benchmarks.send --quick`` and ``benchmarks.send_threshold
    --quick`` run end to end.  Smoke tests: nothing about speed is asserted;
    every run's bytes are CRC-checked by the benchmark itself."""

    @pytest.mark.timeout(60)
    def test_send_quick(self, tmp_path: Path) -> None:
        out = tmp_path / "send.md"
        proc = run_module(["benchmarks.send", "--quick", "--output", str(out)], timeout=45)
        assert proc.returncode == 0, proc.stderr[-4000:]
        md = out.read_text()
        for loop in ("asyncio", "uvloop"):
            for name in ("aiozc always", "aiozc auto", "aiozc never", "transport.write"):
                assert f"| {loop} | {name} |" in md
            for name in ("aiozc zc_proxy", "plain asyncio proxy"):
                assert f"| {loop} | {name} |" in md
        assert "| 0 B |" in md  # the zc_proxy copied nothing in user space

    @pytest.mark.timeout(60)
    def test_threshold_quick(self, tmp_path: Path) -> None:
        out = tmp_path / "threshold.md"
        proc = run_module(["benchmarks.send_threshold", "--quick", "--output", str(out)],
                          timeout=45)
        assert proc.returncode == 0, proc.stderr[-4000:]
        md = out.read_text()
        assert "## 2. The cost of a zerocopy send" in md
        assert "Break-even" in md or "break-even" in md or "Skipped" in md
