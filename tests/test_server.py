"""aiozc.Server and the loop-agnostic create_server/create_connection.

Every test runs on the stdlib loop and on uvloop, with real loopback sockets.
Most use plain ``asyncio.Protocol`` factories (which aiozc hands to the loop's
usual transport); the last ones use a ZCProtocol.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import pytest

from aiozc._connect import connect_accepted_socket, create_connection, create_server
from aiozc._server import Server
from support import Echo, ZCEcho


def _port(server: Server, i: int = 0) -> int:
    port: int = server.sockets[i].getsockname()[1]
    return port


async def _echo_once(port: int, payload: bytes = b"ping", host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(payload)
    data = await reader.readexactly(len(payload))
    writer.close()
    await writer.wait_closed()
    return data


@pytest.mark.asyncio
async def test_plain_protocol_echo_gets_loop_transport() -> None:
    async def main() -> None:
        protocols: list[Echo] = []

        def factory() -> Echo:
            protocols.append(Echo())
            return protocols[-1]

        async with await create_server(factory, "127.0.0.1", 0) as server:
            assert isinstance(server, Server)
            assert server.is_serving()
            assert server.get_loop() is asyncio.get_running_loop()
            payload = bytes(range(256)) * 1024
            assert await _echo_once(_port(server), payload) == payload
            (proto,) = protocols
            assert type(proto.transport).__name__ != "ZCTransport"
        assert server.sockets == ()

    await main()


@pytest.mark.asyncio
async def test_sockets_are_transport_sockets() -> None:
    async def main() -> None:
        server = await create_server(Echo, "127.0.0.1", 0, keep_alive=True)
        (sock,) = server.sockets
        assert isinstance(sock, asyncio.trsock.TransportSocket)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        assert "Server" in repr(server)
        server.close()
        await server.wait_closed()

    await main()


@pytest.mark.asyncio
async def test_wait_closed_waits_for_connections() -> None:
    async def main() -> None:
        protocols: list[Echo] = []

        def factory() -> Echo:
            protocols.append(Echo())
            return protocols[-1]

        server = await create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        server.close()
        server.close()  # idempotent
        assert not server.is_serving()
        assert server.sockets == ()
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.05)
        assert not waiter.done(), "wait_closed returned with a connection open"
        # The server-side connection still works after close().
        writer.write(b"y")
        assert await reader.readexactly(1) == b"y"
        writer.close()
        await writer.wait_closed()
        await waiter
        await protocols[0].lost
        await server.wait_closed()  # returns at once now

    await main()


@pytest.mark.asyncio
async def test_wait_closed_waits_for_close() -> None:
    async def main() -> None:
        server = await create_server(Echo, "127.0.0.1", 0)
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.02)
        assert not waiter.done(), "wait_closed returned on an open server"
        server.close()
        await waiter

    await main()


@pytest.mark.asyncio
@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
async def test_close_and_abort_clients(how: str) -> None:
    async def main() -> None:
        server = await create_server(Echo, "127.0.0.1", 0)
        clients = [await asyncio.open_connection("127.0.0.1", _port(server)) for _ in range(3)]
        for reader, writer in clients:  # make sure every connection is set up
            writer.write(b"1")
            assert await reader.readexactly(1) == b"1"
        server.close()
        getattr(server, how)()
        await server.wait_closed()
        for reader, writer in clients:
            try:
                assert await reader.read() == b""
            except ConnectionResetError:
                assert how == "abort_clients"
            writer.close()

    await main()


@pytest.mark.asyncio
async def test_serve_forever_cancel_closes() -> None:
    async def main() -> None:
        server = await create_server(Echo, "127.0.0.1", 0, start_serving=False)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        assert await _echo_once(_port(server)) == b"ping"
        with pytest.raises(RuntimeError, match="already being awaited"):
            await server.serve_forever()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    await main()


@pytest.mark.asyncio
async def test_serve_forever_ends_on_close() -> None:
    async def main() -> None:
        server = await create_server(Echo, "127.0.0.1", 0)
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        server.close()
        with pytest.raises(asyncio.CancelledError):
            await task

    await main()


@pytest.mark.asyncio
async def test_start_serving_false_does_not_listen() -> None:
    async def main() -> None:
        server = await create_server(Echo, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", _port(server))
        await server.start_serving()
        await server.start_serving()  # no-op
        assert await _echo_once(_port(server)) == b"ping"
        server.close()
        await server.wait_closed()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.start_serving()

    await main()


@pytest.mark.asyncio
async def test_many_connections_at_once() -> None:
    async def main() -> None:
        async with await create_server(Echo, "127.0.0.1", 0, backlog=128) as server:
            payloads = [f"client {i}".encode() for i in range(64)]
            results = await asyncio.gather(*(_echo_once(_port(server), p) for p in payloads))
            assert results == payloads

    await main()


@pytest.mark.asyncio
async def test_reuse_port() -> None:
    async def main() -> None:
        first = await create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        port = _port(first)
        second = await create_server(Echo, "127.0.0.1", port, reuse_port=True)
        assert _port(second) == port
        assert await _echo_once(port) == b"ping"
        with pytest.raises(OSError, match="error while attempting to bind on address") as info:
            await create_server(Echo, "127.0.0.1", port)
        assert info.value.errno == errno.EADDRINUSE
        for server in (first, second):
            server.close()
            await server.wait_closed()

    await main()


@pytest.mark.asyncio
async def test_multiple_hosts() -> None:
    async def main() -> None:
        hosts = ["127.0.0.1", "127.0.0.2"]
        async with await create_server(Echo, hosts, 0) as server:
            addrs = sorted(s.getsockname()[0] for s in server.sockets)
            assert addrs == hosts
            for i, sock in enumerate(server.sockets):
                host, port = sock.getsockname()
                assert await _echo_once(port, b"hi %d" % i, host) == b"hi %d" % i

    await main()


@pytest.mark.asyncio
async def test_ipv6_listener_is_v6only() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main() -> None:
        try:
            server = await create_server(Echo, "::1", 0)
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback: {exc}")
        async with server:
            (sock,) = server.sockets
            assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert await _echo_once(_port(server), host="::1") == b"ping"

    await main()


@pytest.mark.asyncio
async def test_server_from_sock() -> None:
    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        async with await create_server(Echo, sock=listener) as server:
            assert await _echo_once(_port(server)) == b"ping"
        assert listener.fileno() == -1  # closed with the server, as asyncio does
        with pytest.raises(ValueError, match="Neither host/port nor sock"):
            await create_server(Echo)
        with socket.socket(type=socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError, match="stream socket"):
                await create_server(Echo, sock=udp)
            with pytest.raises(ValueError, match="at the same time"):
                await create_server(Echo, "127.0.0.1", 0, sock=udp)

    await main()


@pytest.mark.asyncio
async def test_tls_refused() -> None:
    async def main() -> None:
        ctx = ssl.create_default_context()
        with pytest.raises(ValueError, match="ciphertext"):
            await create_server(Echo, "127.0.0.1", 0, ssl=ctx)
        with pytest.raises(ValueError, match="ciphertext"):
            await create_connection(Echo, "127.0.0.1", 1, ssl=ctx)
        with pytest.raises(ValueError, match="ciphertext"):
            await create_connection(Echo, "127.0.0.1", 1, ssl=True)
        with pytest.raises(ValueError, match="server_hostname"):
            await create_connection(Echo, "127.0.0.1", 1, server_hostname="example.org")

    await main()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.mark.asyncio
async def test_connect_refused() -> None:
    async def main() -> None:
        port = _closed_port()
        with pytest.raises(ConnectionRefusedError):
            await create_connection(Echo, "127.0.0.1", port)
        with pytest.raises(ExceptionGroup) as info:
            await create_connection(Echo, "127.0.0.1", port, all_errors=True)
        assert info.group_contains(ConnectionRefusedError)
        with pytest.raises(OSError):
            await create_connection(Echo, "localhost", port, happy_eyeballs_delay=0.1)

    await main()


@pytest.mark.asyncio
async def test_happy_eyeballs() -> None:
    async def main() -> None:
        async with await create_server(Echo, "127.0.0.1", 0) as server:
            port = _port(server)
            # localhost may resolve to ::1 first, where nothing listens.
            transport, proto = await create_connection(
                Echo, "localhost", port, happy_eyeballs_delay=0.05, interleave=1)
            assert transport.get_extra_info("peername")[:2] == ("127.0.0.1", port)
            transport.close()
            await proto.lost

    await main()


@pytest.mark.asyncio
async def test_create_connection_argument_errors() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="host and port was not specified"):
            await create_connection(Echo)
        with socket.socket(type=socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError, match="stream socket"):
                await create_connection(Echo, sock=udp)
            with pytest.raises(ValueError, match="at the same time"):
                await create_connection(Echo, "127.0.0.1", 1, sock=udp)

    await main()


@pytest.mark.asyncio
async def test_create_connection_plain_protocol() -> None:
    async def main() -> None:
        async with await create_server(Echo, "127.0.0.1", 0) as server:
            port = _port(server)
            transport, proto = await create_connection(Echo, "127.0.0.1", port,
                                                       local_addr=("127.0.0.1", 0))
            assert proto.transport is transport
            assert type(transport).__name__ != "ZCTransport"
            sock = transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
            transport.close()
            await proto.lost

            # With a connected socket instead of host/port.
            raw = socket.create_connection(("127.0.0.1", port))
            transport, proto = await create_connection(Echo, sock=raw)
            transport.close()
            await proto.lost

    await main()


@pytest.mark.asyncio
async def test_connect_accepted_socket_plain() -> None:
    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
            transport, proto = await connect_accepted_socket(Echo, accepted)
            assert type(transport).__name__ != "ZCTransport"
            reader, writer = await asyncio.open_connection(sock=client)
            writer.write(b"abc")
            assert await reader.readexactly(3) == b"abc"
            writer.close()
            await proto.lost

    await main()


# ----------------------------------------------------------------- zerocopy


@pytest.mark.asyncio
async def test_zc_server_tracks_connections() -> None:
    async def main() -> None:
        protocols: list[Echo] = []

        def factory() -> Echo:
            protocols.append(ZCEcho())
            return protocols[-1]

        server = await create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", _port(server))
        payload = b"z" * 100_000
        writer.write(payload)
        assert await reader.readexactly(len(payload)) == payload
        assert type(protocols[0].transport).__name__ == "ZCTransport"
        server.close()
        waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.05)
        assert not waiter.done()
        server.close_clients()
        await waiter
        assert await reader.read() == b""
        writer.close()

    await main()


@pytest.mark.asyncio
async def test_zc_create_connection() -> None:
    async def main() -> None:
        async with await create_server(Echo, "127.0.0.1", 0) as server:
            transport, proto = await create_connection(ZCEcho, "127.0.0.1", _port(server))
            assert type(transport).__name__ == "ZCTransport"
            assert proto.transport is transport
            transport.close()
            await proto.lost

    await main()


@pytest.mark.asyncio
async def test_zc_connect_accepted_socket_refuses_tls() -> None:
    async def main() -> None:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
            with pytest.raises(ValueError, match="ciphertext"):
                await connect_accepted_socket(ZCEcho, accepted,
                                              ssl=ssl.create_default_context())
            accepted.close()
            client.close()

    await main()
