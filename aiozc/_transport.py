"""The asyncio transport over the receive engine (:class:`ZCTransport`).

Reading is the receive engine's job (``_engine.pyx``); this module plugs
it into an event loop through aiozc's poller (``_poller.pyx``: the loop's
``add_reader``, or on uvloop past 16 connections one epoll of aiozc's own
per loop), and implements the rest of the
asyncio ``Transport`` contract (writing, flow control, closing) the way
CPython's selector transport does, using only public loop methods so that
the same class runs on the stdlib loop and on uvloop.  Large immutable
writes go out with ``MSG_ZEROCOPY`` (``_zerocopy_send.py`` makes those
sends and tracks their completions; this module schedules the reaping).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import io
import logging
import os
import socket
import stat
import warnings
import weakref
from asyncio import constants as _asyncio_constants
from asyncio.transports import _FlowControlMixin
from asyncio.trsock import TransportSocket
from collections import deque
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol, final, overload

from ._buffer import ViewBuffer
from ._config import ZCConfig
from ._engine import PUMP_EOF, PUMP_STARVED, Receiver, end_connection
from ._memory import budget_for, keep_trimming, release_callback
from ._policy import history_for
from ._poller import poller_for
from ._protocol import AnyProtocol, ZCProtocol
from ._quirks import quirks_of
from ._stats import ZCStats
from ._zerocopy_send import ZeroCopySendTracker

__all__ = ["ConnectionSet", "ZCTransport"]

logger = logging.getLogger("aiozc")

# The three ways a protocol can take data, fixed by its type.
# ZCTransport._corked (replies batched per read event): no batch; a read
# event is being delivered and nothing written yet; writes are held until
# the batch ends; batch_scope "iteration": a write went out since the last
# read event or batch, so the next one opens a batch.
_OFF, _OPEN, _HOLDING, _SENT = 0, 1, 2, 3

_VIEWS = 0  # ZCProtocol: read-only memoryviews from the receive engine
_BUFFERED = 1  # asyncio.BufferedProtocol: get_buffer()/buffer_updated()
_BYTES = 2  # any other asyncio.Protocol: bytes

# For plain protocols, as CPython's selector transport: 256 KiB per recv().
_MAX_RECV = 256 * 1024

# Write-side flow control defaults, as CPython's (64 KiB high, 16 KiB low).
_HIGH_WATER = 64 * 1024

# While MSG_ZEROCOPY sends are outstanding and neither add_reader nor
# add_writer is registered (reading paused or finished, nothing queued,
# closing), nothing would wake the transport for their completions, so a
# timer reaps: first after 1 ms (a completion takes an ACK's round trip, or
# on loopback the peer's read), then backing off to 50 ms while nothing
# completes.  See "Reaping completions" below.
_REAP_POLL_FIRST = 0.001
_REAP_POLL_MAX = 0.05

# After abort() (or a fatal error) with MSG_ZEROCOPY sends in the kernel,
# the socket is kept open, shut down, until their completions arrive, so
# their buffers are released only once the kernel is done with them.  Past
# this many seconds (tcp_fin_timeout's default) the socket is reset
# instead, which drops the kernel's write queue, and the rest is released.
_LINGER_TIMEOUT = 60.0


class ConnectionSet(Protocol):
    """Where a server keeps its connections: a transport adds itself when
    made and discards itself once ``connection_lost`` has run."""

    def add(self, transport: asyncio.Transport, /) -> None: ...
    def discard(self, transport: asyncio.Transport, /) -> None: ...


def _kind_of(protocol: AnyProtocol) -> int:
    if isinstance(protocol, ZCProtocol):
        return _VIEWS
    if isinstance(protocol, asyncio.BufferedProtocol):
        return _BUFFERED
    return _BYTES


# Derived from asyncio's _FlowControlMixin (a private class, but one every
# asyncio transport derives from, and which its sendfile fallback insists
# on: it reads _protocol_paused and _loop): loop.sendfile() on asyncio's own
# loops works on a ZCTransport as on theirs.  The flow-control methods are
# overridden below with the same behaviour.
@final
class ZCTransport(_FlowControlMixin):
    """A TCP transport that receives with ``TCP_ZEROCOPY_RECEIVE``.

    A :class:`ZCProtocol` gets read-only memoryviews; a plain
    ``asyncio.Protocol`` gets bytes and an ``asyncio.BufferedProtocol`` its
    own buffers, exactly as on asyncio's transports (through the copy path).
    Writing, flow control and closing follow asyncio, except that large
    immutable writes go out with ``MSG_ZEROCOPY`` (``ZCConfig.send_zerocopy``)
    and count as buffered until the kernel has completed them.  Build one
    through :func:`aiozc.create_connection` and friends rather than directly.
    """

    # Slots, not a __dict__: a server holds one per connection (memory per
    # idle connection is a target: docs/memory.md).
    __slots__ = (
        "__weakref__",
        "_at_eof",
        "_closing",
        "_config",
        "_corked",
        "_batch_event",
        "_batch_iteration",
        "_conn_lost",
        "_connections",
        "_eof_written",
        "_fd",
        "_held",
        "_kind",
        "_linger_deadline",
        "_lingering",
        "_lost",
        "_paused",
        "_plain_bytes",
        "_plain_calls",
        "_poller",
        "_protocol",
        "_pumps",
        "_queue",
        "_queued",
        "_quirks",
        "_reader_direct",
        "_reader_on",
        "_reap_delay",
        "_reap_timer",
        "_rearm_on_errqueue",
        "_rx",
        "_sendfile_busy",
        "_sendfile_waiter",
        "_sock",
        "_starved",
        "_sweeper",
        "_want",
        "_watched",
        "_writer_on",
        "_zc",
    )

    if TYPE_CHECKING:  # _FlowControlMixin's, missing from typeshed's stub
        def _maybe_pause_protocol(self) -> None: ...
        def _maybe_resume_protocol(self) -> None: ...

    # loop.sendfile(transport, file) on asyncio's own loops: they copy the
    # file through write() (their native path needs a selector transport's
    # internals).  aiozc's loops call sendfile() below, which does not copy.
    _sendfile_compatible = _asyncio_constants._SendfileMode.FALLBACK

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: AnyProtocol,
        *,
        config: ZCConfig | None = None,
        extra: dict[str, Any] | None = None,
        connections: ConnectionSet | None = None,
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(
                f"aiozc needs a stream socket (SOCK_STREAM), not {sock.type!r}; "
                "use the loop's datagram endpoints for UDP"
            )
        info: dict[str, Any] = dict(extra) if extra else {}
        info["socket"] = TransportSocket(sock)
        for key, getter in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
            try:
                info[key] = getter()
            except OSError:
                info[key] = None
        super().__init__(info, loop)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        sock.setblocking(False)
        # As asyncio's and uvloop's TCP transports: no Nagle, so that a small
        # write (an RPC reply) leaves at once instead of waiting for the ACK
        # of what is in flight.
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._config = config if config is not None else _DEFAULT_CONFIG
        self._quirks = quirks = quirks_of(loop)  # see _quirks.py
        # Reading is watched through aiozc's poller (_poller.pyx): by its
        # own epoll, level-triggered on every loop, or, for the first few
        # connections of a loop and on the stdlib loop, by the loop itself;
        # then, on a loop that stops watching at the first error, the
        # engine collects errors eagerly (_update_reader sets it).
        self._poller = poller_for(loop)
        self._reader_direct = False  # the loop itself watches reading
        self._rx = Receiver(self._fd, self._config, None,
                            budget=budget_for(loop), history=history_for(loop))
        self._pumps = 0  # engine pumps so far: an idle connection's count stands still
        self._watched = False  # in the sweeper's watch (see _IdleSweeper)
        self._sweeper = _sweeper_for(loop)
        self._zc = ZeroCopySendTracker(sock, self._config)
        self._lingering = False  # connection lost, socket kept for completions
        # Bytes a consumer waits for (0: none, read up to the budget): see
        # set_read_hint() and Receiver.pump.
        self._want = 0
        # Writes made while a read event is handled leave together when it
        # ends (ZCConfig.batch_writes): _OFF, _OPEN (the next write goes at
        # once and closes it), _HOLDING (writes wait in the queue), _SENT
        # (batch_scope "iteration": one write went since the last read
        # event); see _read_ready, write and _uncork.
        self._corked = _OFF
        self._batch_event = False  # batch_scope == "event" (set_protocol)
        self._batch_iteration = False  # batch_scope == "iteration" (set_protocol)
        self._protocol: AnyProtocol = protocol
        # What recv() brought a plain Protocol/BufferedProtocol (in stats).
        self._plain_bytes = 0
        self._plain_calls = 0
        self._kind = _VIEWS
        self.set_protocol(protocol)
        self._closing = False
        self._paused = False  # pause_reading() in force
        self._starved = False  # on_exhausted='pause' and nothing free
        self._at_eof = False  # the peer's FIN was reached: never read again
        self._reader_on = False
        self._conn_lost = 0
        self._eof_written = False
        # Not yet taken by the socket, in order: a bytearray of bytes
        # copied from mutable or small writes (consecutive ones share it),
        # or a memoryview of an immutable buffer to send zerocopy.
        # Made at the first write the socket does not take at once: an empty
        # deque is 600 bytes, and most connections of a server never queue.
        self._queue: deque[bytearray | memoryview] | None = None
        self._queued = 0  # bytes in _queue and _held
        self._writer_on = False
        # While sendfile() runs it owns the socket's write side: writes
        # made meanwhile wait in _held, and go to _queue after the file.
        self._sendfile_busy = False
        self._sendfile_waiter: asyncio.Future[None] | None = None
        self._held: deque[bytearray | memoryview] | None = None  # made by sendfile()
        # uvloop (libuv) stops an fd's poll handle on EPOLLERR, which is how
        # completions announce themselves; see _rearm().
        self._rearm_on_errqueue = quirks.rearm_after_errqueue
        self._reap_timer: asyncio.TimerHandle | None = None
        self._reap_delay = _REAP_POLL_FIRST
        self._linger_deadline = 0.0
        self._lost = False  # connection_lost() called
        # The connections of the server that accepted this one, if any.
        self._connections = connections
        if connections is not None:
            connections.add(self)
        loop.call_soon(self._protocol.connection_made, self)
        loop.call_soon(self._update_reader)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter)

    def __repr__(self) -> str:
        state = "closed" if self._sock.fileno() < 0 else "closing" if self._closing else "open"
        return f"<ZCTransport fd={self._fd} {state} mode={self._rx.mode}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not hasattr(self, "_zc"):
            return  # __init__ failed before the transport owned the socket
        if self._sock.fileno() >= 0:
            if not self._lingering:  # an aborted transport's loop went away
                _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    # -- information ---------------------------------------------------------

    @property
    def stats(self) -> ZCStats:
        """A snapshot of this connection's receive and send statistics."""
        stats: ZCStats = self._rx.stats()
        zc = self._zc
        receive: dict[str, Any] = {}
        if self._plain_calls:  # received for a plain protocol, not by the engine
            receive = {
                "bytes_received": stats.bytes_received + self._plain_bytes,
                "bytes_copied": stats.bytes_copied + self._plain_bytes,
                "receive_calls": stats.receive_calls + self._plain_calls,
            }
        if self._kind != _VIEWS:
            receive.update(
                mode="copy",
                fallback_reason="the protocol is not a ZCProtocol, so it is given copies",
            )
        return dataclasses.replace(
            stats,
            **receive,
            bytes_sent_zerocopy=zc.bytes_zerocopy,
            bytes_sent_copied=zc.bytes_copied,
            bytes_write_buffered=zc.bytes_buffered,
            send_calls=zc.send_calls,
            zerocopy_sends_pending=zc.pending,
            zerocopy_completions_copied=zc.completions_copied,
            zerocopy_enobufs=zc.enobufs,
            send_fallback_reason=zc.fallback_reason,
        )

    @overload
    def get_extra_info(self, name: Literal["aiozc_stats"], default: object = None) -> ZCStats: ...
    @overload
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """As asyncio, plus ``'aiozc_stats'``: a fresh :class:`ZCStats`."""
        if name == "aiozc_stats":
            return self.stats
        return super().get_extra_info(name, default)

    def get_protocol(self) -> AnyProtocol:  # type: ignore[override]
        """The protocol this transport feeds."""
        return self._protocol

    def set_protocol(self, protocol: AnyProtocol) -> None:
        """Switch protocols; the new one's type decides how it gets data.

        Safe at any time, also inside ``data_received`` and while reading
        is paused: whatever the engine has received and not yet delivered
        goes to the new protocol, as bytes, into its buffers, or as views.
        """
        self._protocol = protocol
        self._kind = _kind_of(protocol)
        # Decided here, not per event: the read path tests one flag.
        scope = getattr(protocol, "batch_scope", "event") if self._config.batch_writes else None
        self._batch_event = scope == "event"
        self._batch_iteration = scope == "iteration"
        # A switch can happen in the middle of a pump (inside a callback),
        # with views still to come from it, or with views held back by a
        # pause: the engine's sink must suit the new protocol at once.
        if self._kind == _VIEWS:
            self._rx.sink = protocol.data_received  # type: ignore[union-attr]
        else:
            self._rx.sink = self._deliver_copy

    def _deliver_copy(self, view: memoryview) -> None:
        # The engine's sink while the protocol is a plain Protocol or a
        # BufferedProtocol: only views the engine received before a switch
        # (or held back by a pause) come this way; later reads use recv.
        with view:
            if self._kind == _BYTES:
                self._protocol.data_received(bytes(view))  # type: ignore[union-attr, arg-type]
                return
            while view:
                if self._kind != _BUFFERED:  # switched again in buffer_updated
                    sink = self._rx.sink
                    assert sink is not None
                    sink(view[:])
                    return
                protocol: asyncio.BufferedProtocol = self._protocol  # type: ignore[assignment]
                buf = memoryview(protocol.get_buffer(len(view))).cast("B")
                n = min(len(buf), len(view))
                if not n:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                buf[:n] = view[:n]
                buf.release()
                view = view[n:]
                protocol.buffer_updated(n)

    def is_closing(self) -> bool:
        """True once close() or abort() was called, or the connection was lost."""
        return self._closing

    # -- reading -------------------------------------------------------------

    def is_reading(self) -> bool:
        """True unless reading is paused or the transport is closing."""
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        """Stop calling the protocol until resume_reading()."""
        if self._closing or self._paused:
            return
        self._paused = True
        self._rx.paused = True
        self._update_reader()

    def resume_reading(self) -> None:
        """Resume delivery, starting with anything held back by the pause."""
        if self._closing or not self._paused:
            return
        self._paused = False
        self._rx.paused = False
        self._update_reader()
        if self._rx.has_pending:
            self._loop.call_soon(self._read_ready)

    def gather(self, buffer: ViewBuffer, nbytes: int) -> bool:
        """Receive the rest of an ``nbytes`` frame straight into one buffer.

        For a :class:`ZCProtocol` that cuts frames with a
        :class:`~aiozc.ViewBuffer`: when it knows the size of the frame it
        waits for and ``buffer`` holds only its beginning, this moves those
        bytes into a pooled buffer of ``nbytes`` bytes that the next
        receives fill; ``data_received`` then gets the whole frame as one
        view (or, at EOF or an error, what arrived of it), so the frame is
        never assembled from pieces.  ``buffer`` is left empty.

        Returns False, changing nothing, when it does not apply: the
        connection is mapping pages (they cannot be made contiguous with
        bytes already received), the frame is under twice
        ``ZCConfig.receive_size`` (its head, up to one receive, is copied
        anyway, so it would cost a receive call and save little), a gather
        is already open, or no buffer fits within ``max_pinned_bytes``.
        """
        if self._closing or self._kind != _VIEWS:
            return False
        return buffer.gather(self._rx, nbytes)

    def end_gather(self) -> None:
        """Give up an open :meth:`gather`: ``data_received`` gets what arrived now."""
        self._rx.end_gather()

    @property
    def min_gather_size(self) -> int:
        """The smallest frame :meth:`gather` takes (twice ``ZCConfig.receive_size``):
        a reader waiting for a smaller one need not ask."""
        return self._rx.min_gather_size

    def _update_reader(self) -> None:
        want = not (self._closing or self._paused or self._starved or self._at_eof)
        if want and not self._reader_on:
            direct = self._poller.register(self._fd, self._read_ready)
            self._reader_on = True
            self._reader_direct = direct
            self._rx.eager_errors = direct and self._quirks.collect_errors_eagerly
        elif not want and self._reader_on:
            self._poller.unregister(self._fd)
            self._reader_on = False
            self._reader_direct = False
            self._update_reaper()

    # -- replies batched per read event ---------------------------------------
    #
    # An RPC server answers each request from data_received; with NODELAY
    # (which aiozc sets, and asyncio does on sockets of create_server) each
    # answer would be a send() and a segment of its own, and the client is
    # woken once per answer.  While a read event is handled the transport is
    # corked: the first write goes at once, and the later ones join the
    # write queue (small ones share one buffer, as queued writes always do;
    # zerocopy ones keep their own buffer); when the event ends the queue
    # goes out as the writer callback would send it, so the N answers to N
    # pipelined requests leave in two send()s.  Why the first goes at once:
    # a client with one connection and a window of requests gets its first
    # answer while the server is still working through the rest, and sends
    # its next request meanwhile; holding every answer to the end of the
    # event made client and server take turns (measured, one connection,
    # 8 requests of 512 B in flight: 70,000 requests/s and a p50 of 112 us
    # against asyncio's 127,000 and 59 us).  No write waits past the end of
    # the event that made it; close(), write_eof() and flow control see the
    # queue as they would see a socket that took nothing.
    # ZCConfig.batch_writes=False sends each write at once, as asyncio does.

    def _read_ready(self) -> None:
        # One read event, in as few Python frames as it can be (with one
        # request per event, as an RPC server with one request in flight per
        # connection sees, each frame is a measurable share of the request:
        # folding _read_event and the uncork call into this one, and the
        # small-write checks into write(), took 0.2 us off each event of
        # about 8 us, recv and send included).
        #
        # Completions first: EPOLLERR (a notification queued) lands here
        # too, and on the stdlib loop it keeps landing here, every
        # iteration, until the error queue is read.
        if self._zc.pending_bytes:
            self._reap_sends()
        if self._closing:
            return
        # (An "iteration" batch is opened by the writes instead: they come
        # from tasks this event only wakes, and an event that makes none
        # costs nothing.)
        batch = self._batch_event
        if batch:
            self._corked = _OPEN
        elif self._corked == _SENT:
            self._corked = _OFF  # batch_scope "iteration": a new round of answers
        try:
            if self._kind == _VIEWS:
                self._pump(self._want)
            else:
                self._read_event_plain()
        finally:
            if batch:
                self._corked = _OFF
                if self._queue:
                    self._send_held()

    def _uncork(self) -> None:
        if not self._corked:
            return
        self._corked = _OFF
        if self._queue:
            self._send_held()

    def _send_held(self) -> None:
        # The writes a batch held: sent as the writer callback would.
        if not self._writer_on and not self._sendfile_busy:
            self._write_ready()
            if self._queue:
                self._set_writer(True)

    def _read_event_plain(self) -> None:
        if self._rx.has_pending:
            # Views a pause held back before a switch to a plain protocol:
            # they come first, through _deliver_copy.
            try:
                if not self._rx.deliver_pending():
                    return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
            if self._closing or self._paused:
                return
        self._read_ready_plain()

    def _pump(self, want: int) -> int:
        self._pumps += 1
        try:
            n = self._rx.pump(want)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on aiozc transport")
            return 0
        if self._closing:
            return n  # closed by a callback: nothing more is delivered
        # Watched after any pump (not only drained ones: a pump that stops at
        # its budget may have taken the last byte, and no event follows); a
        # watched connection costs the sweeper one look per IDLE_AFTER, and
        # its pumps nothing more than the flag test.
        if not self._watched:
            self._watched = True
            self._sweeper.watch(self)
        if n == PUMP_EOF:
            self._read_eof()
        elif n == PUMP_STARVED:
            self._starved = True
            self._update_reader()
            if self._rx.on_release is None:
                self._listen_for_releases()
            # A protocol that queues views (a stream reader waiting for a
            # frame bigger than max_pinned_bytes) may hold the very memory
            # it waits for: it is told, and can copy it out.
            if self._kind == _VIEWS:
                try:
                    self._protocol.memory_exhausted()  # type: ignore[union-attr]
                except (SystemExit, KeyboardInterrupt):
                    raise
                except BaseException as exc:
                    self._fatal_error(exc, "Fatal error: protocol.memory_exhausted() call failed.")
        return n

    # A stream reader that runs out of bytes would otherwise wait for the
    # loop: a future, a trip through epoll, _read_ready, then a task wake-up,
    # about 1 us per 32 KiB frame on top of the engine's own cost (the
    # benchmarks' floor).  When the socket is not known to be empty it
    # receives at once instead, from the reader's own task, and waits only
    # when the kernel's queue was drained, as the anyio stream does.
    def receive_now(self, want: int = 0) -> bool:
        """Receive at once, for a consumer short of ``want`` bytes (0: any).

        For readers that cut frames out of what :meth:`data_received
        <aiozc.ZCProtocol.data_received>` delivers (the stream reader does):
        instead of waiting for the event loop to report the socket readable,
        receive now, from the caller's task, delivering to the protocol as
        usual.  Does nothing (and returns False) when reading is paused or
        over, or when the last receive found the socket's queue empty;
        True if anything was received, or the end of the stream.
        """
        if (
            self._kind != _VIEWS
            or self._closing
            or self._paused
            or self._starved
            or self._at_eof
            or self._rx.drained
        ):
            return False
        n = self._pump(want)
        return n > 0 or n == PUMP_EOF

    def set_read_hint(self, nbytes: int) -> None:
        """A consumer waits for ``nbytes`` more bytes (0: none in particular).

        Receives made when the socket becomes readable then stop once that
        many are delivered, rather than read ahead up to the per-event
        budget: bytes read ahead of a big frame's end would be pieces to
        join, where left in the kernel they can be received whole
        (:meth:`gather`).
        """
        self._want = nbytes if nbytes > 0 else 0

    # A plain Protocol or BufferedProtocol: one recv() per event into its
    # own buffer or a new bytes, as asyncio's selector transport does.  The
    # callbacks that fail are reported as asyncio reports them.
    def _read_ready_plain(self) -> None:
        protocol: Any = self._protocol
        buffered = self._kind == _BUFFERED
        stage = "protocol.get_buffer()"
        try:
            if buffered:
                buf = protocol.get_buffer(-1)
                if not len(buf):
                    raise RuntimeError("get_buffer() returned an empty buffer")
                room = len(buf)
            else:
                room = _MAX_RECV
            stage = ""
            try:
                if buffered:
                    n = self._sock.recv_into(buf)
                else:
                    data = self._sock.recv(_MAX_RECV)
                    n = len(data)
            except (BlockingIOError, InterruptedError):
                return
            if not n:
                self._read_eof()
                return
            self._plain_bytes += n
            self._plain_calls += 1
            stage = "protocol.buffer_updated()" if buffered else "protocol.data_received()"
            if buffered:
                protocol.buffer_updated(n)
            else:
                protocol.data_received(data)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            message = f"Fatal error: {stage} call failed." if stage else "Fatal read error on aiozc transport"
            self._fatal_error(exc, message)
            return
        if n < room:
            self._collect_error()

    def _collect_error(self) -> None:
        # The plain protocols' side of Receiver._raise_pending_error: on
        # uvloop, for a socket the loop watches itself, a receive that
        # drained the queue collects a pending reset now, because libuv
        # will not report the socket readable again.
        if not self._rx.eager_errors or self._closing:
            return
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._fatal_error(OSError(err, os.strerror(err)), "Fatal read error on aiozc transport")

    def _read_eof(self) -> None:
        if self._loop.get_debug():
            logger.debug("%r received EOF", self)
        self._at_eof = True
        self._update_reader()
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[union-attr]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    # The engine calls on_release when a view is released while it starved.
    # Most connections never starve, and the callback (a partial over a
    # weak reference: weakly, because the engine's pool outlives the
    # transport while views are held, and must neither keep it alive nor
    # call into one the garbage collector is tearing down) is 270 bytes a
    # connection, a tenth of an idle one's: so it is made at the first
    # starvation.  A view released in another thread between the engine's
    # starving and this found no callback, and its wake-up was lost: so
    # the first time, receiving is tried once more anyway (it starves
    # again at once if nothing was freed, now with the callback in place).
    def _listen_for_releases(self) -> None:
        self._rx.on_release = release_callback(self._on_memory_released)
        self._loop.call_soon(self._resume_after_starving)

    def _on_memory_released(self) -> None:
        # Called by the engine when a view is released while it was starved
        # (on_exhausted='pause'); views can be released in any thread, and
        # after the loop has closed (an application that ended with the
        # connection open and its views alive): then nobody is left to
        # resume, and call_soon_threadsafe would raise.
        if self._loop.is_closed():
            return
        try:
            self._loop.call_soon_threadsafe(self._resume_after_starving)
        except RuntimeError:  # closed in another thread since the check
            pass

    def _resume_after_starving(self) -> None:
        if self._starved:
            self._starved = False
            self._update_reader()

    # -- writing -------------------------------------------------------------
    #
    # A write goes one of two ways.  An immutable buffer (bytes, or a
    # read-only view aiozc handed out) of send_zerocopy_threshold bytes or
    # more goes zerocopy: ZeroCopySendTracker sends it with MSG_ZEROCOPY and holds
    # it until the kernel's completion, and what the socket does not take
    # at once is queued as a view of it, not copied.  Anything else goes as
    # asyncio's transports send it: what the socket does not take is copied
    # into a bytearray at the queue's tail.  The kernel keeps the stream in
    # the order of the sends, so the holds need no ordering of their own.
    #
    # Bytes still queued and bytes sent zerocopy but not yet completed are
    # both "buffered": get_write_buffer_size() counts both, pause_writing()
    # and resume_writing() follow both, and close() waits for both.  So
    # drain() with a high-water mark of 0 returns only once the kernel has
    # let go of every buffer, and the mark bounds the application memory
    # the transport holds.  The cost: with the default 64 KiB mark, a
    # writer that awaits drain() after each large zerocopy write waits for
    # its completion, an ACK's round trip; raise the mark to about the
    # bandwidth-delay product for throughput (docs/design.md).

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``, buffering what the socket does not take at once.

        Large immutable buffers (``bytes``, read-only views from aiozc) go
        out with ``MSG_ZEROCOPY`` per ``ZCConfig.send_zerocopy``; the
        transport then holds a reference to ``data`` until the kernel has
        sent it, so the caller may drop or ``release()`` its own view at
        once.  Mutable buffers are copied, as on asyncio's transports.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if isinstance(data, memoryview) and (data.ndim != 1 or data.itemsize != 1):
            data = data.cast("B")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= 5:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        corked = self._corked
        if corked == _OPEN:
            self._corked = _HOLDING  # this write goes now, the next ones wait
        elif self._batch_iteration and corked != _HOLDING:
            # batch_scope "iteration" (the tasks one read event woke answer
            # in the next loop iteration): the first write after a read
            # event goes now; a second one opens a batch that every later
            # write of this iteration joins, and that leaves at the start of
            # the next iteration, before its I/O callbacks.  A task that
            # answers each request with one write (one request in flight)
            # thus queues no callback at all: the next read event ends the
            # "one went out" state.  (Opening the batch at the first write
            # cost a Handle per request, 6 of the 81 Python calls per
            # request of the streams RPC server with one request in flight.)
            if corked == _OFF:
                self._corked = _SENT
            else:
                self._corked = corked = _HOLDING
                self._loop.call_soon(self._uncork)
        zc = self._zc
        view = zc.view_for(data) if len(data) >= zc.min_size else None
        n = 0
        if not self._queue and not self._sendfile_busy and corked != _HOLDING:
            try:
                if view is not None:
                    n = zc.send(view)
                else:  # (_send_copy, inline: this is every small reply)
                    zc.send_calls += 1
                    n = self._sock.send(data)
                    zc.bytes_copied += n
            except (BlockingIOError, InterruptedError):
                pass
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on aiozc transport")
                return
            if n == len(data):
                if view is not None:
                    self._maybe_pause_protocol()
                    self._update_reaper()
                return
            self._set_writer(True)
        # (Corked: the bytes join the queue, and _uncork sends them.)
        queue = self._held if self._held is not None else self._queue
        if queue is None:
            queue = self._queue = deque()
        if view is not None:
            seg = view[n:] if n else view
            queue.append(seg)
            self._queued += len(seg)
        else:
            rest = memoryview(data)[n:] if n else data
            tail = queue[-1] if queue else None
            if type(tail) is bytearray:
                tail.extend(rest)
            else:
                queue.append(bytearray(rest))
            self._queued += len(rest)
            self._zc.bytes_buffered += len(rest)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write the buffers in order: joined into one send, except that a
        buffer that goes zerocopy is sent as itself, not copied into the join."""
        zc = self._zc
        if not zc.active:
            self.write(b"".join(list_of_data))
            return
        small: list[bytes | bytearray | memoryview] = []
        for data in list_of_data:
            if zc.view_for(data) is None:
                small.append(data)
                continue
            if small:
                self.write(b"".join(small))
                small.clear()
            self.write(data)
        if small:
            self.write(b"".join(small))

    def _send_copy(self, data: bytes | bytearray | memoryview) -> int:
        self._zc.send_calls += 1
        n = self._sock.send(data)
        self._zc.bytes_copied += n
        return n

    def _write_ready(self) -> None:
        if self._zc.pending_bytes:
            self._reap_sends()
        if self._conn_lost:
            return
        queue = self._queue
        if not queue and self._sendfile_waiter is not None:
            # sendfile() waits for the socket to take more.
            self._set_writer(False)
            self._wake_sendfile()
            return
        zc = self._zc
        sent = 0
        try:
            while queue:
                seg = queue[0]
                if type(seg) is memoryview and zc.active:
                    n = zc.send(seg)
                else:
                    n = self._send_copy(seg)
                sent += n
                if n == len(seg):
                    queue.popleft()
                    continue
                if type(seg) is bytearray:
                    del seg[:n]
                else:
                    queue[0] = seg[n:]
                break
        except (BlockingIOError, InterruptedError):
            pass
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._set_writer(False)
            self._queue = None
            self._queued = 0
            self._fatal_error(exc, "Fatal write error on aiozc transport")
            return
        self._queued -= sent
        self._maybe_resume_protocol()
        if not queue:
            self._set_writer(False)
            if self._sendfile_busy:
                self._wake_sendfile()  # the writes before the file are out
            elif self._closing:
                self._maybe_finish_close()
            elif self._eof_written:
                self._shutdown_write()

    def _set_writer(self, on: bool) -> None:
        if on and not self._writer_on:
            self._loop.add_writer(self._fd, self._write_ready)
            self._writer_on = True
        elif not on and self._writer_on:
            self._loop.remove_writer(self._fd)
            self._writer_on = False
            self._update_reaper()

    # -- sendfile --------------------------------------------------------------
    #
    # The file goes out with os.sendfile(): the kernel reads the page cache
    # straight into the socket, no byte passes through user space.  Order
    # is kept against write(): bytes written before sendfile() are sent
    # first (it waits for the queue to empty), bytes written while it runs
    # wait in _held and follow the file; close() and write_eof() made
    # meanwhile take effect after it.  Flow control is the socket's own
    # buffer: the call sends what the socket takes and waits for the writer
    # callback when it is full.  Files os.sendfile() cannot send (no
    # fileno(), not a regular file, or a kernel that refuses) are read and
    # sent by the same loop, as asyncio's fallback does.

    async def sendfile(
        self, file: IO[bytes], offset: int = 0, count: int | None = None, *, fallback: bool = True
    ) -> int:
        """Send ``count`` bytes of ``file`` from ``offset`` (to its end if None).

        What ``loop.sendfile(transport, file, offset, count)`` does on an
        aiozc loop, and what a plain asyncio loop does through its copying
        fallback: the bytes go out with ``os.sendfile()`` (no copy through
        user space), in order with everything written before and after.
        Returns the number of bytes sent; the file's position is left just
        after them.  With ``fallback=False``, a file ``os.sendfile()``
        cannot send raises :exc:`asyncio.SendfileNotAvailableError` instead
        of being read and sent by copy.
        """
        _check_sendfile_args(file, offset, count)
        if self._closing:
            raise RuntimeError("Transport is closing")
        if self._eof_written:
            raise RuntimeError("Cannot call sendfile() after write_eof()")
        if self._sendfile_busy:
            raise RuntimeError("another sendfile() is already running on this transport")
        self._sendfile_busy = True
        self._held = deque()
        sent = 0
        try:
            while self._queue:  # what was written before goes first
                await self._wait_for_socket()
            try:
                fileno = file.fileno()
                native = stat.S_ISREG(os.fstat(fileno).st_mode)
            except (AttributeError, io.UnsupportedOperation, OSError):
                native = False
            if native:
                try:
                    sent = await self._sendfile_native(fileno, offset, count)
                except _SendfileNotAvailable:
                    native = False
            if not native:
                if not fallback:
                    raise asyncio.SendfileNotAvailableError(
                        f"os.sendfile() cannot send {file!r}: not a regular file, "
                        "or the kernel refused it; pass fallback=True to copy it"
                    )
                sent = await self._sendfile_copy(file, offset, count)
        finally:
            self._sendfile_busy = False
            self._sendfile_waiter = None
            if sent and _seekable(file):
                file.seek(offset + sent)
            if self._held:
                if self._queue is None:
                    self._queue = deque()
                self._queue.extend(self._held)
            self._held = None
            if self._conn_lost:
                self._queue = None
                self._queued = 0
            elif self._queue:
                self._set_writer(True)
            elif self._closing:
                self._maybe_finish_close()
            elif self._eof_written:
                self._shutdown_write()
        return sent

    async def _sendfile_native(self, fileno: int, offset: int, count: int | None) -> int:
        sent = 0
        while count is None or sent < count:
            block = _SENDFILE_BLOCK if count is None else min(count - sent, _SENDFILE_BLOCK)
            try:
                n = os.sendfile(self._fd, fileno, offset + sent, block)
            except (BlockingIOError, InterruptedError):
                await self._wait_for_socket()
                continue
            except OSError as exc:
                if sent == 0 and exc.errno in _SENDFILE_UNSUPPORTED:
                    raise _SendfileNotAvailable from exc
                self._sendfile_failed(exc)
                raise
            if n == 0:
                break  # the end of the file
            sent += n
            self._zc.bytes_copied += n
        return sent

    async def _sendfile_copy(self, file: IO[bytes], offset: int, count: int | None) -> int:
        sent = 0
        if offset or _seekable(file):
            file.seek(offset)  # a pipe cannot seek: it is read from where it is
        while count is None or sent < count:
            want = _SENDFILE_COPY_BLOCK if count is None else min(count - sent, _SENDFILE_COPY_BLOCK)
            data = await self._loop.run_in_executor(None, file.read, want)
            if not data:
                break
            view = memoryview(data)
            while view:
                if self._conn_lost:
                    raise ConnectionError("the connection was lost during sendfile()")
                try:
                    n = self._send_copy(view)
                except (BlockingIOError, InterruptedError):
                    await self._wait_for_socket()
                    continue
                except OSError as exc:
                    self._sendfile_failed(exc)
                    raise
                view = view[n:]
                sent += n
        return sent

    async def _wait_for_socket(self) -> None:
        # Woken by _write_ready (the socket takes more, or the queue emptied)
        # or by _force_close.
        if self._conn_lost:
            raise ConnectionError("the connection was lost during sendfile()")
        waiter = self._loop.create_future()
        self._sendfile_waiter = waiter
        self._set_writer(True)
        try:
            await waiter
        finally:
            self._sendfile_waiter = None
        if self._conn_lost:
            raise ConnectionError("the connection was lost during sendfile()")

    def _wake_sendfile(self) -> None:
        waiter = self._sendfile_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _sendfile_failed(self, exc: OSError) -> None:
        self._fatal_error(exc, "Fatal write error on aiozc transport (sendfile)")

    # -- reaping completions -----------------------------------------------
    #
    # A completion is a message on the socket's error queue, and the kernel
    # announces it as EPOLLERR, which epoll reports whatever events the fd
    # was registered for.  Who hears it:
    #
    # * aiozc's poller's epoll, while reading is on and the poller watches
    #   it (_poller.pyx): level-triggered, so _read_ready runs, every
    #   iteration, until the error queue is read; it reaps first thing
    #   (which also stops that spin).
    # * The loop: while writes wait (add_writer), and while reading is on
    #   for a connection the poller leaves to the loop (add_reader).  What
    #   the loops make of it (checked on both, and pinned down by
    #   tests/test_send.py::TestLoopWakeups): the stdlib selector loop
    #   reports the fd readable and writable, level-triggered, and
    #   _read_ready and _write_ready both reap first thing.  uvloop (libuv)
    #   treats POLLERR on a uv_poll handle as fatal: it stops the handle and
    #   reports UV_EBADF, on which uvloop runs the reader and the writer
    #   callback once each and then closes the handle.  The fd is silently
    #   no longer watched, and a later add_reader() or add_writer() on it
    #   raises RuntimeError (the closed handle stays in the loop's table).
    #   So on any loop but the stdlib's, every reap that read a
    #   notification is followed by _rearm(): remove_reader() and
    #   remove_writer() (which also drop a closed handle), then add back
    #   whatever this transport has the loop watch.  Doing it inside the
    #   callback is safe: uvloop checks the handles again after each
    #   callback it runs.
    # * Neither fires when the fd is not registered at all (reading paused
    #   or at EOF, nothing queued, closing); add_writer() cannot stand in,
    #   since a writable socket would make it fire every iteration on the
    #   stdlib loop.  Then a timer reaps (_reap_poll).
    #
    # The receive path is untouched apart from the reap in front of it: a
    # connection with nothing outstanding pays one attribute test per
    # callback, and a wake-up that was only for a completion costs the
    # engine one receive call that finds nothing.

    def _reap_sends(self) -> None:
        zc = self._zc
        if not zc.reap():
            return
        self._rearm()
        self._maybe_resume_protocol()
        if not zc.pending:
            if self._lingering:
                self._close_socket()
            elif self._closing and not self._queue:
                self._maybe_finish_close()

    def _rearm(self) -> None:
        if not self._rearm_on_errqueue or self._sock.fileno() < 0:
            return
        loop, fd = self._loop, self._fd
        if self._reader_direct:  # the loop watches reading too
            loop.remove_reader(fd)
        loop.remove_writer(fd)
        if self._reader_direct:
            loop.add_reader(fd, self._read_ready)
        if self._writer_on:
            loop.add_writer(fd, self._write_ready)

    def _update_reaper(self) -> None:
        if (self._zc.pending and self._reap_timer is None
                and not self._reader_on and not self._writer_on):
            self._reap_delay = _REAP_POLL_FIRST
            self._reap_timer = self._loop.call_later(self._reap_delay, self._reap_poll)

    def _reap_poll(self) -> None:
        self._reap_timer = None
        if self._sock.fileno() < 0:
            return
        before = self._zc.pending
        self._reap_sends()
        if not self._zc.pending or self._reader_on or self._writer_on:
            return
        if self._lingering and self._loop.time() >= self._linger_deadline:
            self._linger_expired()
            return
        if self._zc.pending < before:
            self._reap_delay = _REAP_POLL_FIRST
        else:
            self._reap_delay = min(self._reap_delay * 2, _REAP_POLL_MAX)
        self._reap_timer = self._loop.call_later(self._reap_delay, self._reap_poll)

    # -- write-side state ------------------------------------------------------

    def can_write_eof(self) -> bool:
        """True: TCP can half-close."""
        return True

    def write_eof(self) -> None:
        """Half-close: send FIN once the buffered data is out; reading goes on."""
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        if not self._queue and not self._sendfile_busy:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def get_write_buffer_size(self) -> int:
        """Bytes written and not yet released: queued for the socket, or
        sent with ``MSG_ZEROCOPY`` and not yet completed by the kernel."""
        return self._queued + self._zc.pending_bytes

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks, as asyncio does (defaults 64 KiB and high/4).

        Zerocopy sends count until their completion, so a writer of large
        immutable buffers wants a high-water mark near the connection's
        bandwidth-delay product.
        """
        super().set_write_buffer_limits(high, low)

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        """Close once the buffered data is sent and every zerocopy send has
        completed; views already given stay valid."""
        if self._closing:
            return
        self._closing = True
        self._stop_delivery()
        self._update_reader()
        if not self._queue and not self._sendfile_busy:
            if self._zc.pending:
                self._reap_sends()
            if self._zc.pending:
                self._update_reaper()  # the last completion finishes the close
                return
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def _maybe_finish_close(self) -> None:
        # close() was called and the queue is empty: finish once the last
        # zerocopy send has completed.  connection_lost() is scheduled, never
        # called from here: this runs inside close() (which may be inside
        # data_received) when the reap finds the last completion, and
        # asyncio promises connection_lost() is the last call and never
        # nested in another.
        if self._conn_lost or self._queue or self._sendfile_busy or self._zc.pending:
            return
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, None)

    def _stop_delivery(self) -> None:
        # close() and abort() end reading at once, as asyncio's transports
        # do ("no more data will be received"), also when called from
        # data_received in the middle of a pump: the engine stops after the
        # current view, and what it holds back is dropped with it.
        self._rx.paused = True

    def abort(self) -> None:
        """Close at once, dropping buffered data.

        Zerocopy sends the kernel already took still go out, as a plain
        send's bytes would after ``close()`` of the socket: the socket is
        shut down but kept open until their completions arrive (for at most
        a minute, then it is reset), and their buffers are held until then.
        As with ``close()``, bytes received and never read make it a reset
        at once instead, which drops what was not yet sent.
        """
        self._force_close(None)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._loop.call_exception_handler({
                "message": message, "exception": exc,
                "transport": self, "protocol": self._protocol,
            })
        self._force_close(exc)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        if self._queue or self._held:
            self._queue = None  # never handed to the kernel: no hold to wait for
            self._held = None
            self._queued = 0
            self._set_writer(False)
        self._wake_sendfile()
        if not self._closing:
            self._closing = True
            self._stop_delivery()
            self._update_reader()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            self._sweeper.forget(self)
            self._rx.on_release = None
            self._rx.close()
            if self._zc.pending:
                self._reap_sends()
            if self._zc.pending:
                self._linger()
            else:
                self._close_socket()
            connections, self._connections = self._connections, None
            if connections is not None:
                connections.discard(self)

    def _linger(self) -> None:
        # abort() or a fatal error with zerocopy sends the kernel has not
        # completed: their pages may still be read (on loopback, at the
        # peer's next read).  Releasing their buffers now could put other
        # bytes on the wire, and closing the fd would leave no way to learn
        # when it is safe.  So end the connection as close() would (the peer
        # sees the FIN after the data; or, with bytes left unread, a reset
        # that drops the write queue, whose completions then arrive) and
        # keep the fd, and the buffers, until the completions arrive or
        # _LINGER_TIMEOUT passes.
        self._lingering = True
        self._linger_deadline = self._loop.time() + _LINGER_TIMEOUT
        end_connection(self._sock.fileno())
        self._update_reaper()

    def _linger_expired(self) -> None:
        # The peer took no data for a minute.  A reset (SO_LINGER 0, then
        # close) makes the kernel drop its write queue, the skbs that
        # reference the pages, before close() returns; then the holds go.
        # (A copy of a segment already handed to a device queue can outlive
        # that by the time the device takes to send it.)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
        self._close_socket(reset=True)

    def _close_socket(self, reset: bool = False) -> None:
        if self._reap_timer is not None:
            self._reap_timer.cancel()
            self._reap_timer = None
        self._lingering = False
        if self._reader_on:  # (closing turned it off; never leave a closed fd watched)
            self._poller.unregister(self._fd)
            self._reader_on = False
            self._reader_direct = False
        if self._rx.holds_socket:
            # Views still hold the window, whose mapping keeps the socket's
            # file open: close() alone would not end the connection.
            end_connection(self._sock.fileno(), reset)
        self._sock.close()
        # Nothing can complete once the fd is gone: whatever is still held
        # is released here (nothing, unless the linger expired).
        self._zc.release_all()


