"""aiozc for anyio: a zerocopy :class:`anyio.abc.SocketStream` on every backend.

:class:`ZCSocketStream` is a real anyio socket stream over a connected TCP
socket, whose receive side is aiozc's engine: the kernel maps the peer's
pages into the process (``TCP_ZEROCOPY_RECEIVE``) or copies into pooled
buffers, and the stream keeps what arrived as a queue of read-only
memoryviews.  Besides anyio's ``receive()`` (bytes), it offers
:meth:`~ZCSocketStream.receive_view` and
:meth:`~ZCSocketStream.receive_exactly_view`, which cut frames out of that
queue without copying whenever a frame lies inside one received view.

It needs nothing from the backend but ``anyio.wait_readable`` /
``anyio.wait_writable`` on the socket, so it runs unchanged on asyncio, on
uvloop (``backend_options={"use_uvloop": True}``) and on trio.

Get one with :func:`connect_tcp`, or from a :class:`ZCSocketListener`
(:func:`create_tcp_listener`)::

    async with await aiozc.anyio.connect_tcp("example.org", 9000) as stream:
        header = await stream.receive_exactly_view(4)
        with await stream.receive_exactly_view(int.from_bytes(header, "big")) as body:
            handle(body)      # read-only; maybe the kernel's own mapped pages

The views follow aiozc's rules (see the README): read-only, valid until
released (also after the stream is closed and the peer gone), and pinning
their memory until then.  Release them (``with view:`` or
``view.release()``) when done, or copy with ``bytes(view)``.

Install with ``pip install 'aiozc[anyio]'``.
"""

from __future__ import annotations

try:
    import anyio
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "aiozc.anyio needs the anyio package: pip install 'aiozc[anyio]'"
    ) from _exc

import asyncio
import dataclasses
import errno
import os
import socket
import ssl
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import AsyncExitStack, contextmanager
from ipaddress import IPv4Address, IPv6Address
from typing import Any, NoReturn, final

import anyio.lowlevel
from anyio import (
    BrokenResourceError,
    ClosedResourceError,
    EndOfStream,
    IncompleteRead,
    ResourceGuard,
    TypedAttributeSet,
    typed_attribute,
)
from anyio.abc import SocketListener, SocketStream, TaskGroup

from ._buffer import ViewBuffer
from ._config import ZCConfig
from ._engine import PUMP_EOF, PUMP_STARVED, Receiver, end_connection
from ._framereader import FrameReader, Next
from ._memory import keep_trimming, release_callback, running_budget, running_loop_key
from ._policy import history_for
from ._quirks import running_asyncio_loop, running_quirks
from ._stats import ZCStats
from ._wrap import refuse_tls

__all__ = [
    "ZCAttribute",
    "ZCSocketListener",
    "ZCSocketStream",
    "connect_tcp",
    "create_tcp_listener",
]

IPAddressType = str | IPv4Address | IPv6Address

# on_exhausted='pause': how often a starved stream looks whether a view was
# released (the release may happen in any thread, so the stream polls a flag
# rather than ask each backend for a thread-safe wake-up).  Doubles from the
# first delay up to the last while it waits.
_STARVED_POLL_FIRST = 0.001
_STARVED_POLL_MAX = 0.01

# A receive that waits for a large frame while data keeps arriving yields to
# the other tasks after this many bytes (the pump itself takes up to 1 MiB).
_YIELD_EVERY = 4 * 1024 * 1024

# accept() errors that concern one connection, not the listener (as trio).
_ACCEPT_RETRY = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

#: Connections ZCSocketListener.serve() accepts per wake-up at most.
#: asyncio's servers take up to their backlog per readiness event (100 by
#: default, and 4,096 as the benchmarks' servers are made).  This was 100.
#: With 1,000 clients connecting at once and then sending one request
#: at a time on each connection (benchmarks/rpc.py), the p99 latency at the
#: client was 105-154 ms, and 67-92 ms over the requests after each
#: connection's first: twice asyncio streams' 36-43 ms, and it
#: lasted long after the last connection was accepted.  With every waiting
#: connection taken at once it was 86-89 ms, and 36-37 ms after the first
#: requests (benchmarks/results/2026-11-28-accept-burst.md).  The bound
#: keeps a flood of connections from holding the loop for long: a stream
#: costs about 13 us to set up, so 4,096 at once is about 50 ms, as for an
#: asyncio server with that backlog.
_ACCEPT_BURST = 4096


