"""asyncio streams over zerocopy connections (:class:`ZCStreamReader`).

``open_connection`` and ``start_server`` work like asyncio's, and return an
ordinary ``asyncio.StreamWriter`` with a :class:`ZCStreamReader`.  The
reader keeps what the transport delivers as a queue of views
(:class:`~aiozc._buffer.ViewBuffer`), never joined into one bytearray:

* the bytes API (``read``, ``readexactly``, ``readuntil``, ``readline``, async
  iteration) copies each result out exactly once, where asyncio's
  StreamReader copies into its buffer, out of it, and moves the rest of the
  buffer down after every read;
* the view API (``read_view``, ``readexactly_view``, ``readuntil_view``)
  copies nothing when the frame lies inside one received view, and joins it
  once when it spans several (counted in ``stats.bytes_assembled``).

Views from a reader follow the core's rules: read-only, valid until
released, pinning their memory meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, final

from ._config import ZCConfig
from ._connect import create_connection, create_server
from ._framereader import FrameReader, Next
from ._protocol import ZCProtocol
from ._server import Server
from ._stats import ZCStats
from ._transport import ZCTransport

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["ZCStreamReader", "open_connection", "start_server"]

# asyncio's default: readuntil() gives up on a separator beyond limit, and
# the reader pauses the transport past 2 * limit bytes buffered.
_DEFAULT_LIMIT = 2**16

# ... but never below this many bytes.  One receive brings up to 256 KiB
# (ZCConfig.receive_size), so with asyncio's 128 KiB every receive paused
# and resumed the transport (two epoll_ctl calls, and a receive window that
# kept closing): 10 us of kernel time per 32 KiB frame against 4 without
# (benchmarks/frames.py).  Queued views are pooled memory, bounded by
# ZCConfig.max_pinned_bytes whatever this says.
_PAUSE_FLOOR = 1 << 20


@final
class ZCStreamReader(asyncio.StreamReader):
    """An ``asyncio.StreamReader`` that also hands out zero-copy views.

    Everything asyncio's StreamReader offers works the same way, returning
    bytes.  ``read_view``, ``readexactly_view`` and ``readuntil_view`` return
    read-only memoryviews instead, without copying whenever the bytes
    arrived together.
    """

    if TYPE_CHECKING:
        # asyncio.StreamReader's private state, which this class shares
        # (typeshed does not declare it).
        _exception: BaseException | None
        _eof: bool
        _limit: int
        _paused: bool
        _transport: asyncio.Transport | None

        def _wakeup_waiter(self) -> None: ...
        async def _wait_for_data(self, func_name: str) -> None: ...

    def __init__(
        self, limit: int = _DEFAULT_LIMIT, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        super().__init__(limit=limit, loop=loop)
        # The queue and everything about cutting frames from it; this class
        # turns the frame reader's answers into awaits (see _framereader).
        self._frames = FrameReader()
        self._views = self._frames.buffer
        self._zc: ZCTransport | None = None
        # Frames under this many bytes are never gathered (the transport's
        # min_gather_size): _fill waits for them without the frame reader.
        self._small = 0
        # Flow control's two marks, computed once (see _PAUSE_FLOOR).
        self._pause_above = max(2 * self._limit, _PAUSE_FLOOR)
        self._resume_below = max(self._limit, _PAUSE_FLOOR // 2)

    def __repr__(self) -> str:
        info = ["ZCStreamReader", f"{len(self._views)} bytes"]
        if self._eof:
            info.append("eof")
        if self._exception is not None:
            info.append(f"exception={self._exception!r}")
        if self._paused:
            info.append("paused")
        return "<{}>".format(" ".join(info))

    @property
    def stats(self) -> ZCStats:
        """The connection's :class:`ZCStats`, with this reader's ``bytes_assembled``.

        Raises :exc:`RuntimeError` while the reader has no zerocopy
        transport (a reader made by hand and not yet connected).
        """
        stats = getattr(self._transport, "stats", None)
        if isinstance(stats, ZCStats):
            return dataclasses.replace(stats, bytes_assembled=self._views.bytes_assembled)
        # (A state, not a type, is wrong: the reader is not connected yet.)
        raise RuntimeError(
            "this ZCStreamReader has no zerocopy transport: use one made by "
            "aiozc.open_connection() or aiozc.start_server()"
        )

    # -- fed by the protocol -------------------------------------------------

    def set_transport(self, transport: asyncio.BaseTransport) -> None:
        """As asyncio's; a :class:`ZCTransport` also receives big frames whole."""
        super().set_transport(transport)
        if isinstance(transport, ZCTransport):
            self._zc = transport
            self._small = transport.min_gather_size
            self._frames.connect(transport.gather, transport.end_gather, self._small)

    def feed_eof(self) -> None:
        """The peer closed its side: what is queued is all there will be."""
        self._frames.feed_eof()
        super().feed_eof()

    def set_exception(self, exc: Exception) -> None:
        """The connection failed: readers raise ``exc`` once the queue is read."""
        self._frames.feed_error(exc)
        super().set_exception(exc)

    def feed_data(self, data: bytes | memoryview) -> None:  # type: ignore[override]
        """Queue received data (a view from the transport, or bytes)."""
        assert not self._eof, "feed_data after feed_eof"
        if not data:
            return
        self._views.append(data if isinstance(data, memoryview) else memoryview(data))
        self._wakeup_waiter()
        if (
            self._transport is not None
            and not self._paused
            and len(self._views) > self._pause_above
        ):
            try:
                self._transport.pause_reading()
            except NotImplementedError:
                self._transport = None
            else:
                self._paused = True

    def _memory_exhausted(self) -> None:
        # The transport starved (on_exhausted='pause', every pooled buffer
        # held by views): let go of the ones queued here (FrameReader.starved).
        self._frames.starved()

    def _maybe_resume_transport(self) -> None:
        if self._paused and len(self._views) <= self._resume_below:
            self._paused = False
            assert self._transport is not None
            self._transport.resume_reading()

    def at_eof(self) -> bool:
        """True once the buffer is empty and the peer has closed its side."""
        return self._eof and not len(self._views)

    # -- views ---------------------------------------------------------------

    async def read_view(self, n: int = -1) -> memoryview:
        """Up to ``n`` bytes as a view (all until EOF if ``n`` < 0).

        With ``n`` > 0 this returns at most what arrived together (one
        received view), so it never copies; an empty view means EOF.
        """
        if self._exception is not None:
            raise self._exception
        if n == 0:
            return memoryview(b"")
        if n < 0:
            while not self._eof:
                await self._wait_for_data("read")
            view = self._views.take_all()
        else:
            if not len(self._views) and not self._eof:
                await self._wait_for_data("read")
            view = self._views.take(min(n, self._views.first_size))
        self._maybe_resume_transport()
        return view

    async def readexactly_view(self, n: int) -> memoryview:
        """Exactly ``n`` bytes as a view; ``IncompleteReadError`` at an early EOF."""
        views = self._views
        if not (0 <= n <= len(views)) or self._exception is not None:
            await self._fill(n)
        view = views.take(n)
        if self._paused:
            self._maybe_resume_transport()
        return view

    async def readuntil_view(self, separator: ReadableBuffer = b"\n") -> memoryview:
        """The bytes up to and including ``separator``, as a view.

        Errors as ``readuntil``: ``LimitOverrunError`` (nothing consumed),
        ``IncompleteReadError`` at EOF (everything consumed).
        """
        end = await self._find_separator(bytes(separator))
        view = self._views.take(end)
        self._maybe_resume_transport()
        return view

    # -- bytes (asyncio's API) -------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all until EOF if ``n`` < 0); b"" at EOF."""
        if self._exception is not None:
            raise self._exception
        if n == 0:
            return b""
        if n < 0:
            while not self._eof:
                await self._wait_for_data("read")
            data = self._views.take_bytes(len(self._views))
        else:
            if not len(self._views) and not self._eof:
                await self._wait_for_data("read")
            data = self._views.take_bytes(min(n, len(self._views)))
        self._maybe_resume_transport()
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``IncompleteReadError`` at an early EOF."""
        # Bytes already queued are taken without creating and awaiting a
        # _fill coroutine (the README's pattern reads each header this way),
        # and with no call at all on that path: with one request in flight
        # per connection, each call is a measurable share of the request.
        if n > len(self._views) or n < 0 or self._exception is not None:
            await self._fill(n)
        data = self._views.take_bytes(n)
        if self._paused:
            self._maybe_resume_transport()
        return data

    async def readuntil(self, separator: ReadableBuffer = b"\n") -> bytes:
        """The bytes up to and including ``separator`` (see asyncio)."""
        end = await self._find_separator(bytes(separator))
        data = self._views.take_bytes(end)
        self._maybe_resume_transport()
        return data

    async def readline(self) -> bytes:
        """One line including ``\\n``; at EOF the partial line (or b"")."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except asyncio.LimitOverrunError as exc:
            # As asyncio: drop the too-long line (with its separator, when
            # it was found) and report it as ValueError.
            if self._views.find(b"\n", exc.consumed) == exc.consumed:
                self._views.take_bytes(exc.consumed + 1)
            else:
                self._views.clear()
            self._maybe_resume_transport()
            raise ValueError(exc.args[0]) from None

    # -- shared ----------------------------------------------------------------

    async def _fill(self, n: int) -> None:
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if self._exception is not None:
            raise self._exception
        views = self._views
        if len(views) >= n:
            return
        zc = self._zc
        # A frame smaller than the engine ever gathers (every header, and
        # an RPC server's requests) needs none of the frame reader: no
        # gather to ask for, none to end.  Its wait is this loop alone,
        # which saves 4 of the ~58 Python calls per request of a streams
        # RPC server with one request in flight (3-6% of its CPU with 100
        # and 1,000 connections; benchmarks/results/2026-11-28-rpc-streams.md).
        # An error or EOF leaves it for the general loop below, which
        # raises as asyncio does.
        if zc is not None and n < self._small:
            while self._exception is None and not self._eof:
                if not zc.receive_now(n - len(views)):
                    zc.set_read_hint(n - len(views))
                    try:
                        await self._wait_for_data("readexactly")
                    finally:
                        zc.set_read_hint(0)
                if len(views) >= n:
                    return
        frames = self._frames
        hinted = False
        try:
            while (step := frames.need(n)) is not Next.READY:
                if step is Next.ERROR:
                    assert frames.error is not None
                    raise frames.error
                if step is Next.EOF:
                    partial = self._views.take_bytes(len(self._views))
                    raise asyncio.IncompleteReadError(partial, n)
                if zc is not None:
                    # Receive now if the socket may hold more, reading no
                    # further than this frame (ZCTransport.receive_now).
                    missing = n - len(self._views)
                    if zc.receive_now(missing):
                        continue
                    # A header's wait too: left to its budget, the pump would
                    # read on into the next frame's body, whose pieces would
                    # then be joined instead of gathered.
                    zc.set_read_hint(missing)
                    hinted = True
                # WAIT_READABLE, or WAIT_MEMORY: the transport resumes
                # reading once the application releases a view.
                await self._wait_for_data("readexactly")
        finally:
            if hinted:
                assert zc is not None
                zc.set_read_hint(0)
            # Cancelled (or failed) before a gathered frame was complete:
            # what arrived of it is queued again, in order.
            frames.done(n)

    async def _find_separator(self, separator: bytes) -> int:
        """Wait until ``separator`` is buffered; the offset just past it."""
        seplen = len(separator)
        if seplen == 0:
            raise ValueError("Separator should be at least one-byte string")
        if self._exception is not None:
            raise self._exception
        offset = 0
        while True:
            step, at = self._frames.need_separator(separator, offset)
            if step is Next.READY:
                break
            offset = at
            if offset > self._limit:
                raise asyncio.LimitOverrunError(
                    "Separator is not found, and chunk exceed the limit", offset
                )
            if step is Next.EOF:
                partial = self._views.take_bytes(len(self._views))
                raise asyncio.IncompleteReadError(partial, None)
            if step is Next.ERROR:
                assert self._frames.error is not None
                raise self._frames.error
            await self._wait_for_data("readuntil")
        if at - seplen > self._limit:
            raise asyncio.LimitOverrunError(
                "Separator is found, but chunk is longer than limit", at - seplen
            )
        return at


