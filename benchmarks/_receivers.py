"""The receivers under test, each over an accepted, connected socket.

Every receiver reads length-prefixed frames (4-byte big-endian length, then
the payload) and CRC32s every payload.  In the ``rpc`` workload it also
writes a 4-byte reply (the payload's CRC) after each frame.  Each one
starts the :class:`Meter` once its connection is set up (which lets the
peer start sending) and stops it after the last frame (and reply): the
clock covers the transfer, not loop or connection set-up.

Peers are written the way a typical application would write them with
that API, without tricks that API does not offer (e.g. the ``Protocol``
one appends to a ``bytearray`` and parses from it).
"""

from __future__ import annotations

import asyncio
import resource
import select
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiozc
from aiozc import ZCConfig, ZCStats
from aiozc._buffer import ViewBuffer
from aiozc._engine import PUMP_EOF, Receiver as Engine

from ._sender import HEADER, Job

Runtime = Literal["asyncio", "uvloop", "anyio-asyncio", "anyio-trio", "blocking"]

#: The peers' BufferedProtocol buffer: CPython's selector transport reads
#: 256 KiB per call, and so does aiozc (ZCConfig.receive_size).
_BUF = 256 * 1024


class Meter:
    """Receiver-process CPU (getrusage, user+sys) and wall time of one run."""

    def __init__(self, go: Callable[[], None]) -> None:
        self._go = go
        self.user = self.sys = self.wall = 0.0
        self._r0: Any = None
        self._w0 = 0.0
        self.stats: ZCStats | None = None

    def start(self) -> None:
        """Start the clocks, then let the peer send."""
        self._r0 = resource.getrusage(resource.RUSAGE_SELF)
        self._w0 = time.perf_counter()
        self._go()

    def stop(self) -> None:
        """Stop the clocks (the first call counts)."""
        if self.wall:
            return
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.wall = time.perf_counter() - self._w0
        self.user = r1.ru_utime - self._r0.ru_utime
        self.sys = r1.ru_stime - self._r0.ru_stime


class _Sink:
    """What every receiver does per frame: CRC it, count it, maybe reply."""

    __slots__ = ("crc", "frames", "need", "rpc", "meter")

    def __init__(self, job: Job, meter: Meter) -> None:
        self.crc = 0
        self.frames = 0
        self.need = job.count
        self.rpc = job.workload == "rpc"
        self.meter = meter


# ---------------------------------------------------------------------------
# asyncio Protocol / BufferedProtocol (stdlib loop, uvloop, aiofastnet)


class BytesFrames(asyncio.Protocol):
    """asyncio.Protocol: bytes in, appended to a bytearray, frames parsed."""

    def __init__(self, sink: _Sink, done: asyncio.Future[None]) -> None:
        self.sink, self.done = sink, done
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None  # set on connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink.meter.start()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        sink = self.sink
        pos, end = 0, len(buf)
        with memoryview(buf) as mv:
            while end - pos >= HEADER:
                size = int.from_bytes(mv[pos:pos + HEADER], "big")
                if end - pos - HEADER < size:
                    break
                pos += HEADER
                sink.crc = zlib.crc32(mv[pos:pos + size], sink.crc)
                pos += size
                sink.frames += 1
                if sink.rpc:
                    assert self.transport is not None
                    self.transport.write((sink.crc & 0xFFFFFFFF).to_bytes(4, "big"))
        del buf[:pos]
        if sink.frames >= sink.need and not self.done.done():
            sink.meter.stop()
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