def _readable_callback(ref: weakref.ref[ZCSocketStream]) -> None:
    # The loop's reader callback for a stream (see ZCSocketStream._wait_readable):
    # it holds the stream weakly, so that the loop keeps no stream alive.
    stream = ref()
    if stream is not None:
        stream._on_readable()


class ZCAttribute(TypedAttributeSet):
    """Typed attributes of a :class:`ZCSocketStream` (``stream.extra(...)``).

    They pass through anyio stream wrappers, like anyio's own
    ``SocketAttribute`` ones.
    """

    #: A fresh :class:`aiozc.ZCStats` snapshot of the receive side.
    stats: ZCStats = typed_attribute()


def _stream_socket(
    sock_or_fd: socket.socket | int, check: Callable[[socket.socket], None] | None = None
) -> socket.socket:
    """The socket (made from the fd if need be), checked to be a stream socket.

    On failure a socket made from an fd is detached: the caller keeps the fd.
    """
    if isinstance(sock_or_fd, int):
        sock = socket.socket(fileno=sock_or_fd)
    elif isinstance(sock_or_fd, socket.socket):
        sock = sock_or_fd
    else:
        raise TypeError(
            f"expected a socket or a file descriptor, not {type(sock_or_fd).__name__}"
        )
    try:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(
                f"aiozc.anyio needs a stream socket (SOCK_STREAM), not {sock.type!r}"
            )
        if check is not None:
            check(sock)
    except BaseException:
        if isinstance(sock_or_fd, int):
            sock.detach()
        raise
    return sock


def _check_connected(sock: socket.socket) -> None:
    try:
        sock.getpeername()
    except OSError as exc:
        raise ValueError("the socket must be connected") from exc


async def _adopt(
    sock_or_fd: socket.socket | int, check: Callable[[socket.socket], None]
) -> socket.socket:
    """``from_socket``'s part: the checked socket, after a checkpoint."""
    sock = _stream_socket(sock_or_fd, check)
    await anyio.lowlevel.checkpoint()
    return sock


def _describe(obj: object, sock: socket.socket, closed: bool, *more: str) -> str:
    state = "closed" if closed else "open"
    return "<" + " ".join((type(obj).__name__, f"fd={sock.fileno()}", state, *more)) + ">"


def _check_listening(sock: socket.socket) -> None:
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError("the socket must be listening (call listen() first)")


