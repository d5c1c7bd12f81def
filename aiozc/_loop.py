"""aiozc's event loops: the stdlib selector loop and uvloop, zerocopy-aware.

``new_event_loop()`` and ``run()`` give a loop whose ``create_connection``,
``create_server`` and ``connect_accepted_socket`` build a
:class:`~aiozc._transport.ZCTransport` whenever the protocol factory produces
a :class:`~aiozc._protocol.ZCProtocol`, and the loop's usual transport for
any other protocol.  So ``asyncio.open_connection``/``start_server`` and
every library built on the loop keep working unchanged on an aiozc loop.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from ssl import SSLContext
from typing import IO, Any, TypeVar, final

from . import _connect
from ._config import ZCConfig
from ._protocol import ZCProtocol
from ._server import Server
from ._transport import ZCTransport

__all__ = ["new_event_loop", "run"]

_T = TypeVar("_T")
_P = TypeVar("_P", bound=asyncio.BaseProtocol)


class _ZCLoopMixin(asyncio.AbstractEventLoop):
    """Zerocopy-aware connection methods, mixed in before a concrete loop.

    Deriving from ``AbstractEventLoop`` is for the type checker only: in the
    MRO of ``_ZCSelectorEventLoop(_ZCLoopMixin, SelectorEventLoop)`` it comes
    after the concrete loop, so ``super()`` here reaches the real methods.
    """

    _aiozc_kind = "loop"

    def __repr__(self) -> str:
        return (f"<aiozc {self._aiozc_kind} running={self.is_running()} "
                f"closed={self.is_closed()} debug={self.get_debug()}>")

    # Both methods below call the protocol factory *before* connecting
    # (asyncio calls it once connected): the protocol's type is what picks
    # the transport, and the factory is an opaque callable.  The factory is
    # still called exactly once; it just also runs when the connection
    # then fails, and its protocol is then dropped without connection_made.

    async def create_connection(
        self,
        protocol_factory: Callable[[], _P],
        host: str | None = None,
        port: int | None = None,
        *,
        config: ZCConfig | None = None,
        ssl: SSLContext | bool | None = None,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        sock: socket.socket | None = None,
        local_addr: tuple[str, int] | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        all_errors: bool = False,
    ) -> tuple[asyncio.Transport, _P]:
        """Like ``loop.create_connection``; a ZCProtocol gets a zerocopy transport.

        ``config`` configures the zerocopy transport and is ignored for
        other protocols.  TLS with a ZCProtocol raises :exc:`ValueError`.
        """
        protocol = protocol_factory()
        if isinstance(protocol, ZCProtocol):
            return await _connect.create_connection(
                lambda: protocol, host, port, config=config, ssl=ssl, family=family,
                proto=proto, flags=flags, sock=sock, local_addr=local_addr,
                server_hostname=server_hostname, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
                happy_eyeballs_delay=happy_eyeballs_delay, interleave=interleave,
                all_errors=all_errors)
        # Pass newer keywords only when used, so loops predating them
        # (uvloop; all_errors before 3.12) keep working by default.
        newer: dict[str, Any] = {}
        if happy_eyeballs_delay is not None:
            newer["happy_eyeballs_delay"] = happy_eyeballs_delay
        if interleave is not None:
            newer["interleave"] = interleave
        if all_errors:
            newer["all_errors"] = all_errors
        # (Through a plain callable: the typeshed overloads split host/port
        # from sock, and we forward both as given.)
        base: Callable[..., Awaitable[tuple[asyncio.Transport, _P]]] = super().create_connection
        return await base(
            lambda: protocol, host, port, ssl=ssl, family=family, proto=proto, flags=flags,
            sock=sock, local_addr=local_addr, server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout, **newer)

    async def connect_accepted_socket(
        self,
        protocol_factory: Callable[[], _P],
        sock: socket.socket,
        *,
        config: ZCConfig | None = None,
        ssl: SSLContext | bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.Transport, _P]:
        """Like ``loop.connect_accepted_socket``; a ZCProtocol gets a zerocopy transport."""
        protocol = protocol_factory()
        if isinstance(protocol, ZCProtocol):
            return await _connect.connect_accepted_socket(
                lambda: protocol, sock, config=config, ssl=ssl,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
        return await super().connect_accepted_socket(
            lambda: protocol, sock, ssl=ssl, ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)

    async def sendfile(
        self,
        transport: asyncio.WriteTransport,
        file: IO[bytes],
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        """Like ``loop.sendfile``; a :class:`ZCTransport` sends with ``os.sendfile()``.

        Other transports get the loop's own implementation.
        """
        if isinstance(transport, ZCTransport):
            return await transport.sendfile(file, offset, count, fallback=fallback)
        return await super().sendfile(transport, file, offset, count, fallback=fallback)

    # The returned server is aiozc's own, not an asyncio.Server (hence the
    # override ignore): it accepts connections itself and picks a transport
    # per connection.  With ``ssl`` it still serves: a plain protocol gets
    # the loop's TLS transport (through connect_accepted_socket), while a
    # ZCProtocol has its connection refused and the reason logged through
    # the loop's exception handler -- zerocopy cannot apply to ciphertext.
    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | Sequence[str] | None = None,
        port: int | None = None,
        *,
        config: ZCConfig | None = None,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: SSLContext | bool | None = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        keep_alive: bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
    ) -> Server:
        """Like ``loop.create_server``, returning an :class:`aiozc.Server`.

        Connections whose protocol is a ZCProtocol get zerocopy transports
        configured by ``config``; others get the loop's usual transport.
        """
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        return await _connect.create_server_on(
            self, protocol_factory, host, port, config=config, family=family, flags=flags,
            sock=sock, backlog=backlog, ssl=ssl, reuse_address=reuse_address,
            reuse_port=reuse_port, keep_alive=keep_alive,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout, start_serving=start_serving)


# The [misc] ignores: our create_server returns aiozc's Server, and uvloop's
# stubs disagree with typeshed's AbstractEventLoop in many signatures.
@final
class _ZCSelectorEventLoop(_ZCLoopMixin, asyncio.SelectorEventLoop):  # type: ignore[misc]
    """The stdlib selector event loop, zerocopy-aware."""

    _aiozc_kind = "SelectorEventLoop"


@functools.cache
def _uvloop_class() -> type[asyncio.AbstractEventLoop]:
    # uvloop is optional: import it, and define its subclass, on first use.
    try:
        import uvloop
    except ImportError as exc:
        raise ImportError(
            "use_uvloop=True needs uvloop, which is not installed: "
            "pip install 'aiozc[uvloop]'"
        ) from exc

    @final
    class _ZCUVLoop(_ZCLoopMixin, uvloop.Loop):  # type: ignore[misc]
        """uvloop's event loop, zerocopy-aware."""

        _aiozc_kind = "uvloop.Loop"

    return _ZCUVLoop


def new_event_loop(*, use_uvloop: bool = False) -> asyncio.AbstractEventLoop:
    """Create a zerocopy-aware event loop: the stdlib selector loop or uvloop.

    Raises :exc:`ImportError` if ``use_uvloop`` is set and uvloop is missing.
    """
    if use_uvloop:
        return _uvloop_class()()
    return _ZCSelectorEventLoop()


def run(
    main: Coroutine[Any, Any, _T],
    *,
    use_uvloop: bool = False,
    debug: bool | None = None,
) -> _T:
    """Run ``main`` on a new zerocopy-aware loop, like :func:`asyncio.run`."""
    factory = functools.partial(new_event_loop, use_uvloop=use_uvloop)
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