class BufferedFrames(asyncio.BufferedProtocol):
    """asyncio.BufferedProtocol: receives into its own buffer, parses frames
    in place, moves a partial frame to the front, grows for big frames."""

    def __init__(self, sink: _Sink, done: asyncio.Future[None]) -> None:
        self.sink, self.done = sink, done
        self.buf = bytearray(_BUF)
        self.mv = memoryview(self.buf)
        self.start = self.end = 0
        self.want = HEADER  # bytes needed at start for the next step
        self.transport: asyncio.Transport | None = None  # set on connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink.meter.start()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.end == len(self.buf):
            # Full: move the partial frame down, or grow for a big one.
            n = self.end - self.start
            if self.want > len(self.buf):
                new = bytearray(max(2 * len(self.buf), self.want))
                new[:n] = self.mv[self.start:self.end]
                self.buf, self.mv = new, memoryview(new)
            else:
                self.mv[:n] = self.mv[self.start:self.end]
            self.start, self.end = 0, n
        return self.mv[self.end:]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        mv, pos, end, sink = self.mv, self.start, self.end, self.sink
        while end - pos >= HEADER:
            size = int.from_bytes(mv[pos:pos + HEADER], "big")
            if end - pos - HEADER < size:
                self.want = HEADER + size
                break
            pos += HEADER
            sink.crc = zlib.crc32(mv[pos:pos + size], sink.crc)
            pos += size
            sink.frames += 1
            if sink.rpc:
                assert self.transport is not None
                self.transport.write((sink.crc & 0xFFFFFFFF).to_bytes(4, "big"))
        else:
            self.want = HEADER
        if pos == end:
            pos = end = 0
        self.start, self.end = pos, end
        if sink.frames >= sink.need and not self.done.done():
            sink.meter.stop()
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


class ZCFrames(aiozc.ZCProtocol):
    """aiozc.ZCProtocol: views queued in a ViewBuffer, frames cut from it."""

    def __init__(self, sink: _Sink, done: asyncio.Future[None]) -> None:
        self.sink, self.done = sink, done
        self.vb = ViewBuffer()
        self.size = -1  # payload size of the frame being waited for
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.sink.meter.start()

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        vb, sink = self.vb, self.sink
        vb.append(data)
        while True:
            if self.size < 0:
                if len(vb) < HEADER:
                    break
                self.size = vb.take_int(HEADER)
            if len(vb) < self.size:
                # A frame bigger than what arrived: received whole, straight
                # into one buffer, if the transport can (ZCTransport.gather).
                self.transport.gather(vb, self.size)
                break
            with vb.take(self.size) as frame:
                sink.crc = zlib.crc32(frame, sink.crc)
            self.size = -1
            sink.frames += 1
            if sink.rpc:
                self.transport.write((sink.crc & 0xFFFFFFFF).to_bytes(4, "big"))
        if sink.frames >= sink.need and not self.done.done():
            sink.meter.stop()
            sink.meter.stats = self.transport.stats
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


async def _protocol(cls: type[asyncio.BaseProtocol], connect: str, config: ZCConfig | None,
                    sock: socket.socket, job: Job, meter: Meter) -> int:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    sink = _Sink(job, meter)

    def factory() -> Any:
        return cls(sink, done)  # type: ignore[call-arg]

    if connect == "loop":
        transport, _ = await loop.connect_accepted_socket(factory, sock)
    elif connect == "aiofastnet":
        import aiofastnet

        transport, _ = await aiofastnet.connect_accepted_socket(loop, factory, sock)
    else:
        transport, _ = await aiozc.connect_accepted_socket(factory, sock, config=config)
    try:
        await done
    finally:
        transport.close()
    return sink.crc


# ---------------------------------------------------------------------------
# streams


async def _asyncio_streams(sock: socket.socket, job: Job, meter: Meter) -> int:
    reader, writer = await asyncio.open_connection(sock=sock)
    sink = _Sink(job, meter)
    meter.start()
    crc = 0
    for _ in range(job.count):
        size = int.from_bytes(await reader.readexactly(HEADER), "big")
        crc = zlib.crc32(await reader.readexactly(size), crc)
        if sink.rpc:
            writer.write((crc & 0xFFFFFFFF).to_bytes(4, "big"))
    meter.stop()
    writer.close()
    return crc