@final
class ZCSocketStream(SocketStream):
    """An anyio socket stream that receives with ``TCP_ZEROCOPY_RECEIVE``.

    ``sock`` is a connected TCP socket; the stream owns it from now on (and
    makes it non-blocking).  ``config`` tunes the receive engine
    (:class:`aiozc.ZCConfig`).

    Receiving: :meth:`receive` returns ``bytes`` (anyio's contract),
    :meth:`receive_view` and :meth:`receive_exactly_view` return read-only
    memoryviews over the received memory.  Every receive and send is a
    cancellation point, and cancelling a receive loses nothing: whatever was
    taken from the kernel stays queued in the stream for the next one.

    Errors follow anyio: :exc:`anyio.EndOfStream` once the peer's FIN is
    reached, :exc:`anyio.ClosedResourceError` after :meth:`aclose`,
    :exc:`anyio.BrokenResourceError` (the ``OSError`` as ``__cause__``) for
    a socket error such as a reset, raised once the bytes received before
    it have been read, and :exc:`anyio.BusyResourceError` when two tasks
    receive (or two tasks send) at once.
    """

    def __init__(self, sock: socket.socket, *, config: ZCConfig | None = None) -> None:
        # Set first: __del__ looks at it even if the checks below fail.
        self._closed = True
        sock = _stream_socket(sock)
        sock.setblocking(False)
        self._sock = sock
        self._config = config if config is not None else ZCConfig()
        # The queue and everything about cutting frames from it; this class
        # turns the frame reader's answers into awaits (see _framereader).
        self._frames = FrameReader()
        self._buf = self._frames.buffer
        # On uvloop, wait_readable is libuv's poll, which goes silent after
        # a reset (see _quirks.py).
        self._rx = Receiver(sock.fileno(), self._config, self._buf.append,
                            eager_errors=running_quirks().collect_errors_eagerly,
                            budget=running_budget(), history=history_for(running_loop_key()))
        self._frames.connect(self._gather, self._rx.end_gather)
        self._rx.on_release = release_callback(self._on_release)
        self._freed = False  # on_release fired since the last pump
        self._receive_guard = ResourceGuard("reading from")
        self._receiving = False  # a receive is waiting in _fill()
        self._send_guard = ResourceGuard("writing to")
        # On asyncio and uvloop: the loop, the wait in progress, the
        # frame's missing bytes, and the fd registered for the reader
        # callback, -1 if none (kept: in __del__ the socket may already be
        # closed, its fileno() -1, and the loop's entry must still go).
        # See _wait_readable.  No loop: anyio's wait_readable.
        self._aio_loop = running_asyncio_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._want = 0
        self._reader_fd = -1
        self._closed = False

    @classmethod
    async def from_socket(
        cls, sock_or_fd: socket.socket | int, *, config: ZCConfig | None = None
    ) -> ZCSocketStream:
        """Wrap a connected TCP socket (or its file descriptor); takes ownership."""
        return cls(await _adopt(sock_or_fd, _check_connected), config=config)

    def __repr__(self) -> str:
        return _describe(self, self._sock, self._closed, f"mode={self._rx.mode}")

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not self._closed:
            _warn(f"unclosed {self!r}", ResourceWarning, source=self)
            self._close(notify=False)

    # -- information ---------------------------------------------------------

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock

    @property
    def stats(self) -> ZCStats:
        """A snapshot of the receive statistics (:class:`aiozc.ZCStats`).

        Its ``bytes_assembled`` is the stream's own :attr:`bytes_assembled`.
        """
        stats: ZCStats = self._rx.stats()
        return dataclasses.replace(stats, bytes_assembled=self.bytes_assembled)

    @property
    def bytes_assembled(self) -> int:
        """Bytes copied by the stream itself, on top of the engine's receive.

        A frame (:meth:`receive_exactly_view`) that spans two received views
        is joined into one new buffer: its bytes are counted here.  So are
        the bytes a starved stream copies out of its queue (see
        :meth:`receive_exactly_view`).  ``receive()`` returns copies by
        contract and is not counted.
        """
        return self._buf.bytes_assembled

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        """anyio's socket attributes, plus :class:`ZCAttribute`'s."""
        return {
            **super().extra_attributes,
            ZCAttribute.stats: lambda: self.stats,
        }

    # -- receiving -----------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Receive at least 1 and at most ``max_bytes`` bytes, as a copy.

        Raises :exc:`anyio.EndOfStream` once everything before the peer's
        FIN has been received.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        with self._receive_guard:
            if not await self._fill(1):
                raise EndOfStream
            return self._buf.take_bytes(min(max_bytes, len(self._buf)))

    async def receive_view(self, max_bytes: int = 65536) -> memoryview:
        """Receive at least 1 and at most ``max_bytes`` bytes as a read-only view.

        Never copies: the view is (a slice of) one view the engine received,
        so it may be shorter than what is queued.  Raises
        :exc:`anyio.EndOfStream` at the end of the stream.  A cancellation
        point, but it does not yield to other tasks when bytes are already
        queued (as ``BufferedByteReceiveStream``).
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be a positive integer")
        with self._receive_guard:
            if not await self._fill(1, yield_if_ready=False):
                raise EndOfStream
            return self._buf.take(min(max_bytes, self._buf.first_size))

    async def receive_exactly_view(self, nbytes: int) -> memoryview:
        """Receive exactly ``nbytes`` bytes as one read-only view.

        The view is a slice of a received view when the frame lies inside
        one (no copy); otherwise the frame is assembled once into a new
        buffer (counted in :attr:`bytes_assembled`).  When the frame is
        already queued it returns at once, without a checkpoint, as anyio's
        ``BufferedByteReceiveStream.receive_exactly`` does; otherwise it is
        a cancellation point.

        Raises :exc:`anyio.IncompleteRead` if the stream ends before
        ``nbytes`` bytes: nothing is lost, the bytes that did arrive stay
        queued and :meth:`receive` / :meth:`receive_view` return them
        before raising :exc:`anyio.EndOfStream`.  A socket error raises
        :exc:`anyio.BrokenResourceError` the same way, the partial frame
        staying readable.

        With ``ZCConfig(on_exhausted="pause")``, a frame larger than the
        memory the stream may pin would wait forever for views that only
        the frame itself holds.  So when the engine starves while a partial
        frame is queued, the stream copies the queued bytes out once (into
        one heap buffer, counted in :attr:`bytes_assembled`), releasing
        their pooled memory, and receives on.
        """
        if nbytes < 0:
            raise ValueError("nbytes must not be negative")
        buf = self._buf
        if len(buf) >= nbytes and not self._receiving and not self._closed:
            # Already queued: no wait and no checkpoint, as anyio's own
            # BufferedByteReceiveStream.receive_exactly (nothing can run
            # concurrently with this synchronous path).
            return buf.take(nbytes)
        with self._receive_guard:
            self._receiving = True
            try:
                if not await self._fill(nbytes, yield_if_ready=False):
                    raise IncompleteRead
            finally:
                self._receiving = False
            return buf.take(nbytes)

    async def _fill(self, nbytes: int, yield_if_ready: bool = True) -> bool:
        """Queue at least ``nbytes`` bytes; False if the stream ends first.

        Always a cancellation point: it waits for the socket, or else
        passes one checkpoint before returning.  Cancelled, it keeps
        everything it received queued (a big frame being received whole
        gives back what arrived of it: FrameReader.done).

        With ``yield_if_ready=False`` (the view methods), bytes already
        queued are returned after checking for cancellation only, without
        yielding to other tasks: as anyio's own
        ``BufferedByteReceiveStream.receive_exactly`` does.  Yielding twice
        per frame (header, body) was a third of the CPU per 32 KiB frame.
        """
        frames = self._frames
        rx = self._rx
        waited = False
        # The last wait also received (the reader callback on asyncio and
        # uvloop), so the socket's drained flag is fresh.
        received = False
        unyielded = 0  # bytes pumped since the last time this task yielded
        try:
            while (step := frames.need(nbytes)) is not Next.READY:
                if self._closed:
                    raise ClosedResourceError
                if step is Next.ERROR:
                    raise BrokenResourceError from frames.error
                if step is Next.EOF:
                    break
                if step is Next.WAIT_MEMORY:
                    await self._wait_for_memory()
                    frames.released()
                    waited = True
                    continue
                if received:
                    # The reader callback received for this wait (see
                    # _wait_readable): what it brought is queued.  (Waiting
                    # first whenever the last receive drained the socket,
                    # to save the receive that hears EAGAIN with one request
                    # in flight, cost pipelined requests 15-20%: by the time
                    # the task wants more, the next ones have arrived.)
                    received = False
                    if rx.drained:
                        received = await self._wait_readable(frames.missing(nbytes))
                        waited = True
                        unyielded = 0
                        continue
                self._freed = False
                try:
                    # Read no further than needed (see Receiver.pump).
                    got = rx.pump(frames.missing(nbytes))
                except OSError as exc:
                    # Bytes received before the error are queued; the error is
                    # raised once they are read (or cannot complete a frame).
                    frames.feed_error(exc)
                    continue
                if got == PUMP_EOF:
                    frames.feed_eof()
                elif got == PUMP_STARVED:
                    frames.starved()  # frees its own memory, or WAIT_MEMORY next
                elif got > 0:
                    unyielded += got
                    if rx.drained and len(frames) < nbytes:
                        # The kernel's queue is empty: wait for more now rather
                        # than pump() once more only to hear so.
                        received = await self._wait_readable(frames.missing(nbytes))
                        waited = True
                        unyielded = 0
                    elif unyielded >= _YIELD_EVERY:
                        # A large frame and a fast peer: let the other tasks
                        # run (cancelling here loses nothing: bytes are queued).
                        await anyio.lowlevel.checkpoint()
                        waited = True
                        unyielded = 0
                else:
                    received = await self._wait_readable(frames.missing(nbytes))
                    waited = True
        finally:
            frames.done(nbytes)
        if not waited:
            if yield_if_ready:
                await anyio.lowlevel.checkpoint()
            else:
                await anyio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise ClosedResourceError
        return len(frames) >= nbytes

    async def _wait_readable(self, want: int) -> bool:
        # True if the wait also received (up to ``want`` bytes); False if
        # the caller must receive.  The socket is drained.  A stream that
        # waits with nothing queued is idle as far as its memory goes: what
        # no view pins goes back now (Receiver.release_idle), so that idle
        # connections hold nothing.
        # (The asyncio transport waits IDLE_AFTER first; a stream has no
        # loop of its own to time that on, and giving back a slab the next
        # receive takes again costs two list operations.)
        if not len(self._buf):
            self._rx.release_idle()
            keep_trimming()
        loop = self._aio_loop
        if loop is None:
            await anyio.wait_readable(self._sock)
            return False
        # On asyncio and uvloop, anyio's wait_readable registers the socket
        # with the loop and unregisters it on every wait: two epoll_ctl()
        # calls and some 40 Python calls per wait, which with one request
        # in flight per connection is one wait per request (measured, 100
        # connections x 512 B, one request in flight each: 38.7 us per
        # request with it, 20.6 with this).  Here the socket stays
        # registered across waits, and its callback receives at once, as
        # the asyncio transport does: the socket is drained before the task
        # runs, so a readiness the loop reports again before then does not
        # wake the next wait for nothing.  A callback with no wait in
        # progress unregisters the socket (the loop would report it every
        # iteration).  The loop holds the stream only weakly
        # (_readable_callback): a stream dropped unclosed while registered
        # is still collected, warned about and closed, as before.
        fut = loop.create_future()
        self._waiter = fut
        self._want = want
        if self._reader_fd < 0:
            fd = self._sock.fileno()
            loop.add_reader(fd, _readable_callback, weakref.ref(self))
            self._reader_fd = fd
        try:
            await fut
        finally:
            self._waiter = None
        return True

    def _on_readable(self) -> None:
        fut = self._waiter
        if fut is None:
            self._stop_watching()
            return
        if fut.done():
            return  # woken already; the task has not run yet
        frames = self._frames
        try:
            got = self._rx.pump(self._want)
        except OSError as exc:
            # Bytes received before the error are queued first.
            frames.feed_error(exc)
            got = 1
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            return
        if got == 0:
            return  # nothing after all: wait on
        if got == PUMP_EOF:
            frames.feed_eof()
        elif got == PUMP_STARVED:
            frames.starved()
        fut.set_result(None)

    def _stop_watching(self) -> None:
        fd = self._reader_fd
        if fd < 0:
            return
        self._reader_fd = -1
        loop = self._aio_loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.remove_reader(fd)
        else:
            # From __del__ in another thread (the garbage collector runs
            # anywhere): the loop's selector is not thread-safe.  The fd is
            # closed right after, so the loop's entry must go before a new
            # socket can reuse the number: soon, in the loop's own thread.
            loop.call_soon_threadsafe(loop.remove_reader, fd)

    def _gather(self, buffer: ViewBuffer, nbytes: int) -> bool:
        # FrameReader's gather: the engine receives the rest of a big frame
        # straight into one buffer (Receiver.gather).
        return not self._closed and buffer.gather(self._rx, nbytes)

    def _on_release(self) -> None:
        # The engine calls this once a view is released after pump() starved;
        # any thread may release a view, so only set a flag.
        self._freed = True

    async def _wait_for_memory(self) -> None:
        # on_exhausted='pause' and every pooled buffer is held by views the
        # application keeps.  The release that frees one may happen in any
        # thread, inside a buffer release, so rather than ask each backend
        # for a thread-safe wake-up the stream polls the flag that
        # on_release sets: every 1 ms at first, backing off to 10 ms.
        delay = _STARVED_POLL_FIRST
        while not self._freed:
            await anyio.sleep(delay)
            if self._closed:
                raise ClosedResourceError
            delay = min(delay * 2, _STARVED_POLL_MAX)

    # -- sending -------------------------------------------------------------

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        """Send all of ``item``, waiting for the socket as needed.

        Raises :exc:`anyio.BrokenResourceError` (the ``OSError`` as
        ``__cause__``) if the connection fails.  Cancelled while waiting,
        part of ``item`` may have been sent.
        """
        with self._send_guard:
            if self._closed:
                raise ClosedResourceError
            view = memoryview(item)
            if view.itemsize != 1 or view.ndim != 1:
                view = view.cast("B")
            await anyio.lowlevel.checkpoint()
            while view:
                if self._closed:
                    raise ClosedResourceError
                try:
                    n = self._sock.send(view)
                except (BlockingIOError, InterruptedError):
                    await anyio.wait_writable(self._sock)
                    continue
                except OSError as exc:
                    raise BrokenResourceError from exc
                view = view[n:]

    async def send_eof(self) -> None:
        """Half-close: the peer sees the end of the stream; receiving goes on."""
        with self._send_guard:
            if self._closed:
                raise ClosedResourceError
            await anyio.lowlevel.checkpoint()
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                raise BrokenResourceError from exc

    # -- closing -------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the connection.  Views already received stay valid.

        Bytes received but not yet read are dropped.  Tasks waiting in a
        receive or a send are woken with :exc:`anyio.ClosedResourceError`.
        """
        if not self._closed:
            self._close(notify=True)
        await anyio.lowlevel.checkpoint()

    def _close(self, *, notify: bool) -> None:
        self._closed = True
        rx = self._rx
        rx.on_release = None
        self._buf.clear()
        self._stop_watching()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)  # the receive sees _closed: ClosedResourceError
        if notify:
            # Wake the tasks waiting for the socket, and make the backend
            # forget the fd: the mapping may keep the socket's file open
            # after close(), and trio would keep it registered in epoll.
            anyio.notify_closing(self._sock)
        rx.close()
        keep_trimming()  # what the connection gave back goes cold in time
        if rx.holds_socket:
            # Views still hold the window, whose mapping keeps the socket's
            # file open: close() alone would not end the connection.
            end_connection(self._sock.fileno())
        self._sock.close()


