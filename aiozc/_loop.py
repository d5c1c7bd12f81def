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
from typing import IO, Any, TypeVar, final, overload

from . import _connect
from ._config import ZCConfig
from ._protocol import AnyProtocol, ZCProtocol
from ._server import Server
from ._transport import ZCTransport

__all__ = ["EventLoopPolicy", "ZCEventLoop", "install", "loop_factory", "new_event_loop", "run"]

_T = TypeVar("_T")
_P = TypeVar("_P", bound=asyncio.BaseProtocol)
_ZP = TypeVar("_ZP", bound=ZCProtocol)


class ZCEventLoop(asyncio.AbstractEventLoop):
    """The type of aiozc's event loops (:func:`new_event_loop`).

    An asyncio event loop (the stdlib's selector loop or uvloop's) whose
    ``create_connection``, ``connect_accepted_socket`` and ``create_server``
    also take ``config=`` and give a :class:`~aiozc.ZCTransport` to every
    :class:`~aiozc.ZCProtocol`; other protocols get the loop's usual
    transport.  ``isinstance(loop, aiozc.ZCEventLoop)`` tells an aiozc loop.

    (Implementation: these methods are mixed in before a concrete loop.
    Deriving from ``AbstractEventLoop`` is for the type checker only: in the
    MRO of ``_ZCSelectorEventLoop(ZCEventLoop, SelectorEventLoop)`` it comes
    after the concrete loop, so ``super()`` here reaches the real methods.)
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

    @overload
    async def create_connection(
        self,
        protocol_factory: Callable[[], _ZP],
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
    ) -> tuple[ZCTransport, _ZP]: ...
    @overload
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
    ) -> tuple[asyncio.Transport, _P]: ...
    async def create_connection(
        self,
        protocol_factory: Callable[[], Any],
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
    ) -> tuple[Any, Any]:
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

    @overload
    async def connect_accepted_socket(
        self,
        protocol_factory: Callable[[], _ZP],
        sock: socket.socket,
        *,
        config: ZCConfig | None = None,
        ssl: SSLContext | bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[ZCTransport, _ZP]: ...
    @overload
    async def connect_accepted_socket(
        self,
        protocol_factory: Callable[[], _P],
        sock: socket.socket,
        *,
        config: ZCConfig | None = None,
        ssl: SSLContext | bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.Transport, _P]: ...
    async def connect_accepted_socket(
        self,
        protocol_factory: Callable[[], Any],
        sock: socket.socket,
        *,
        config: ZCConfig | None = None,
        ssl: SSLContext | bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[Any, Any]:
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

    # The returned server is aiozc's own (an asyncio.Server subclass): it
    # accepts connections itself and picks a transport per connection.  With ``ssl`` it still serves: a plain protocol gets
    # the loop's TLS transport (through connect_accepted_socket), while a
    # ZCProtocol has its connection refused and the reason logged through
    # the loop's exception handler -- zerocopy cannot apply to ciphertext.
    async def create_server(
        self,
        protocol_factory: Callable[[], AnyProtocol],
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


# The [misc] ignore: uvloop's stubs disagree with typeshed's
# AbstractEventLoop in many signatures.
@final
class _ZCSelectorEventLoop(ZCEventLoop, asyncio.SelectorEventLoop):
    """The stdlib selector event loop, zerocopy-aware."""

    _aiozc_kind = "SelectorEventLoop"


@functools.cache
def _uvloop_class() -> type[ZCEventLoop]:
    # uvloop is optional: import it, and define its subclass, on first use.
    try:
        import uvloop
    except ImportError as exc:
        raise ImportError(
            "use_uvloop=True needs uvloop, which is not installed: "
            "pip install 'aiozc[uvloop]'"
        ) from exc

    @final
    class _ZCUVLoop(ZCEventLoop, uvloop.Loop):  # type: ignore[misc]
        """uvloop's event loop, zerocopy-aware."""

        _aiozc_kind = "uvloop.Loop"

    return _ZCUVLoop


def new_event_loop(*, use_uvloop: bool = False) -> ZCEventLoop:
    """Create a zerocopy-aware event loop: the stdlib selector loop or uvloop.

    Raises :exc:`ImportError` if ``use_uvloop`` is set and uvloop is missing.
    """
    if use_uvloop:
        return _uvloop_class()()
    return _ZCSelectorEventLoop()


