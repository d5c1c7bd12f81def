"""Loop-agnostic ``create_connection``, ``create_server`` and
``connect_accepted_socket``.

They run on any asyncio event loop (the stdlib's or uvloop) and mirror the
loop methods of the same names.  Whenever the protocol factory produces a
:class:`~aiozc._protocol.ZCProtocol` the connection gets a
:class:`~aiozc._transport.ZCTransport`; any other protocol gets the loop's
usual transport, so the functions are drop-in replacements.
"""

from __future__ import annotations

import asyncio
import collections.abc
import errno
import functools
import itertools
import os
import socket
from asyncio import staggered
from collections.abc import Callable, Sequence
from ssl import SSLContext
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ._config import ZCConfig
from ._protocol import AnyProtocol, ZCProtocol
from ._server import Server
from ._wrap import refuse_tls, wrap_socket

if TYPE_CHECKING:
    from ._transport import ZCTransport

__all__ = ["create_connection", "create_server", "connect_accepted_socket"]

_P = TypeVar("_P", bound=asyncio.BaseProtocol)
_ZP = TypeVar("_ZP", bound=ZCProtocol)
_AddrInfo = tuple[int, int, int, str, Any]

def _check_stream(sock: socket.socket) -> None:
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(
            f"aiozc needs a stream socket (SOCK_STREAM), got {sock!r}; "
            "use the loop's create_datagram_endpoint() for UDP"
        )


async def _resolve(
    loop: asyncio.AbstractEventLoop,
    host: str | None,
    port: int | str | None,
    *,
    family: int,
    proto: int,
    flags: int,
) -> list[_AddrInfo]:
    # Numeric hosts resolve without a lookup, so skip the trip through the
    # loop's resolver (a thread pool on the stdlib loop), as asyncio does.
    if host is not None and not isinstance(port, str):
        try:
            return list(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, proto,
                                           flags | socket.AI_NUMERICHOST))
        except socket.gaierror:
            pass
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM,
                                   proto=proto, flags=flags)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned empty list")
    return list(infos)


def _interleave(infos: list[_AddrInfo], first_family_count: int) -> list[_AddrInfo]:
    """Reorder address infos by family, as RFC 8305 (and asyncio) does."""
    by_family: dict[int, list[_AddrInfo]] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    head = lists[0][:first_family_count - 1] if lists else []
    if lists:
        lists[0] = lists[0][first_family_count - 1:]
    tail = [i for group in itertools.zip_longest(*lists) for i in group if i is not None]
    return head + tail


async def _connect_one(
    loop: asyncio.AbstractEventLoop,
    info: _AddrInfo,
    local_infos: list[_AddrInfo] | None,
    all_attempts: list[list[OSError]],
) -> socket.socket:
    # Each attempt records its own errors (attempts may run concurrently).
    errors: list[OSError] = []
    all_attempts.append(errors)
    family, type_, proto, _, address = info
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        if local_infos is not None:
            for lfamily, _, _, _, laddr in local_infos:
                if lfamily != family:
                    continue
                try:
                    sock.bind(laddr)
                    break
                except OSError as exc:
                    msg = f"error while attempting to bind on address {laddr!r}: {str(exc.strerror).lower()}"
                    errors.append(OSError(exc.errno, msg))
            else:
                if errors:
                    raise errors.pop()
                raise OSError(f"no matching local address with family={family} found")
        await loop.sock_connect(sock, address)
        return sock
    except OSError as exc:
        errors.append(exc)
        sock.close()
        raise
    except BaseException:
        sock.close()
        raise


async def _connect_any(
    loop: asyncio.AbstractEventLoop,
    infos: list[_AddrInfo],
    local_infos: list[_AddrInfo] | None,
    happy_eyeballs_delay: float | None,
    all_errors: bool,
) -> socket.socket:
    """Connect to the first address that answers, in order or staggered."""
    attempts: list[list[OSError]] = []
    sock: socket.socket | None = None
    if happy_eyeballs_delay is None:
        for info in infos:
            try:
                sock = await _connect_one(loop, info, local_infos, attempts)
                break
            except OSError:
                continue
    else:
        # RFC 8305 race, with asyncio's own helper (as its create_connection).
        sock, _, _ = await staggered.staggered_race(
            [functools.partial(_connect_one, loop, info, local_infos, attempts)
             for info in infos],
            happy_eyeballs_delay)
    if sock is None:
        raise _connect_error([e for errors in attempts for e in errors], all_errors)
    return sock


