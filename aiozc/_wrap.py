"""Wrapping a connected socket in the right transport: one decision, made here.

Every way into aiozc (``create_connection``, ``connect_accepted_socket``,
a server's accepted connections, an aiozc loop's own methods) ends with a
connected TCP socket and a protocol.  A :class:`ZCProtocol` gets a
:class:`ZCTransport`, and TLS is refused (the kernel would map ciphertext);
any other protocol goes to the event loop's own transport, TLS included, so
that aiozc's entry points are drop-in replacements for the loop's.
"""

from __future__ import annotations

import asyncio
import socket
from ssl import SSLContext

from ._config import ZCConfig
from ._protocol import AnyProtocol, ZCProtocol
from ._transport import ConnectionSet, ZCTransport

__all__ = ["TLS_REFUSED", "refuse_tls", "set_nodelay", "wrap_socket", "zerocopy_transport"]

TLS_REFUSED = (
    "aiozc does not support TLS: TCP receive zerocopy would map the TLS "
    "ciphertext, not the plaintext, and decrypting copies it anyway. Use a "
    "plain asyncio.Protocol (it gets the event loop's own TLS transport, "
    "also through aiozc's functions and loops) for TLS connections."
)


def refuse_tls(what: str, ssl: SSLContext | bool | None, **tls_only: object) -> None:
    """Raise ValueError if ``ssl`` (or a TLS-only keyword) asks for TLS."""
    if ssl is not None and ssl is not False:
        raise ValueError(f"{what}: ssl={ssl!r} refused. {TLS_REFUSED}")
    for name, value in tls_only.items():
        if value is not None:
            raise ValueError(f"{what}: {name} is only meaningful with ssl. {TLS_REFUSED}")


def set_nodelay(sock: socket.socket) -> None:
    """Disable Nagle on a TCP socket (the loop's transports get this from
    aiozc's entry points, as ZCTransports do)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def zerocopy_transport(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol: ZCProtocol,
    *,
    what: str,
    config: ZCConfig | None,
    ssl: SSLContext | bool | None = None,
    connections: ConnectionSet | None = None,
    waiter: asyncio.Future[None] | None = None,
) -> ZCTransport:
    """The ZCTransport for ``protocol`` over ``sock`` (TLS refused, in ``what``)."""
    refuse_tls(what, ssl)
    return ZCTransport(loop, sock, protocol, config=config, connections=connections,
                       waiter=waiter)


async def wrap_socket(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    protocol: AnyProtocol,
    *,
    what: str,
    config: ZCConfig | None,
    accepted: bool,
    ssl: SSLContext | bool | None = None,
    ssl_handshake_timeout: float | None = None,
    ssl_shutdown_timeout: float | None = None,
) -> asyncio.Transport:
    """Wrap a connected socket: a ZCTransport for a ZCProtocol, else the loop's.

    ``accepted`` says which loop method takes a plain protocol's socket
    (``connect_accepted_socket``, which knows TLS for servers, or
    ``create_connection``).  Returns once ``connection_made`` has run.
    """
    if isinstance(protocol, ZCProtocol):
        refuse_tls(what, ssl, ssl_handshake_timeout=ssl_handshake_timeout,
                   ssl_shutdown_timeout=ssl_shutdown_timeout)
        waiter: asyncio.Future[None] = loop.create_future()
        transport = zerocopy_transport(loop, sock, protocol, what=what, config=config,
                                       waiter=waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport
    set_nodelay(sock)
    if accepted:
        plain, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=ssl, ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
    else:
        plain, _ = await loop.create_connection(lambda: protocol, sock=sock)
    return plain
