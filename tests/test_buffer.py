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


def test_search_find() -> None:
    data = memoryview(b"hello world")
    assert find(data, b"o") == 4
    assert find(data, b"o", 5) == 7
    assert find(data, b"zz") == -1
    assert find(data, b"d", 11) == -1
    assert find(data, b"hello world!") == -1