@final
class ZCSocketListener(SocketListener):
    """An anyio socket listener whose connections are :class:`ZCSocketStream`\\ s.

    ``sock`` is a listening TCP socket; the listener owns it from now on.
    Every accepted connection gets ``config`` (:class:`aiozc.ZCConfig`).
    Build one with :func:`create_tcp_listener`.
    """

    def __init__(self, sock: socket.socket, *, config: ZCConfig | None = None) -> None:
        sock = _stream_socket(sock)
        sock.setblocking(False)
        self._sock = sock
        self._config = config
        self._closed = False
        self._accept_guard = ResourceGuard("accepting connections from")

    @classmethod
    async def from_socket(
        cls, sock_or_fd: socket.socket | int, *, config: ZCConfig | None = None
    ) -> ZCSocketListener:
        """Wrap a bound, listening TCP socket (or its file descriptor); takes ownership."""
        sock = await _adopt(sock_or_fd, _check_listening)
        return cls(sock, config=config)

    def __repr__(self) -> str:
        return _describe(self, self._sock, self._closed)

    @property
    def _raw_socket(self) -> socket.socket:
        return self._sock

    async def accept(self) -> ZCSocketStream:
        """Wait for a connection and return it as a :class:`ZCSocketStream`.

        Raises :exc:`anyio.ClosedResourceError` once the listener is closed;
        errors that concern one connection (ECONNABORTED, EPROTO, EPERM) are
        skipped; others (EMFILE, ...) are raised as ``OSError``.
        """
        with self._accept_guard:
            await anyio.lowlevel.checkpoint()
            while (stream := self._accept_waiting()) is None:
                await anyio.wait_readable(self._sock)
            return stream

    def _accept_waiting(self) -> ZCSocketStream | None:
        """A connection that is already waiting, as a stream; None if none is."""
        while True:
            if self._closed:
                raise ClosedResourceError
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:
                if exc.errno in _ACCEPT_RETRY:
                    continue
                if self._closed or exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    raise ClosedResourceError from exc
                raise
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return ZCSocketStream(conn, config=self._config)
            except BaseException:
                conn.close()
                raise

    async def serve(
        self,
        handler: Callable[[ZCSocketStream], Any],
        task_group: TaskGroup | None = None,
    ) -> None:
        """Accept connections for ever, running ``await handler(stream)`` for each.

        As anyio's ``SocketListener.serve``: the handlers run in
        ``task_group`` (a new one by default) and own their streams (close
        them, e.g. ``async with stream:``).  Connections that are already
        waiting are accepted together, up to 4,096 per wake-up, as an
        asyncio server takes its backlog.
        """
        async with AsyncExitStack() as stack:
            if task_group is None:
                task_group = await stack.enter_async_context(anyio.create_task_group())
            while True:
                stream = await self.accept()
                task_group.start_soon(handler, stream)
                # Then the connections already waiting, up to a burst, before
                # yielding again, as asyncio's servers accept up to their
                # backlog per readiness: accept() passes a checkpoint each
                # time, and with busy connections every checkpoint is a
                # whole loop iteration, so 1,000 clients connecting at once
                # waited up to 0.5-1.9 s (p99 at the client, benchmarks/rpc.py,
                # 1,000 connections x 512 B, one request in flight each).
                for _ in range(_ACCEPT_BURST - 1):
                    stream_now = self._accept_waiting()
                    if stream_now is None:
                        break
                    task_group.start_soon(handler, stream_now)

    async def aclose(self) -> None:
        """Stop listening; a task waiting in :meth:`accept` gets ClosedResourceError."""
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()