# -- idle connections give their memory back -------------------------------------
#
# A connection that has not received for a moment gives back what no view
# pins (Receiver.release_idle: its copy slab to the shared store, its
# released mapped pages zapped).  Not at
# once: a busy connection drains the socket at most events, and giving back
# and taking again at each would cost it (a zap per event where batches of
# four regions amortise the TLB flush).  A per-loop sweeper notes drained
# connections and releases those whose pump count has not moved for
# IDLE_AFTER seconds: one timer per loop, whatever the number of connections,
# and nothing per receive but a flag test.
_IDLE_AFTER = 0.05


@final
class _IdleSweeper:
    # One per loop while it has connections: the transports hold it, and the
    # registry below only weakly, so it goes with them (and an abandoned
    # loop's cycle of transports and sweeper is garbage like any other).
    __slots__ = ("__weakref__", "_loop", "_timer", "_watched")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # Each watched transport, with its pump count at the last sweep (-1:
        # not swept yet).  A transport is released, and leaves the watch,
        # once a sweep finds the count it recorded the sweep before.
        self._watched: dict[ZCTransport, int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, transport: ZCTransport) -> None:
        """Look at ``transport`` at the next sweeps, until it has gone idle."""
        self._watched[transport] = -1
        if self._timer is None:
            self._timer = self._loop.call_later(_IDLE_AFTER, self._sweep)

    def forget(self, transport: ZCTransport) -> None:
        """``transport`` is gone: stop watching it."""
        self._watched.pop(transport, None)

    def _sweep(self) -> None:
        self._timer = None
        watched = self._watched
        for transport, pumps in list(watched.items()):
            if transport._closing:
                del watched[transport]
                transport._watched = False
            elif transport._pumps == pumps:
                del watched[transport]
                transport._watched = False
                transport._rx.release_idle()
            else:
                watched[transport] = transport._pumps
        if watched:
            self._timer = self._loop.call_later(_IDLE_AFTER, self._sweep)
        # The shared slab stores keep free slabs for recent demand, which
        # decays with time: while they hold more than their floor, look
        # again a little later (a quiet server ends up holding none).
        keep_trimming()


