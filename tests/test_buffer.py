"""ViewBuffer: frames cut from a queue of views, checked against plain bytes."""

from __future__ import annotations

import random
import select
import socket

import pytest

from aiozc import ZCConfig
from aiozc._buffer import ViewBuffer
from aiozc._engine import Receiver
from aiozc._pool import is_pool_view, join


def _split(data: bytes, rnd: random.Random) -> list[memoryview]:
    views, pos = [], 0
    while pos < len(data):
        n = rnd.randint(1, 50)
        views.append(memoryview(data[pos:pos + n]).toreadonly())
        pos += n
    return views


class TestViewBuffer:
    @pytest.mark.parametrize("seed", range(30))
    def test_take_matches_bytes(self, seed: int) -> None:
        rnd = random.Random(seed)
        data = rnd.randbytes(rnd.randint(0, 2000))
        buf = ViewBuffer()
        for view in _split(data, rnd):
            buf.append(view)
        assert len(buf) == len(data)
        pos = 0
        while pos < len(data):
            n = rnd.randint(0, 120)
            n = min(n, len(data) - pos)
            piece = buf.take(n) if rnd.random() < 0.5 else memoryview(buf.take_bytes(n))
            assert piece.readonly
            assert bytes(piece) == data[pos:pos + n]
            pos += n
            assert len(buf) == len(data) - pos

    def test_zero_copy_within_one_view_and_assembly_counted(self) -> None:
        buf = ViewBuffer()
        source = bytes(range(100))
        buf.append(memoryview(source))
        frame = buf.take(10)
        assert frame.obj is source  # a slice: no copy
        assert buf.bytes_assembled == 0
        buf.append(memoryview(b"xyz"))
        spanning = buf.take(92)
        assert bytes(spanning) == source[10:] + b"xy"
        assert buf.bytes_assembled == 92

    @pytest.mark.parametrize("seed", range(30))
    def test_find_matches_bytes_find(self, seed: int) -> None:
        rnd = random.Random(seed)
        data = bytes(rnd.choice(b"ab\r\n") for _ in range(rnd.randint(0, 400)))
        buf = ViewBuffer()
        for view in _split(data, rnd):
            buf.append(view)
        for sep in (b"\n", b"\r\n", b"abba", b"\r\n\r\n"):
            for start in (0, 1, 7, 50, 399):
                assert buf.find(sep, start) == data.find(sep, start), (sep, start)

    @pytest.mark.parametrize("seed", range(30))
    def test_mixed_cuts_match_bytes(self, seed: int) -> None:
        # take, take_bytes, take_int and find interleaved at random, with
        # views appended while cutting: the compiled queue's head index and
        # offset must never lose or repeat a byte.
        rnd = random.Random(1000 + seed)
        data = rnd.randbytes(rnd.randint(0, 5000))
        pieces = _split(data, rnd)
        buf = ViewBuffer()
        pos = fed = 0
        while pos < len(data):
            while pieces and (len(buf) < 16 or rnd.random() < 0.3):
                piece = pieces.pop(0)
                buf.append(piece)
                fed += len(piece)
            avail = len(buf)
            assert avail == fed - pos
            n = min(rnd.randint(0, 40), avail)
            how = rnd.choice(["take", "bytes", "int-big", "int-little", "find"])
            if how == "take":
                got = bytes(buf.take(n))
            elif how == "bytes":
                got = buf.take_bytes(n)
            elif how.startswith("int"):
                n = min(n, 8)
                order = "big" if how == "int-big" else "little"
                value = buf.take_int(n, order)
                assert value == int.from_bytes(data[pos:pos + n], order)
                got = data[pos:pos + n]
            else:
                sep = data[pos + n:pos + n + 2]
                if len(sep) == 2:
                    assert buf.find(sep) == data[pos:fed].find(sep)
                got = b""
                n = 0
            assert got == data[pos:pos + n]
            pos += n
            assert buf.first_size <= len(buf)

    def test_empty_takes_are_independent(self) -> None:
        # Regression: an empty take returned one shared view; a caller that
        # released it (``with``) broke every later empty take.
        buf = ViewBuffer()
        with buf.take(0) as first:
            assert len(first) == 0
        second = buf.take(0)
        assert bytes(second) == b""
        buf.append(memoryview(b"abc"))
        with buf.take(0):
            pass
        assert bytes(buf.take(3)) == b"abc"

    def test_overdraw_is_an_error(self) -> None:
        buf = ViewBuffer()
        buf.append(memoryview(b"abc"))
        for cut in (buf.take, buf.take_bytes, buf.take_int):
            with pytest.raises(ValueError):
                cut(4)
        assert len(buf) == 3 and bytes(buf.take_all()) == b"abc"

    def test_clear_releases(self) -> None:
        buf = ViewBuffer()
        view = memoryview(b"hello")
        buf.append(view)
        buf.clear()
        assert len(buf) == 0
        with pytest.raises(ValueError):
            view[0]