@final
# StreamReaderProtocol first: its connection_made, eof_received and
# connection_lost (and FlowControlMixin's pause_writing) must come before
# ZCProtocol's do-nothing defaults in the MRO.  Being a ZCProtocol is what
# makes the transport deliver views (and read batch_scope).
class _ZCStreamReaderProtocol(asyncio.StreamReaderProtocol, ZCProtocol):
    """asyncio's StreamReaderProtocol, taking views from a ZCTransport."""

    # The handler answers from its task, which the read event only wakes:
    # its writes join the event's batch if the batch waits for it.
    batch_scope = "iteration"

    def data_received(self, data: memoryview) -> None:  # type: ignore[override]
        reader = self._stream_reader  # type: ignore[attr-defined]
        if reader is not None:
            reader.feed_data(data)

    def memory_exhausted(self) -> None:
        # ZCTransport: every pooled buffer is held (on_exhausted='pause').
        reader = self._stream_reader  # type: ignore[attr-defined]
        if reader is not None:
            reader._memory_exhausted()


async def open_connection(
    host: str | None = None,
    port: int | None = None,
    *,
    config: ZCConfig | None = None,
    limit: int = _DEFAULT_LIMIT,
    **kwds: Any,
) -> tuple[ZCStreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection``, over a zerocopy transport.

    Keywords are those of :func:`aiozc.create_connection` (``ssl`` is
    refused).  Works on any running loop, stdlib or uvloop.
    """
    loop = asyncio.get_running_loop()
    reader = ZCStreamReader(limit=limit, loop=loop)
    protocol = _ZCStreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(
        lambda: protocol, host, port, config=config, **kwds
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


ClientConnected = Callable[[ZCStreamReader, asyncio.StreamWriter], Awaitable[None] | None]


async def start_server(
    client_connected_cb: ClientConnected,
    host: str | None = None,
    port: int | None = None,
    *,
    config: ZCConfig | None = None,
    limit: int = _DEFAULT_LIMIT,
    **kwds: Any,
) -> Server:
    """Like ``asyncio.start_server``; the callback gets a :class:`ZCStreamReader`.

    Keywords are those of :func:`aiozc.create_server` (``ssl`` is refused).
    """
    loop = asyncio.get_running_loop()

    def factory() -> _ZCStreamReaderProtocol:
        reader = ZCStreamReader(limit=limit, loop=loop)
        return _ZCStreamReaderProtocol(reader, client_connected_cb, loop=loop)  # type: ignore[arg-type]

    return await create_server(factory, host, port, config=config, **kwds)
