"""The asyncio transport over the receive engine (:class:`ZCTransport`).

Reading is the receive engine's job (``_receiver.pyx``); this module plugs
it into an event loop with ``add_reader``, and implements the rest of the
asyncio ``Transport`` contract (writing, flow control, closing) the way
CPython's selector transport does, using only public loop methods so that
the same class runs on the stdlib loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import warnings
from asyncio.trsock import TransportSocket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, final

from ._buffer import ViewBuffer
from ._config import ZCConfig
from ._protocol import ZCProtocol
from ._receiver import PUMP_EOF, PUMP_STARVED, Receiver
from ._stats import ZCStats

if TYPE_CHECKING:
    from ._server import Server

__all__ = ["ZCTransport"]

logger = logging.getLogger("aiozc")

# The three ways a protocol can take data, fixed by its type.
_VIEWS = 0  # ZCProtocol: read-only memoryviews from the receive engine
_BUFFERED = 1  # asyncio.BufferedProtocol: get_buffer()/buffer_updated()
_BYTES = 2  # any other asyncio.Protocol: bytes

# For plain protocols, as CPython's selector transport: 256 KiB per recv().
_MAX_RECV = 256 * 1024

# Write-side flow control defaults, as CPython's (64 KiB high, 16 KiB low).
_HIGH_WATER = 64 * 1024


def _kind_of(protocol: asyncio.BaseProtocol) -> int:
    if isinstance(protocol, ZCProtocol):
        return _VIEWS
    if isinstance(protocol, asyncio.BufferedProtocol):
        return _BUFFERED
    return _BYTES


@final
class ZCTransport(asyncio.Transport):
    """A TCP transport that receives with ``TCP_ZEROCOPY_RECEIVE``.

    A :class:`ZCProtocol` gets read-only memoryviews; a plain
    ``asyncio.Protocol`` gets bytes and an ``asyncio.BufferedProtocol`` its
    own buffers, exactly as on asyncio's transports (through the copy path).
    Writing, flow control and closing follow asyncio.  Build one through
    :func:`aiozc.create_connection` and friends rather than directly.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        *,
        config: ZCConfig | None = None,
        extra: dict[str, Any] | None = None,
        server: Server | None = None,
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
        super().__init__(info)
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        sock.setblocking(False)
        self._config = config if config is not None else ZCConfig()
        self._rx = Receiver(self._fd, self._config, None)
        self._rx.on_release = self._on_memory_released
        # libuv drops a reader after reporting EPOLLERR once (see
        # Receiver._raise_pending_error): on uvloop, collect errors eagerly.
        self._rx.check_error_when_drained = type(loop).__module__.startswith("uvloop")
        # Bytes a stream reader waits for (0: none, read up to the budget);
        # see Receiver.pump.  Set by ZCStreamReader.
        self._want = 0
        self._protocol: asyncio.BaseProtocol = protocol
        self._kind = _VIEWS
        self.set_protocol(protocol)
        self._closing = False
        self._paused = False  # pause_reading() in force
        self._starved = False  # on_exhausted='pause' and nothing free
        self._at_eof = False  # the peer's FIN was reached: never read again
        self._reader_on = False
        self._conn_lost = 0
        self._eof_written = False
        self._buffer = bytearray()
        self._high_water = _HIGH_WATER
        self._low_water = _HIGH_WATER // 4
        self._writing_paused = False
        self._server = server
        if server is not None:
            server._attach(self)
        loop.call_soon(self._protocol.connection_made, self)
        loop.call_soon(self._update_reader)
        if waiter is not None:
            loop.call_soon(_set_result_unless_cancelled, waiter)

    def __repr__(self) -> str:
        state = "closed" if self._sock.fileno() < 0 else "closing" if self._closing else "open"
        return f"<ZCTransport fd={self._fd} {state} mode={self._rx.mode}>"

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not hasattr(self, "_rx"):
            return  # __init__ failed before the transport owned the socket
        if self._sock.fileno() >= 0:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            self._sock.close()

    # -- information ---------------------------------------------------------

    @property
    def stats(self) -> ZCStats:
        """A snapshot of this connection's receive statistics."""
        stats: ZCStats = self._rx.stats()
        if self._kind != _VIEWS:
            return dataclasses.replace(
                stats,
                mode="copy",
                fallback_reason="the protocol is not a ZCProtocol, so it is given copies",
            )
        return stats

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """As asyncio, plus ``'aiozc_stats'``: a fresh :class:`ZCStats`."""
        if name == "aiozc_stats":
            return self.stats
        return super().get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        """The protocol this transport feeds."""
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Switch protocols; the new one's type decides how it gets data."""
        self._protocol = protocol
        self._kind = _kind_of(protocol)
        self._rx.sink = protocol.data_received if self._kind == _VIEWS else None  # type: ignore[attr-defined]

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

    def _update_reader(self) -> None:
        want = not (self._closing or self._paused or self._starved or self._at_eof)
        if want and not self._reader_on:
            self._loop.add_reader(self._fd, self._read_ready)
            self._reader_on = True
        elif not want and self._reader_on:
            self._loop.remove_reader(self._fd)
            self._reader_on = False

    def _read_ready(self) -> None:
        if self._closing:
            return
        if self._kind == _VIEWS:
            self._pump(self._want)
        elif self._kind == _BUFFERED:
            self._read_ready_buffered()
        else:
            self._read_ready_bytes()

    def _pump(self, want: int) -> None:
        try:
            n = self._rx.pump(want)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on aiozc transport")
            return
        if n == PUMP_EOF:
            self._read_eof()
        elif n == PUMP_STARVED:
            self._starved = True
            self._update_reader()

    # A stream reader that runs out of bytes would otherwise wait for the
    # loop: a future, a trip through epoll, _read_ready, then a task wake-up,
    # about 1 us per 32 KiB frame on top of the engine's own cost (the
    # benchmarks' floor).  When the socket is not known to be empty it
    # receives at once instead, from the reader's own task, and waits only
    # when the kernel's queue was drained, as the anyio stream does.
    def _pull(self, want: int) -> None:
        """Receive now, for a stream reader short of ``want`` bytes."""
        if (
            self._kind != _VIEWS
            or self._closing
            or self._paused
            or self._starved
            or self._at_eof
            or self._rx.drained
        ):
            return
        self._pump(want)

    def _read_ready_bytes(self) -> None:
        try:
            data = self._sock.recv(_MAX_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on aiozc transport")
            return
        if not data:
            self._read_eof()
            return
        self._rx.note_copied(len(data))
        try:
            self._protocol.data_received(data)  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
            return
        if len(data) < _MAX_RECV:
            self._collect_error()

    def _read_ready_buffered(self) -> None:
        protocol: asyncio.BufferedProtocol = self._protocol  # type: ignore[assignment]
        try:
            buf = protocol.get_buffer(-1)
            if not len(buf):  # type: ignore[arg-type]
                raise RuntimeError("get_buffer() returned an empty buffer")
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.get_buffer() call failed.")
            return
        try:
            n = self._sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal read error on aiozc transport")
            return
        if not n:
            self._read_eof()
            return
        self._rx.note_copied(n)
        try:
            protocol.buffer_updated(n)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
            return
        if n < len(buf):  # type: ignore[arg-type]
            self._collect_error()

    def _collect_error(self) -> None:
        # The plain protocols' side of Receiver._raise_pending_error: on
        # uvloop, a receive that drained the queue collects a pending reset
        # now, because libuv will not report the socket readable again.
        if not self._rx.check_error_when_drained or self._closing:
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
            keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        if not keep_open:
            self.close()

    def _on_memory_released(self) -> None:
        # Called by the engine when a view is released while it was starved
        # (on_exhausted='pause'); views can be released in any thread.
        self._loop.call_soon_threadsafe(self._resume_after_starving)

    def _resume_after_starving(self) -> None:
        if self._starved:
            self._starved = False
            self._update_reader()

    # -- writing -------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data``, buffering what the socket does not take at once."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._eof_written:
            raise RuntimeError("Cannot call write() after write_eof()")
        if not data:
            return
        if self._conn_lost:
            if self._conn_lost >= 5:
                logger.warning("socket.send() raised exception.")
            self._conn_lost += 1
            return
        if not self._buffer:
            try:
                n = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal write error on aiozc transport")
                return
            if n == len(data):
                return
            data = memoryview(data)[n:]
            self._loop.add_writer(self._fd, self._write_ready)
        self._buffer.extend(data)
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        """Write each buffer in turn (joined into one send)."""
        self.write(b"".join(list_of_data))

    def _write_ready(self) -> None:
        if self._conn_lost:
            return
        try:
            n = self._sock.send(self._buffer)
        except (BlockingIOError, InterruptedError):
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.remove_writer(self._fd)
            self._buffer.clear()
            self._fatal_error(exc, "Fatal write error on aiozc transport")
            return
        del self._buffer[:n]
        self._maybe_resume_protocol()
        if not self._buffer:
            self._loop.remove_writer(self._fd)
            if self._closing:
                self._call_connection_lost(None)
            elif self._eof_written:
                self._shutdown_write()

    def can_write_eof(self) -> bool:
        """True: TCP can half-close."""
        return True

    def write_eof(self) -> None:
        """Half-close: send FIN once the buffered data is out; reading goes on."""
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        if not self._buffer:
            self._shutdown_write()

    def _shutdown_write(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def get_write_buffer_size(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        """The (low, high) water marks of write flow control."""
        return (self._low_water, self._high_water)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        """Set the water marks, as asyncio does (defaults 64 KiB and high/4)."""
        if high is None:
            high = _HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high_water = high
        self._low_water = low
        self._maybe_pause_protocol()

    def _maybe_pause_protocol(self) -> None:
        if len(self._buffer) <= self._high_water or self._writing_paused:
            return
        self._writing_paused = True
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                "message": "protocol.pause_writing() failed",
                "exception": exc, "transport": self, "protocol": self._protocol,
            })

    def _maybe_resume_protocol(self) -> None:
        if self._writing_paused and len(self._buffer) <= self._low_water:
            self._writing_paused = False
            try:
                self._protocol.resume_writing()
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._loop.call_exception_handler({
                    "message": "protocol.resume_writing() failed",
                    "exception": exc, "transport": self, "protocol": self._protocol,
                })

    # -- closing -------------------------------------------------------------

    def close(self) -> None:
        """Close after the buffered data is sent; views already given stay valid."""
        if self._closing:
            return
        self._closing = True
        self._update_reader()
        if not self._buffer:
            self._conn_lost += 1
            self._loop.call_soon(self._call_connection_lost, None)

    def abort(self) -> None:
        """Close at once, dropping buffered data."""
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
        if self._buffer:
            self._buffer.clear()
            self._loop.remove_writer(self._fd)
        if not self._closing:
            self._closing = True
            self._update_reader()
        self._conn_lost += 1
        self._loop.call_soon(self._call_connection_lost, exc)

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[arg-type]
        finally:
            self._rx.on_release = None
            self._rx.close()
            if self._rx.holds_socket:
                # Views still hold the window, and the mapping holds the
                # socket's file open: close() alone would leave the
                # connection up until the last view is released.
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._sock.close()
            server, self._server = self._server, None
            if server is not None:
                server._detach(self)


def _set_result_unless_cancelled(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.set_result(None)
