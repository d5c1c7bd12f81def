"""aiozc.testing's test-runner support, run the way a user's suite runs it.

pytester runs a small user suite in a subprocess: its conftest opts in to
``aiozc.testing.pytest_plugin`` (pytest-asyncio's loop-factory hook) or
parametrizes anyio's ``anyio_backend`` with ``aiozc.testing.anyio_backends()``,
and its tests assert what loop they ran on and move real bytes through a
zerocopy transport.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TEST = '''
import asyncio
import socket

import pytest
import uvloop

import aiozc

SEEN = []


class Sink(aiozc.ZCProtocol):
    def connection_made(self, transport: aiozc.ZCTransport) -> None:
        self.got = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: memoryview) -> None:
        with data:
            self.got += data

    def eof_received(self) -> None:
        self.done.set_result(bytes(self.got))


@pytest.mark.asyncio
async def test_on_an_aiozc_loop() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, aiozc.ZCEventLoop)
    SEEN.append("uvloop" if isinstance(loop, uvloop.Loop) else "asyncio")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        transport, sink = await loop.create_connection(
            Sink, "127.0.0.1", listener.getsockname()[1])
        peer, _ = listener.accept()
    with peer:
        peer.sendall(b"x" * 100_000)
        peer.shutdown(socket.SHUT_WR)
        assert await sink.done == b"x" * 100_000
    assert type(transport).__name__ == "ZCTransport"
    transport.close()


def test_both_loops_ran() -> None:
    assert sorted(SEEN) == ["asyncio", "uvloop"]
'''

ANYIO_TEST = '''
import socket

import anyio
import pytest

import aiozc.anyio
import aiozc.testing

pytestmark = pytest.mark.anyio
SEEN = []


@pytest.fixture(params=aiozc.testing.anyio_backends())
def anyio_backend(request):
    return request.param


async def test_stream(anyio_backend) -> None:
    name = anyio_backend if isinstance(anyio_backend, str) else anyio_backend[0]
    if name == "asyncio":
        import asyncio
        assert isinstance(asyncio.get_running_loop(), aiozc.ZCEventLoop)
    SEEN.append(name)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stream = await aiozc.anyio.connect_tcp("127.0.0.1", listener.getsockname()[1])
        peer, _ = listener.accept()
    with peer:
        peer.sendall(b"0123456789")
        async with stream:
            with await stream.receive_exactly_view(10) as view:
                assert bytes(view) == b"0123456789"


def test_every_backend_ran() -> None:
    assert sorted(SEEN) == ["asyncio", "asyncio", "trio"]
'''


class TestPytestPlugins:
    def test_pytest_asyncio_runs_on_every_aiozc_loop(self, pytester: pytest.Pytester) -> None:
        pytester.makeconftest('pytest_plugins = ["aiozc.testing.pytest_plugin"]\n')
        pytester.makepyfile(test_user=USER_TEST)
        result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=3)
        result.stdout.fnmatch_lines(["*test_on_an_aiozc_loop?asyncio? PASSED*",
                                     "*test_on_an_aiozc_loop?uvloop? PASSED*"])

    def test_anyio_backends(self, pytester: pytest.Pytester) -> None:
        pytester.makepyfile(test_user=ANYIO_TEST)
        result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
        result.assert_outcomes(passed=4)
