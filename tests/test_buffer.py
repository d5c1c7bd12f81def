"""ViewBuffer: frames cut from a queue of views, checked against plain bytes."""

from __future__ import annotations

import random

import pytest

from aiozc._buffer import ViewBuffer
from aiozc._search import find


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

    def test_clear_releases(self) -> None:
        buf = ViewBuffer()
        view = memoryview(b"hello")
        buf.append(view)
        buf.clear()
        assert len(buf) == 0
        with pytest.raises(ValueError):
            view[0]


def test_search_find() -> None:
    data = memoryview(b"hello world")
    assert find(data, b"o") == 4
    assert find(data, b"o", 5) == 7
    assert find(data, b"zz") == -1
    assert find(data, b"d", 11) == -1
    assert find(data, b"hello world!") == -1