@contextmanager
def _attempt(sock: socket.socket, errors: list[OSError]) -> Iterator[None]:
    """One address tried: an OSError is recorded (and the socket closed),
    anything else closes the socket and propagates."""
    try:
        yield
    except OSError as exc:
        sock.close()
        errors.append(exc)
    except BaseException:
        sock.close()
        raise


def _raise_attempts(errors: list[OSError], what: str) -> NoReturn:
    """Raise for failed attempts, one per resolved address.

    One attempt: its own error (a ConnectionRefusedError stays one).
    Several: an OSError caused by an ExceptionGroup of them all.
    """
    if not errors:
        raise OSError(f"could not {what}: the name resolved to no address")
    if len(errors) == 1:
        raise errors[0]
    raise OSError(
        f"could not {what}: all {len(errors)} addresses failed"
    ) from ExceptionGroup(f"attempts to {what}", errors)


async def connect_tcp(
    remote_host: IPAddressType,
    remote_port: int,
    *,
    config: ZCConfig | None = None,
    local_host: IPAddressType | None = None,
    tls: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    tls_standard_compatible: bool = True,
    tls_hostname: str | None = None,
    happy_eyeballs_delay: float = 0.25,
) -> ZCSocketStream:
    """Connect to ``remote_host``:``remote_port`` and return a :class:`ZCSocketStream`.

    The keywords are ``anyio.connect_tcp``'s.  The host's addresses
    (``anyio.getaddrinfo``) are tried as anyio tries them (RFC 8305, "happy
    eyeballs"): IPv6 and IPv4 addresses interleaved, a new attempt started
    every ``happy_eyeballs_delay`` seconds or as soon as the previous one
    fails, the first connection made wins and the others are cancelled.
    ``local_host`` binds the local end (addresses of another family than
    the remote one are skipped).  TCP_NODELAY is set, as anyio does.  If
    every attempt fails, raises ``OSError`` whose ``__cause__`` is an
    ``ExceptionGroup`` of the attempts' errors; with a single address, its
    error is raised as is (``ConnectionRefusedError``, ...).

    TLS (``tls=True``, ``ssl_context``, ``tls_hostname``) is refused with
    :exc:`ValueError`, as by :func:`aiozc.create_connection`: the kernel
    would map ciphertext.  Use ``anyio.connect_tcp`` for TLS.
    """
    refuse_tls("aiozc.anyio.connect_tcp", ssl_context if ssl_context is not None else tls,
               tls_hostname=tls_hostname)
    del tls_standard_compatible  # meaningful with TLS only
    addresses = await anyio.getaddrinfo(str(remote_host), remote_port, type=socket.SOCK_STREAM)
    local: list[tuple[socket.AddressFamily, tuple[str, int]]] = []
    if local_host is not None:
        local = [
            (fam, addr)
            for fam, *_, addr in await anyio.getaddrinfo(
                str(local_host), 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        ]
    errors: list[OSError] = []
    targets: list[tuple[socket.AddressFamily, int, Any, tuple[str, int] | None]] = []
    for family, _type, proto, _name, address in addresses:
        bind_to = None
        if local_host is not None:
            bind_to = next((addr for fam, addr in local if fam == family), None)
            if bind_to is None:
                errors.append(OSError(
                    errno.EAFNOSUPPORT,
                    f"no {family.name} address for local_host {local_host!r} "
                    f"to connect to {address!r}",
                ))
                continue
        targets.append((family, proto, address, bind_to))
    # Interleave the families, first family first (RFC 8305, 4), as
    # anyio and asyncio do.
    v6 = [t for t in targets if t[0] == socket.AF_INET6]
    v4 = [t for t in targets if t[0] != socket.AF_INET6]
    first, second = (v6, v4) if targets and targets[0][0] == socket.AF_INET6 else (v4, v6)
    ordered = [t for pair in zip(first, second) for t in pair]
    ordered += first[len(second):] + second[len(first):]

    async def attempt(target: tuple[socket.AddressFamily, int, Any, tuple[str, int] | None],
                      ) -> socket.socket | None:
        family, proto, address, bind_to = target
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        with _attempt(sock, errors):
            sock.setblocking(False)
            if bind_to is not None:
                sock.bind(bind_to)
            try:
                sock.connect(address)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"connect to {address!r}: {os.strerror(err)}") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        return None

    sock: socket.socket | None = None
    if len(ordered) == 1:
        sock = await attempt(ordered[0])
    elif ordered:
        winner: list[socket.socket] = []

        async def race(target: tuple[socket.AddressFamily, int, Any, tuple[str, int] | None],
                       failed: anyio.Event, scope: anyio.CancelScope) -> None:
            made = await attempt(target)
            if made is None:
                failed.set()
            elif winner:
                made.close()  # lost the race by a hair
            else:
                winner.append(made)
                scope.cancel()

        async with anyio.create_task_group() as tg:
            for target in ordered:
                failed = anyio.Event()
                tg.start_soon(race, target, failed, tg.cancel_scope)
                with anyio.move_on_after(happy_eyeballs_delay):
                    await failed.wait()
        sock = winner[0] if winner else None
    if sock is None:
        _raise_attempts(errors, f"connect to {remote_host!r}:{remote_port}")
    return ZCSocketStream(sock, config=config)