def _aiozc_streams_as(bytes_header: bool) -> ReadFn:
    """aiozc streams: every read a view, or as the README shows them (the
    header as bytes with ``readexactly``, asyncio's API; the body a view)."""

    async def run(sock: socket.socket, job: Job, meter: Meter) -> int:
        reader, writer = await aiozc.open_connection(sock=sock)
        rpc = job.workload == "rpc"
        meter.start()
        crc = 0
        for _ in range(job.count):
            if bytes_header:
                size = int.from_bytes(await reader.readexactly(HEADER), "big")
            else:
                with await reader.readexactly_view(HEADER) as header:
                    size = int.from_bytes(header, "big")
            with await reader.readexactly_view(size) as view:
                crc = zlib.crc32(view, crc)
            if rpc:
                writer.write((crc & 0xFFFFFFFF).to_bytes(4, "big"))
        meter.stop()
        meter.stats = reader.stats
        writer.close()
        return crc

    return run


async def _anyio_buffered(sock: socket.socket, job: Job, meter: Meter) -> int:
    from anyio.abc import SocketStream
    from anyio.streams.buffered import BufferedByteReceiveStream

    rpc = job.workload == "rpc"
    async with await SocketStream.from_socket(sock) as stream:
        buffered = BufferedByteReceiveStream(stream)
        meter.start()
        crc = 0
        for _ in range(job.count):
            size = int.from_bytes(await buffered.receive_exactly(HEADER), "big")
            crc = zlib.crc32(await buffered.receive_exactly(size), crc)
            if rpc:
                await stream.send((crc & 0xFFFFFFFF).to_bytes(4, "big"))
        meter.stop()
    return crc


async def _aiozc_anyio(sock: socket.socket, job: Job, meter: Meter) -> int:
    from aiozc.anyio import ZCSocketStream

    rpc = job.workload == "rpc"
    async with await ZCSocketStream.from_socket(sock) as stream:
        meter.start()
        crc = 0
        for _ in range(job.count):
            with await stream.receive_exactly_view(HEADER) as header:
                size = int.from_bytes(header, "big")
            with await stream.receive_exactly_view(size) as view:
                crc = zlib.crc32(view, crc)
            if rpc:
                await stream.send((crc & 0xFFFFFFFF).to_bytes(4, "big"))
        meter.stop()
        meter.stats = stream.stats
    return crc


# ---------------------------------------------------------------------------
# the floor: aiozc's engine in a blocking poll() loop, no event loop


def _floor(sock: socket.socket, job: Job, meter: Meter) -> int:
    """What aiozc's event-loop receivers cost minus the event loop: the
    engine driven as benchmarks/tune.py drives it, frames cut with the same
    ViewBuffer as ZCFrames."""
    sock.setblocking(False)
    vb = ViewBuffer()
    rx = Engine(sock.fileno(), ZCConfig(zerocopy="auto"), vb.append)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    rpc = job.workload == "rpc"
    pump, take, take_int = rx.pump, vb.take, vb.take_int
    crc = frames = 0
    size = -1
    meter.start()
    try:
        while frames < job.count:
            if not poller.poll(30_000):
                raise TimeoutError("floor: no data for 30 s")
            r = pump((size if size >= 0 else HEADER) - len(vb))
            while True:
                if size < 0:
                    if len(vb) < HEADER:
                        break
                    size = take_int(HEADER)
                if len(vb) < size:
                    vb.gather(rx, size)
                    break
                with take(size) as frame:
                    crc = zlib.crc32(frame, crc)
                size = -1
                frames += 1
                if rpc:
                    sock.send((crc & 0xFFFFFFFF).to_bytes(4, "big"))
            if r == PUMP_EOF and frames < job.count:
                raise ConnectionError("floor: EOF before the last frame")
        meter.stop()
        meter.stats = rx.stats()
    finally:
        vb.clear()
        rx.close()
    return crc


# ---------------------------------------------------------------------------
# the list