def test_find_in_one_view() -> None:
    buf = ViewBuffer()
    buf.append(memoryview(b"hello world"))
    assert buf.find(b"o") == 4
    assert buf.find(b"o", 5) == 7
    assert buf.find(b"zz") == -1
    assert buf.find(b"d", 11) == -1
    assert buf.find(b"hello world!") == -1


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return client, server


def _receive_views(chunks: list[bytes]) -> tuple[list[memoryview], list[object]]:
    """Each chunk sent and received separately by a copy-mode engine: its views."""
    client, server = _tcp_pair()
    server.setblocking(False)
    views: list[memoryview] = []
    rx = Receiver(server.fileno(), ZCConfig(zerocopy="never"), views.append)
    for chunk in chunks:
        client.sendall(chunk)
        got = 0
        while got < len(chunk):
            select.select([server], [], [], 5)
            got += max(rx.pump(), 0)
    return views, [rx, client, server]


class TestJoin:
    """aiozc._pool.join: one view over two that lie back to back in one buffer."""

    def test_adjacent_receives_join_without_copy(self) -> None:
        views, keep = _receive_views([b"hello ", b"world", b"!"])
        assert [bytes(v) for v in views] == [b"hello ", b"world", b"!"]
        joined = join(views[0], views[1])
        assert joined is not None and bytes(joined) == b"hello world" and joined.readonly
        # Slices join too, as long as they touch.
        assert bytes(join(views[0][3:], views[1][:2]) or b"") == b"lo wo"
        # Not adjacent, or in the wrong order: no join.
        assert join(views[1], views[0]) is None
        assert join(views[0], views[2]) is None
        assert join(views[0][:2], views[1]) is None
        # Views over other memory never join.
        data = b"abcdef"
        assert join(memoryview(data)[:3], memoryview(data)[3:]) is None

    def test_joined_view_pins_and_outlives_its_parts(self) -> None:
        views, keep = _receive_views([b"a" * 1000, b"b" * 1000])
        rx = keep[0]
        assert isinstance(rx, Receiver)
        joined = join(views[0], views[1])
        assert joined is not None
        for v in views:
            v.release()
        rx.close()
        # The engine is closed and the parts released: the joined view is
        # the last user of the slab, which stays valid until it goes.
        assert bytes(joined) == b"a" * 1000 + b"b" * 1000
        assert rx.stats().views_outstanding == 1
        joined.release()
        assert rx.stats().views_outstanding == 0

    def test_is_pool_view_tells_aiozc_memory_from_other(self) -> None:
        views, keep = _receive_views([b"hello ", b"world"])
        joined = join(views[0], views[1])
        assert joined is not None
        assert is_pool_view(views[0]) and is_pool_view(views[0][1:3]) and is_pool_view(joined)
        assert is_pool_view(memoryview(views[1]))
        data = b"abc"
        assert not is_pool_view(memoryview(data))
        assert not is_pool_view(memoryview(bytearray(data)).toreadonly())
        assert not is_pool_view(data)
        joined.release()
        assert not is_pool_view(joined)  # released: no longer aiozc's memory

    def test_buffer_cuts_spanning_frames_by_joining(self) -> None:
        views, keep = _receive_views([b"0123", b"4567", b"89"])
        buf = ViewBuffer()
        for v in views:
            buf.append(v)
        frame = buf.take(9)  # spans all three receives
        assert bytes(frame) == b"012345678" and buf.bytes_assembled == 0
        assert bytes(buf.take(1)) == b"9" and len(buf) == 0
