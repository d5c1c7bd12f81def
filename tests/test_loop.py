"""aiozc's event loops (new_event_loop, run) and their connection methods.

Every test runs on both aiozc loops (stdlib selector and uvloop) with real
loopback sockets.  The ZCProtocol tests check that ZCTransports are built.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from aiozc import _loop
from aiozc._loop import new_event_loop, run
from aiozc._protocol import ZCProtocol
from aiozc._server import Server
from support import Echo, ZCEcho

KINDS = {"asyncio": False, "uvloop": True}
Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=list(KINDS))
def use_uvloop(request: pytest.FixtureRequest) -> bool:
    """Whether the test runs on the uvloop flavour of the aiozc loop."""
    return KINDS[request.param]


@pytest.fixture
def loop_run(use_uvloop: bool) -> Iterator[Run]:
    """Run a coroutine on a fresh aiozc loop, failing after 10 s."""
    factory = functools.partial(new_event_loop, use_uvloop=use_uvloop)
    with asyncio.Runner(loop_factory=factory) as runner:
        yield lambda coro: runner.run(asyncio.wait_for(coro, 10))




def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_new_event_loop(use_uvloop: bool) -> None:
    loop = new_event_loop(use_uvloop=use_uvloop)
    try:
        base = uvloop.Loop if use_uvloop else asyncio.SelectorEventLoop
        assert isinstance(loop, base)
        assert isinstance(loop, _loop.ZCEventLoop)
        assert repr(loop).startswith("<aiozc ")
        assert ("uvloop" in repr(loop)) == use_uvloop
        assert "closed=False" in repr(loop)
    finally:
        loop.close()


def test_run(use_uvloop: bool) -> None:
    async def main() -> tuple[asyncio.AbstractEventLoop, bool]:
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        return loop, loop.get_debug()

    loop, debug = run(main(), use_uvloop=use_uvloop, debug=True)
    assert isinstance(loop, _loop.ZCEventLoop)
    assert isinstance(loop, uvloop.Loop) == use_uvloop
    assert debug is True
    assert loop.is_closed()


def test_run_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    _loop._uvloop_class.cache_clear()
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes "import uvloop" fail
    try:
        with pytest.raises(ImportError, match=r"pip install 'aiozc\[uvloop\]'"):
            new_event_loop(use_uvloop=True)
    finally:
        _loop._uvloop_class.cache_clear()


def test_run_without_uvloop_closes_the_coroutine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ImportError, and no "coroutine was never awaited" after it."""
    _loop._uvloop_class.cache_clear()
    monkeypatch.setitem(sys.modules, "uvloop", None)
    started = False

    async def main() -> None:
        nonlocal started
        started = True

    coro = main()
    try:
        with pytest.raises(ImportError, match="uvloop"):
            run(coro, use_uvloop=True)
    finally:
        _loop._uvloop_class.cache_clear()
    assert coro.cr_frame is None and not started  # closed, never started


class _MyLoop(asyncio.SelectorEventLoop):
    """A user's own loop class, to be made zerocopy-aware."""

    made = 0

    def __init__(self) -> None:
        super().__init__()
        _MyLoop.made += 1


@pytest.mark.parametrize("how", ["runner", "aiozc.run", "base class"])
def test_loop_factory(use_uvloop: bool, how: str) -> None:
    """aiozc.loop_factory() for asyncio.Runner and aiozc.run(loop_factory=),
    and wrapping a loop class of the user's: ZCProtocols get ZCTransports."""

    async def main() -> tuple[asyncio.AbstractEventLoop, Any]:
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            transport, _ = await loop.create_connection(
                ZCProtocol, "127.0.0.1", listener.getsockname()[1])
            listener.accept()[0].close()
        transport.close()
        return loop, transport

    if how == "base class":
        if use_uvloop:
            factory = _loop.loop_factory(uvloop.Loop)
        else:
            factory = _loop.loop_factory(_MyLoop)
        assert _loop.loop_factory(_MyLoop if not use_uvloop else uvloop.Loop) is factory
    else:
        factory = _loop.loop_factory(use_uvloop=use_uvloop)
    if how == "aiozc.run":
        loop, transport = run(main(), loop_factory=factory)
    else:
        with asyncio.Runner(loop_factory=factory) as runner:
            loop, transport = runner.run(main())
    assert isinstance(loop, _loop.ZCEventLoop)
    assert isinstance(loop, uvloop.Loop) == use_uvloop
    assert type(transport).__name__ == "ZCTransport"
    if how == "base class" and not use_uvloop:
        assert isinstance(loop, _MyLoop) and _MyLoop.made >= 1
    with pytest.raises(TypeError):
        _loop.loop_factory(int)  # type: ignore[arg-type]