def _connect_error(errors: list[OSError], all_errors: bool) -> Exception:
    if all_errors:
        return ExceptionGroup("create_connection failed", errors)
    if len(errors) == 1 or all(str(e) == str(errors[0]) for e in errors):
        return errors[0]
    return OSError("Multiple exceptions: {}".format(", ".join(str(e) for e in errors)))


# The overloads say what the type checker cannot infer: a ZCProtocol gets a
# ZCTransport (so ``transport.stats`` type-checks), anything else the loop's.
@overload
async def create_connection(
    protocol_factory: Callable[[], _ZP],
    host: str | None = None,
    port: int | str | None = None,
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
    protocol_factory: Callable[[], _P],
    host: str | None = None,
    port: int | str | None = None,
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
    protocol_factory: Callable[[], Any],
    host: str | None = None,
    port: int | str | None = None,
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
    """Open a TCP connection, like ``loop.create_connection``.

    A :class:`ZCProtocol` gets a zerocopy transport configured by ``config``;
    any other protocol gets the running loop's usual transport.  TLS
    (``ssl``, ``server_hostname``) is refused with :exc:`ValueError`.

    ``happy_eyeballs_delay`` and ``interleave`` behave as in asyncio
    (RFC 8305: staggered attempts, addresses interleaved by family).
    """
    refuse_tls("create_connection", ssl, server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
    loop = asyncio.get_running_loop()
    if sock is not None:
        if host is not None or port is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        _check_stream(sock)
        sock.setblocking(False)
        own_sock = False
    else:
        if host is None and port is None:
            raise ValueError("host and port was not specified and no sock specified")
        infos = await _resolve(loop, host, port, family=family, proto=proto, flags=flags)
        local_infos = None
        if local_addr is not None:
            local_infos = await _resolve(loop, local_addr[0], local_addr[1],
                                         family=family, proto=proto, flags=flags)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1
        if interleave:
            infos = _interleave(infos, interleave)
        sock = await _connect_any(loop, infos, local_infos, happy_eyeballs_delay, all_errors)
        own_sock = True
    return await _make_transport(loop, protocol_factory, sock, config, accepted=False,
                                 own_sock=own_sock)


async def _make_transport(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], _P],
    sock: socket.socket,
    config: ZCConfig | None,
    *,
    accepted: bool,
    own_sock: bool = False,
    ssl: SSLContext | bool | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> tuple[asyncio.Transport, _P]:
    """Wrap a connected socket: ZCTransport for a ZCProtocol, else the loop's.

    With ``own_sock``, the socket is closed if no transport could take it.
    """
    try:
        protocol = protocol_factory()
        what = "create_connection" if not accepted else "connect_accepted_socket"
        transport = await wrap_socket(
            loop, sock, protocol, what=what, config=config, accepted=accepted, ssl=ssl,
            ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout)
    except BaseException:
        # Closing the socket object again after a transport closed it is a
        # no-op; once a transport exists, it alone closes the socket.
        if own_sock:
            sock.close()
        raise
    return transport, protocol


@overload
async def connect_accepted_socket(
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
    protocol_factory: Callable[[], _P],
    sock: socket.socket,
    *,
    config: ZCConfig | None = None,
    ssl: SSLContext | bool | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> tuple[asyncio.Transport, _P]: ...
async def connect_accepted_socket(
    protocol_factory: Callable[[], Any],
    sock: socket.socket,
    *,
    config: ZCConfig | None = None,
    ssl: SSLContext | bool | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> tuple[Any, Any]:
    """Wrap a socket accepted outside asyncio, like ``loop.connect_accepted_socket``.

    A :class:`ZCProtocol` gets a zerocopy transport configured by ``config``
    (and ``ssl`` is then refused with :exc:`ValueError`); any other protocol
    gets the running loop's usual transport, with TLS if ``ssl`` is given.
    """
    _check_stream(sock)
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    return await _make_transport(
        loop, protocol_factory, sock, config, accepted=True, ssl=ssl,
        ssl_handshake_timeout=ssl_handshake_timeout, ssl_shutdown_timeout=ssl_shutdown_timeout)


def _set_reuseport(sock: socket.socket) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError("reuse_port not supported by socket module, "
                         "SO_REUSEPORT defined but not implemented.") from None


async def _bind_sockets(
    loop: asyncio.AbstractEventLoop,
    host: str | Sequence[str] | None,
    port: int | None,
    *,
    family: int,
    flags: int,
    reuse_address: bool | None,
    reuse_port: bool | None,
    keep_alive: bool | None,
) -> list[socket.socket]:
    """Bind one listening socket per resolved address, as asyncio does."""
    if reuse_address is None:
        reuse_address = os.name == "posix"
    hosts: Sequence[str | None]
    if host == "":
        hosts = [None]
    elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
        hosts = [host]
    else:
        hosts = list(host)
    resolved = await asyncio.gather(*(
        _resolve(loop, h, port, family=family, proto=0, flags=flags) for h in hosts))
    # Deduplicate but keep getaddrinfo's order (asyncio uses a set).
    infos = list(dict.fromkeys(itertools.chain.from_iterable(resolved)))
    sockets: list[socket.socket] = []
    completed = False
    try:
        for af, socktype, proto, _, sa in infos:
            try:
                sock = socket.socket(af, socktype, proto)
            except OSError:
                continue  # a family this host does not support
            sockets.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                _set_reuseport(sock)
            if keep_alive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            # One socket per family: keep an IPv6 socket from also taking
            # the IPv4 port (Linux enables dual stack by default).
            if af == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(sa)
            except OSError as err:
                if err.errno == errno.EADDRNOTAVAIL:
                    sockets.pop().close()  # assume the family is disabled
                    continue
                msg = f"error while attempting to bind on address {sa!r}: {str(err.strerror).lower()}"
                raise OSError(err.errno, msg) from None
        if not sockets:
            raise OSError(f"could not bind on any address out of {[i[4] for i in infos]!r}")
        completed = True
    finally:
        if not completed:
            for sock in sockets:
                sock.close()
    return sockets


async def create_server_on(
    loop: asyncio.AbstractEventLoop,
    protocol_factory: Callable[[], AnyProtocol],
    host: str | Sequence[str] | None,
    port: int | None,
    *,
    config: ZCConfig | None,
    family: int,
    flags: int,
    sock: socket.socket | None,
    backlog: int,
    ssl: SSLContext | None,
    reuse_address: bool | None,
    reuse_port: bool | None,
    keep_alive: bool | None,
    ssl_handshake_timeout: float | None,
    ssl_shutdown_timeout: float | None,
    start_serving: bool,
) -> Server:
    """create_server on ``loop``; ``ssl`` applies to non-zerocopy protocols."""
    if ssl is None:
        for name, value in (("ssl_handshake_timeout", ssl_handshake_timeout),
                            ("ssl_shutdown_timeout", ssl_shutdown_timeout)):
            if value is not None:
                raise ValueError(f"{name} is only meaningful with ssl")
    if host is not None or port is not None:
        if sock is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
        sockets = await _bind_sockets(
            loop, host, port, family=family, flags=flags, reuse_address=reuse_address,
            reuse_port=reuse_port, keep_alive=keep_alive)
    else:
        if sock is None:
            raise ValueError("Neither host/port nor sock were specified")
        _check_stream(sock)
        sockets = [sock]
    for s in sockets:
        s.setblocking(False)
    server = Server(loop, sockets, protocol_factory, config=config, backlog=backlog, ssl=ssl,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout)
    if start_serving:
        await server.start_serving()  # starts, then yields once, as asyncio does
    return server


async def create_server(
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
    """Listen for TCP connections, like ``loop.create_server``.

    Each connection whose protocol is a :class:`ZCProtocol` gets a zerocopy
    transport configured by ``config``; any other protocol gets the running
    loop's usual transport.  ``host`` may be None or ``""`` (all
    interfaces), a name, or a sequence of names; every resolved address is
    bound.  TLS (``ssl``) is refused with :exc:`ValueError`.
    """
    refuse_tls("create_server", ssl, ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout)
    return await create_server_on(
        asyncio.get_running_loop(), protocol_factory, host, port, config=config,
        family=family, flags=flags, sock=sock, backlog=backlog, ssl=None,
        reuse_address=reuse_address, reuse_port=reuse_port, keep_alive=keep_alive,
        ssl_handshake_timeout=None, ssl_shutdown_timeout=None, start_serving=start_serving)