def loop_factory(
    base: type[asyncio.AbstractEventLoop] | None = None,
    *,
    use_uvloop: bool = False,
) -> Callable[[], ZCEventLoop]:
    """A factory of zerocopy-aware loops, for ``loop_factory=`` parameters.

    For ``asyncio.Runner(loop_factory=...)``, ``asyncio.run(...,
    loop_factory=...)`` (Python 3.12+), ``aiozc.run(..., loop_factory=...)``,
    pytest-asyncio's loop factories and anyio's
    ``anyio_backend = ("asyncio", {"loop_factory": ...})``.

    ``base`` is the loop class to make zerocopy-aware (any subclass of
    ``asyncio.AbstractEventLoop`` whose connection methods follow asyncio's,
    e.g. ``asyncio.SelectorEventLoop``, ``uvloop.Loop`` or a subclass of
    either); the default is the stdlib selector loop, or uvloop with
    ``use_uvloop=True``.  The loops it makes are instances of :class:`ZCEventLoop`.
    """
    if base is None:
        return functools.partial(new_event_loop, use_uvloop=use_uvloop)
    if use_uvloop:
        raise TypeError("loop_factory(): pass either base or use_uvloop, not both")
    return _wrapped_class(base)


_WRAPPED: dict[type[asyncio.AbstractEventLoop], type[ZCEventLoop]] = {}


def _wrapped_class(base: type[asyncio.AbstractEventLoop]) -> type[ZCEventLoop]:
    """``base`` with ZCEventLoop mixed in before it (one class per base)."""
    if base in _WRAPPED:
        return _WRAPPED[base]
    if not (isinstance(base, type) and issubclass(base, asyncio.AbstractEventLoop)):
        raise TypeError(f"loop_factory(): base must be an event loop class, not {base!r}")
    if issubclass(base, ZCEventLoop):
        return base
    wrapped: type[ZCEventLoop] = type(f"ZC{base.__name__}", (ZCEventLoop, base), {
        "_aiozc_kind": f"{base.__module__}.{base.__qualname__}",
        "__doc__": f"{base.__qualname__}, zerocopy-aware (aiozc.loop_factory).",
    })
    _WRAPPED[base] = wrapped
    return wrapped


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """An event loop policy whose new loops are aiozc's (see :func:`install`).

    Policies are how uvloop is installed on Python 3.11; from Python 3.12
    prefer ``loop_factory=`` (:func:`loop_factory`), as asyncio deprecates
    policies in 3.14.
    """

    def __init__(self, *, use_uvloop: bool = False) -> None:
        super().__init__()
        if use_uvloop:
            _uvloop_class()  # ImportError now, not at the first loop
        self._use_uvloop = use_uvloop

    def new_event_loop(self) -> ZCEventLoop:
        """A new zerocopy-aware loop (:func:`new_event_loop`)."""
        return new_event_loop(use_uvloop=self._use_uvloop)


def install(*, use_uvloop: bool = False) -> None:
    """Make aiozc's loops asyncio's default, as ``uvloop.install()`` does for uvloop.

    After it, ``asyncio.run()``, ``asyncio.new_event_loop()`` and every
    library that asks asyncio for a new loop get a zerocopy-aware one
    (:class:`ZCEventLoop`).  It sets an :class:`EventLoopPolicy`, so it has
    asyncio's policy caveats (deprecated from Python 3.14); prefer
    :func:`run` or ``loop_factory=`` where you can.
    """
    asyncio.set_event_loop_policy(EventLoopPolicy(use_uvloop=use_uvloop))


def run(
    main: Coroutine[Any, Any, _T],
    *,
    use_uvloop: bool = False,
    debug: bool | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> _T:
    """Run ``main`` on a new zerocopy-aware loop, like :func:`asyncio.run`.

    ``loop_factory`` makes the loop instead, as in ``asyncio.run``
    (e.g. ``aiozc.loop_factory(MyLoop)``); it excludes ``use_uvloop``.
    Raises :exc:`ImportError` if ``use_uvloop`` is set and uvloop is missing
    (``main`` is then closed, never started).
    """
    if loop_factory is not None and use_uvloop:
        if isinstance(main, Coroutine):
            main.close()
        raise TypeError("run(): pass either loop_factory or use_uvloop, not both")
    if use_uvloop:
        try:
            _uvloop_class()
        except ImportError:
            # As asyncio.run does with a coroutine it cannot run: close it,
            # so that no "coroutine was never awaited" warning follows.
            if isinstance(main, Coroutine):
                main.close()
            raise
    factory = loop_factory or functools.partial(new_event_loop, use_uvloop=use_uvloop)
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