def test_install(use_uvloop: bool) -> None:
    """install(): asyncio.run and asyncio.new_event_loop give aiozc loops."""
    old = asyncio.get_event_loop_policy()
    _loop.install(use_uvloop=use_uvloop)
    try:
        async def main() -> asyncio.AbstractEventLoop:
            return asyncio.get_running_loop()

        loop = asyncio.run(main())
        assert isinstance(loop, _loop.ZCEventLoop)
        assert isinstance(loop, uvloop.Loop) == use_uvloop
        other = asyncio.new_event_loop()
        try:
            assert isinstance(other, _loop.ZCEventLoop)
        finally:
            other.close()
    finally:
        asyncio.set_event_loop_policy(old)


def test_server_is_an_asyncio_server(loop_run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(ZCEcho, "127.0.0.1", 0)
        async with server:
            assert isinstance(server, asyncio.Server) and isinstance(server, Server)

    loop_run(main())


def test_streams_use_aiozc_server(loop_run: Run) -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        assert isinstance(server, Server)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            assert type(writer.transport).__name__ != "ZCTransport"
            writer.write(b"hello\n")
            assert await reader.readline() == b"hello\n"
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()

    loop_run(main())


def test_keep_alive_on_any_python(loop_run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, _loop.ZCEventLoop)
        async with await loop.create_server(Echo, "127.0.0.1", 0, keep_alive=True) as server:
            sock = server.sockets[0]
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1

    loop_run(main())


def test_plain_create_connection(loop_run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with await loop.create_server(Echo, "127.0.0.1", 0) as server:
            transport, proto = await loop.create_connection(Echo, *server.sockets[0].getsockname())
            assert proto.transport is transport
            assert type(transport).__name__ != "ZCTransport"
            transport.write(b"abc")
            transport.close()
            await proto.lost

    loop_run(main())


def test_factory_called_once_even_when_refused(loop_run: Run) -> None:
    # The aiozc loop calls the factory *before* connecting (it needs the
    # protocol's type to pick a transport): a failed connect still made one.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for factory_cls in (Echo, ZCEcho):
            made: list[Echo] = []

            def factory() -> Echo:
                made.append(factory_cls())
                return made[-1]

            with pytest.raises(ConnectionRefusedError):
                await loop.create_connection(factory, "127.0.0.1", _closed_port())
            assert len(made) == 1
            assert made[0].transport is None

    loop_run(main())


def test_zc_protocol_tls_refused(loop_run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ValueError, match="ciphertext"):
            await loop.create_connection(ZCEcho, "127.0.0.1", 1, ssl=ssl.create_default_context())

    loop_run(main())


def test_plain_connect_accepted_socket(loop_run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
            transport, proto = await loop.connect_accepted_socket(Echo, accepted)
            assert type(transport).__name__ != "ZCTransport"
            reader, writer = await asyncio.open_connection(sock=client)
            writer.write(b"abc")
            assert await reader.readexactly(3) == b"abc"
            writer.close()
            await proto.lost

    loop_run(main())


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server and a client context sharing a fresh self-signed certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    tmp: Path = tmp_path_factory.mktemp("tls")
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    return server_ctx, client_ctx


def test_tls_server_plain_protocol(
    loop_run: Run, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls_contexts

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with await loop.create_server(Echo, "127.0.0.1", 0, ssl=server_ctx) as server:
            reader, writer = await asyncio.open_connection(
                *server.sockets[0].getsockname(), ssl=client_ctx)
            writer.write(b"secret")
            assert await reader.readexactly(6) == b"secret"
            writer.close()
            await writer.wait_closed()
            with pytest.raises(TypeError):
                await loop.create_server(Echo, "127.0.0.1", 0, ssl=True)

    loop_run(main())


def test_tls_server_refuses_zc_protocol(
    loop_run: Run, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls_contexts

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        made: list[Echo] = []

        def factory() -> Echo:
            made.append(ZCEcho())
            return made[-1]

        async with await loop.create_server(factory, "127.0.0.1", 0, ssl=server_ctx) as server:
            with pytest.raises((ConnectionError, ssl.SSLError, asyncio.IncompleteReadError)):
                reader, writer = await asyncio.open_connection(
                    *server.sockets[0].getsockname(), ssl=client_ctx)
                writer.write(b"x")
                await reader.readexactly(1)
        assert len(made) == 1 and made[0].transport is None
        assert any("ciphertext" in str(c.get("exception")) for c in errors), errors

    loop_run(main())


# ----------------------------------------------------------------- zerocopy


def test_zc_create_connection_and_server(loop_run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        made: list[Echo] = []

        def factory() -> Echo:
            made.append(ZCEcho())
            return made[-1]

        async with await loop.create_server(factory, "127.0.0.1", 0) as server:
            transport, proto = await loop.create_connection(
                ZCEcho, *server.sockets[0].getsockname())
            assert type(transport).__name__ == "ZCTransport"
            assert type(made[0].transport).__name__ == "ZCTransport"
            transport.close()
            await proto.lost
            await made[0].lost

    loop_run(main())