async def create_tcp_listener(
    *,
    local_host: IPAddressType | None = None,
    local_port: int = 0,
    family: socket.AddressFamily = socket.AF_UNSPEC,
    backlog: int = 65536,
    reuse_port: bool = False,
    config: ZCConfig | None = None,
) -> ZCSocketListener:
    """Listen for TCP connections that are received with aiozc.

    Unlike ``anyio.create_tcp_listener``, which may listen on several
    addresses at once, this binds one socket: the first of
    ``local_host``'s addresses (``anyio.getaddrinfo``, passive) that
    binds.  With ``local_host=None`` that is the wildcard address of the
    first family the resolver lists (usually ``0.0.0.0``); pass
    ``family=socket.AF_INET6`` (or ``local_host="::"``) for IPv6, and wrap
    several listeners in ``anyio.streams.stapled.MultiListener`` for both.
    (Deliberately: one socket means one :class:`ZCSocketListener`, with
    ``accept()`` and a single type to annotate, where anyio's
    ``MultiListener`` has neither; and a dual-stack socket would report
    IPv4 peers as ``::ffff:a.b.c.d``, unlike anyio's listeners.)
    SO_REUSEADDR is set, SO_REUSEPORT with ``reuse_port=True``, and an IPv6
    socket is IPv6-only.  ``config`` is given to every accepted connection.
    """
    if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
        raise ValueError("family must be AF_UNSPEC, AF_INET or AF_INET6")
    host = None if local_host is None else str(local_host)
    addresses = await anyio.getaddrinfo(
        host, local_port, family=family, type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG,
    )
    errors: list[OSError] = []
    for fam, _type, proto, _name, address in addresses:
        sock = socket.socket(fam, socket.SOCK_STREAM, proto)
        with _attempt(sock, errors):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if fam == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(min(backlog, 65536))
            return ZCSocketListener(sock, config=config)
    _raise_attempts(errors, f"listen on {local_host!r}")