ReadFn = Callable[[socket.socket, Job, Meter], Awaitable[int]]


@dataclass(frozen=True)
class ReceiverSpec:
    """One receiver under test: an API on a runtime."""

    #: Short API name, e.g. "asyncio Protocol".
    api: str
    runtime: Runtime
    #: aiozc's own receivers (aiozc=True) are compared with the peers'.
    aiozc: bool
    #: How to run it: a coroutine for the event-loop runtimes; the floor is sync.
    fn: Callable[..., Any]
    #: Optional package it needs (skipped, with a note, if missing).
    needs: str | None = None
    #: 'auto' | 'always' | 'never' for aiozc receivers (else None).
    mode: str | None = None

    @property
    def name(self) -> str:
        """Unique display name: API and runtime."""
        return f"{self.api} [{self.runtime}]"


def _proto(cls: type[asyncio.BaseProtocol], connect: str,
           mode: str | None = None) -> ReadFn:
    config = ZCConfig(zerocopy=mode) if mode else None  # type: ignore[arg-type]

    async def read(sock: socket.socket, job: Job, meter: Meter) -> int:
        return await _protocol(cls, connect, config, sock, job, meter)
    return read


def all_receivers(trio: bool = True) -> list[ReceiverSpec]:
    """Every receiver of the brief, peers first."""
    out: list[ReceiverSpec] = []
    loops: tuple[Runtime, ...] = ("asyncio", "uvloop")
    for rt in loops:
        out += [
            ReceiverSpec("asyncio Protocol", rt, False, _proto(BytesFrames, "loop")),
            ReceiverSpec("asyncio BufferedProtocol", rt, False, _proto(BufferedFrames, "loop")),
            ReceiverSpec("asyncio streams readexactly", rt, False, _asyncio_streams),
            ReceiverSpec("aiofastnet BufferedProtocol", rt, False,
                         _proto(BufferedFrames, "aiofastnet"), needs="aiofastnet"),
        ]
    anyio_rts: tuple[Runtime, ...] = ("anyio-asyncio", "anyio-trio") if trio else ("anyio-asyncio",)
    for rt in anyio_rts:
        out.append(ReceiverSpec("anyio BufferedByteReceiveStream", rt, False, _anyio_buffered,
                                needs="trio" if rt == "anyio-trio" else "anyio"))
    for rt in loops:
        for mode in ("auto", "always", "never"):
            out.append(ReceiverSpec(f"aiozc ZCProtocol {mode}", rt, True,
                                    _proto(ZCFrames, "aiozc", mode), mode=mode))
        out.append(ReceiverSpec("aiozc streams readexactly_view", rt, True,
                                _aiozc_streams_as(bytes_header=False), mode="auto"))
        out.append(ReceiverSpec("aiozc streams, README (bytes header)", rt, True,
                                _aiozc_streams_as(bytes_header=True), mode="auto"))
    for rt in anyio_rts:
        out.append(ReceiverSpec("aiozc anyio receive_exactly_view", rt, True, _aiozc_anyio,
                                needs="trio" if rt == "anyio-trio" else "anyio", mode="auto"))
    out.append(ReceiverSpec("aiozc floor (engine + poll, no loop)", "blocking", True, _floor,
                            mode="auto"))
    return out


def run_receiver(spec: ReceiverSpec, sock: socket.socket, job: Job, meter: Meter) -> int:
    """Run one receiver to completion on its runtime; the payloads' CRC."""
    if spec.runtime == "blocking":
        return int(spec.fn(sock, job, meter))
    if spec.runtime.startswith("anyio"):
        import anyio

        backend = "trio" if spec.runtime == "anyio-trio" else "asyncio"
        return int(anyio.run(spec.fn, sock, job, meter, backend=backend))
    factory: Callable[[], asyncio.AbstractEventLoop]
    if spec.runtime == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = asyncio.SelectorEventLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        return int(runner.run(spec.fn(sock, job, meter)))
