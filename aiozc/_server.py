"""aiozc's listening server (:class:`Server`), for every event loop.

The loop's own ``create_server`` builds its transports where we cannot reach
them (uvloop builds them inside its Cython core), so aiozc accepts
connections itself: one ``add_reader`` callback per listening socket, and a
per-connection choice between a :class:`~aiozc._transport.ZCTransport` (for a
:class:`~aiozc._protocol.ZCProtocol`) and the loop's usual transport (for any
other protocol, through ``loop.connect_accepted_socket``).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from asyncio.trsock import TransportSocket
from collections.abc import Callable
from ssl import SSLContext
from typing import cast, final

from ._config import ZCConfig
from ._protocol import AnyProtocol, ZCProtocol
from ._wrap import set_nodelay, zerocopy_transport

__all__ = ["Server"]

# asyncio.selector_events pauses accepting for this long when accept() fails
# for lack of resources: Linux keeps reporting the socket readable, and
# retrying at once would spin.
_ACCEPT_RETRY_DELAY = 1.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@final
class _Clients(set[asyncio.Transport]):
    """A server's live connections (``_transport.ConnectionSet``).

    A strong set, unlike asyncio's WeakSet: a ZCTransport stays reachable
    from its add_reader callback until it closes anyway, and the strong
    reference lets close_clients() reach every connection.  ``on_empty``
    runs when the last one is discarded.
    """

    def __init__(self, on_empty: Callable[[], None]) -> None:
        super().__init__()
        self.on_empty = on_empty

    def discard(self, transport: object, /) -> None:
        super().discard(transport)
        if not self:
            self.on_empty()


# An asyncio.Server by class, so that isinstance() checks and annotations
# written for asyncio's servers accept it, but not by construction:
# asyncio.Server.__init__ (which only stores what its own accept loop uses)
# is not called, and every public method is this class's own.  Nothing in
# asyncio reaches into a server it did not create except through the
# transports it attaches (_attach/_detach), and this server's connections
# are never attached that way: it accepts them itself.
@final
class Server(asyncio.Server):
    """A listening TCP server that accepts connections itself.

    An ``asyncio.Server`` (``isinstance`` holds) that follows
    ``asyncio.Server``'s Python 3.12+ semantics: ``close()`` stops
    listening, ``wait_closed()`` returns once the server is closed *and*
    every connection it accepted is gone, ``close_clients()`` and
    ``abort_clients()`` end those connections.  Create it with
    :func:`aiozc.create_server` or an aiozc loop's ``create_server``.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], AnyProtocol],
        *,
        config: ZCConfig | None,
        backlog: int,
        ssl: SSLContext | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> None:
        self._loop = loop
        self._sockets: list[socket.socket] | None = sockets
        self._protocol_factory = protocol_factory
        self._config = config
        self._backlog = backlog
        self._ssl = ssl
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._serving_forever_fut: asyncio.Future[None] | None = None
        self._clients = _Clients(self._last_client_gone)
        # None once close() ran and the last connection detached.
        self._waiters: list[asyncio.Future[None]] | None = []
        # Keep handoff tasks alive (the loop only holds them weakly).
        self._handoffs: set[asyncio.Task[None]] = set()
        self._retry_handles: set[asyncio.TimerHandle] = set()

    def __repr__(self) -> str:
        return f"<aiozc.Server sockets={self.sockets!r}>"

    # -- connection tracking ------------------------------------------------

    def _last_client_gone(self) -> None:
        if self._sockets is None:
            self._wakeup()

    def _wakeup(self) -> None:
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # -- the AbstractServer API -------------------------------------------

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """Return the event loop the server runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """Return True while the server accepts new connections."""
        return self._serving

    # Typed as typeshed types asyncio.Server.sockets; the objects are
    # asyncio's TransportSocket wrappers, as asyncio's own servers return.
    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets (empty once the server is closed)."""
        if self._sockets is None:
            return ()
        return cast("tuple[socket.socket, ...]",
                    tuple(TransportSocket(sock) for sock in self._sockets))

    def close(self) -> None:
        """Stop listening and close the listening sockets.

        Connections already accepted stay open; see :meth:`close_clients`.
        """
        sockets, self._sockets = self._sockets, None
        if sockets is None:
            return
        for handle in self._retry_handles:
            handle.cancel()
        self._retry_handles.clear()
        for sock in sockets:
            if self._serving:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._serving = False
        fut, self._serving_forever_fut = self._serving_forever_fut, None
        if fut is not None and not fut.done():
            fut.cancel()
        if not self._clients:
            self._wakeup()

    def close_clients(self) -> None:
        """Close every connection the server accepted (after flushing)."""
        for transport in list(self._clients):
            transport.close()

    def abort_clients(self) -> None:
        """Abort every connection the server accepted, discarding buffers."""
        for transport in list(self._clients):
            transport.abort()

    async def start_serving(self) -> None:
        """Start accepting connections (no-op when already serving)."""
        self._start_serving()
        # One loop iteration, so that the add_reader calls take effect.
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        """Serve until cancelled; cancelling closes the server and waits."""
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self) -> None:
        """Wait until the server is closed and all its connections are gone."""
        if self._waiters is None:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter

    # -- accepting ----------------------------------------------------------

    def _start_serving(self) -> None:
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        if self._serving:
            return
        self._serving = True
        # Like asyncio, listen only now: a server created with
        # start_serving=False does not let the kernel queue connections.
        for sock in self._sockets:
            sock.listen(self._backlog)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _resume_accepting(self, sock: socket.socket, handle_box: list[asyncio.TimerHandle]) -> None:
        self._retry_handles.difference_update(handle_box)
        if self._serving and self._sockets is not None and sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        # Called once per loop iteration in which the socket is readable;
        # several connections may wait, so accept up to a backlog's worth
        # (bpo-27906), but not unboundedly, to keep the loop fair.
        for _ in range(self._backlog):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._loop.call_exception_handler({
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": TransportSocket(sock),
                    })
                    self._loop.remove_reader(sock.fileno())
                    box: list[asyncio.TimerHandle] = []
                    box.append(self._loop.call_later(
                        _ACCEPT_RETRY_DELAY, self._resume_accepting, sock, box))
                    self._retry_handles.update(box)
                else:
                    self._loop.call_exception_handler({
                        "message": "socket.accept() failed",
                        "exception": exc,
                        "socket": TransportSocket(sock),
                    })
                return
            self._connection_accepted(conn)

    def _connection_accepted(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            protocol = self._protocol_factory()
            if isinstance(protocol, ZCProtocol):
                zerocopy_transport(self._loop, conn, protocol, what="a TLS server",
                                   config=self._config, ssl=self._ssl,
                                   connections=self._clients)
                return
            set_nodelay(conn)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._creation_failed(conn, exc)
            return
        task = self._loop.create_task(self._hand_to_loop(protocol, conn))
        self._handoffs.add(task)
        task.add_done_callback(self._handoffs.discard)

    def _creation_failed(
        self, conn: socket.socket, exc: BaseException, protocol: AnyProtocol | None = None
    ) -> None:
        conn.close()
        context: dict[str, object] = {
            "message": "Error on transport creation for incoming connection",
            "exception": exc,
        }
        if protocol is not None:
            context["protocol"] = protocol
        self._loop.call_exception_handler(context)

    async def _hand_to_loop(self, protocol: asyncio.BaseProtocol, conn: socket.socket) -> None:
        # The loop's transport does not know this server, so we learn when
        # its connection ends by wrapping the protocol's connection_lost on
        # the instance (every loop looks the method up on the protocol at
        # call time).  A protocol without an instance __dict__, or one
        # replaced with transport.set_protocol(), is not tracked: it would
        # otherwise keep wait_closed() waiting forever.
        transport: asyncio.Transport | None = None
        lost = False
        original = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            nonlocal lost
            lost = True
            try:
                original(exc)
            finally:
                if transport is not None:
                    self._clients.discard(transport)

        try:
            protocol.connection_lost = connection_lost  # type: ignore[method-assign]
            tracked = True
        except AttributeError:
            tracked = False
        try:
            transport, _ = await self._loop.connect_accepted_socket(
                lambda: protocol,
                conn,
                ssl=self._ssl,
                ssl_handshake_timeout=self._ssl_handshake_timeout,
                ssl_shutdown_timeout=self._ssl_shutdown_timeout,
            )
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as exc:
            self._creation_failed(conn, exc, protocol)
            return
        # connection_lost may already have run (a peer that reset at once).
        if tracked and not lost:
            self._clients.add(transport)