# Keyed by id(loop): a sweeper's transports hold their loop, so the id
# cannot be reused while its entry lives.
_sweepers: weakref.WeakValueDictionary[int, _IdleSweeper] = weakref.WeakValueDictionary()


def _sweeper_for(loop: asyncio.AbstractEventLoop) -> _IdleSweeper:
    sweeper = _sweepers.get(id(loop))
    if sweeper is None:
        sweeper = _sweepers[id(loop)] = _IdleSweeper(loop)
    return sweeper


# os.sendfile() sends at most this much per call (the kernel caps a call
# near 2 GiB anyway); a call returns as soon as the socket buffer is full.
_SENDFILE_BLOCK = 1 << 30
# The copying fallback reads and sends the file in blocks of this size, as
# asyncio's fallback does (256 KiB, its max read size).
_SENDFILE_COPY_BLOCK = 256 * 1024
# os.sendfile() errors on the first call that mean "not for this file or
# socket" (then the copying fallback), rather than a failed connection.
_SENDFILE_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                   errno.ENOTSOCK, errno.EOVERFLOW, errno.ESPIPE})


def _seekable(file: IO[bytes]) -> bool:
    try:
        return bool(file.seekable())
    except (AttributeError, ValueError, OSError):
        return False


class _SendfileNotAvailable(Exception):
    """os.sendfile() refused the file: use the copying fallback."""


def _check_sendfile_args(file: IO[bytes], offset: int, count: int | None) -> None:
    # As asyncio's loop.sendfile() checks them.
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")


# A connection made without a config shares this one (frozen): 150 bytes a
# connection otherwise.
_DEFAULT_CONFIG = ZCConfig()

# struct linger {int l_onoff; int l_linger;}: on, 0 seconds: close() resets.
_LINGER_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"


def _set_result_unless_cancelled(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.set_result(None)
