"""The package is mypy-clean in strict mode, and its public names are documented."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import aiozc

PACKAGE = Path(aiozc.__file__).parent


@pytest.mark.typing
def test_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(PACKAGE)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_py_typed_is_shipped() -> None:
    assert (PACKAGE / "py.typed").is_file()


# Type aliases (ZerocopyPolicy, ...) cannot carry docstrings; they are
# documented where ZCConfig uses them.
DOCUMENTABLE = [
    n for n in aiozc.__all__
    if inspect.isclass(getattr(aiozc, n)) or inspect.isroutine(getattr(aiozc, n))
]


@pytest.mark.parametrize("name", DOCUMENTABLE)
def test_public_names_have_docstrings(name: str) -> None:
    obj = getattr(aiozc, name)
    assert inspect.getdoc(obj), f"aiozc.{name} has no docstring"
    if inspect.isclass(obj):
        for attr, member in vars(obj).items():
            if attr.startswith("_") or not callable(member):
                continue
            assert inspect.getdoc(member), f"aiozc.{name}.{attr} has no docstring"


# A user program written the way the README and the documentation show,
# annotated as mypy --strict demands of any program: it must type-check
# without casts or ignores.  mypy runs from a directory outside the
# repository, so aiozc is found the way a user's checker finds it: through
# the installation (the README's editable install), not the working tree.
USER_PROGRAM = '''
import asyncio
import zlib

import anyio

import aiozc
import aiozc.anyio


class Checksum(aiozc.ZCProtocol):
    def connection_made(self, transport: aiozc.ZCTransport) -> None:
        self.transport, self.crc = transport, 0

    def data_received(self, data: memoryview) -> None:
        with data:
            self.crc = zlib.crc32(data, self.crc)

    def eof_received(self) -> None:
        stats: aiozc.ZCStats = self.transport.stats
        print(stats.bytes_mapped, stats.mapped_fraction, stats.fallback_reason)


class Plain(asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        print(len(data))


async def handle(reader: aiozc.ZCStreamReader, writer: asyncio.StreamWriter) -> None:
    size = int.from_bytes(await reader.readexactly(4), "big")
    with await reader.readexactly_view(size) as frame:
        writer.write(zlib.crc32(frame).to_bytes(4, "big"))
    print(reader.stats.bytes_assembled)
    writer.close()


async def main() -> None:
    server = await aiozc.create_server(Checksum, "127.0.0.1", 0,
                                       config=aiozc.ZCConfig(zerocopy="auto"))
    async with server:
        port = server.sockets[0].getsockname()[1]
        transport, protocol = await aiozc.create_connection(Checksum, "127.0.0.1", port)
        print(transport.stats.bytes_received, protocol.crc)
        print(transport.get_extra_info("aiozc_stats").receive_calls)
        plain, _ = await aiozc.create_connection(Plain, "127.0.0.1", port)
        plain.write(b"x")
        transport.close()
        plain.close()
    streams = await aiozc.start_server(handle, "127.0.0.1", 0)
    streams.close()
    loop = asyncio.get_running_loop()
    if isinstance(loop, aiozc.ZCEventLoop):
        other = await loop.create_server(Checksum, "127.0.0.1", 0,
                                         config=aiozc.ZCConfig(zerocopy="never"))
        other.close()


def on_a_loop() -> None:
    loop = aiozc.new_event_loop()
    try:
        loop.run_until_complete(loop.create_server(Checksum, "127.0.0.1", 0,
                                                   config=aiozc.ZCConfig()))
    finally:
        loop.close()


async def with_anyio() -> None:
    async with await aiozc.anyio.connect_tcp("127.0.0.1", 8888) as stream:
        with await stream.receive_exactly_view(4) as header:
            size = int.from_bytes(header, "big")
        with await stream.receive_exactly_view(size) as frame:
            await stream.send(zlib.crc32(frame).to_bytes(4, "big"))


aiozc.run(main())
aiozc.run(main(), use_uvloop=True)
anyio.run(with_anyio)
'''


@pytest.mark.typing
def test_a_user_program_type_checks_strictly(tmp_path: Path) -> None:
    program = tmp_path / "user_program.py"
    program.write_text(USER_PROGRAM)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(program)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.typing
def test_examples_type_check_strictly() -> None:
    examples = Path(__file__).parent.parent / "examples"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(examples)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
