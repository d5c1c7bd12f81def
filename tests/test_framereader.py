"""The sans-IO frame reader (aiozc._framereader): its answers, without a socket.

The reader does no I/O, so these tests feed it views directly; the gather
callables stand in for the engine's (the engine's own gather is exercised
over real sockets in test_gather.py, and both drivers in test_streams.py
and test_anyio.py).
"""

from __future__ import annotations

import pytest

from aiozc._buffer import ViewBuffer
from aiozc._framereader import FrameReader, Next


def view(data: bytes) -> memoryview:
    return memoryview(data)


class TestNeed:
    def test_ready_when_queued(self) -> None:
        reader = FrameReader()
        reader.buffer.append(view(b"abcdef"))
        assert reader.need(6) is Next.READY
        assert reader.need(7) is Next.WAIT_READABLE
        assert reader.missing(10) == 4

    def test_eof_and_error_only_when_short(self) -> None:
        reader = FrameReader()
        reader.buffer.append(view(b"abc"))
        reader.feed_eof()
        assert reader.need(3) is Next.READY
        assert reader.need(4) is Next.EOF
        failed = FrameReader()
        failed.buffer.append(view(b"abc"))
        failed.feed_error(ConnectionResetError())
        assert failed.need(2) is Next.READY
        assert failed.need(4) is Next.ERROR

    def test_separator(self) -> None:
        reader = FrameReader()
        reader.buffer.append(view(b"GET / HT"))
        step, resume = reader.need_separator(b"\r\n")
        assert step is Next.WAIT_READABLE and resume == 7
        reader.buffer.append(view(b"TP/1.1\r\nHost"))
        assert reader.need_separator(b"\r\n", resume) == (Next.READY, 16)
        reader.feed_eof()
        assert reader.need_separator(b"\r\n\r\n")[0] is Next.EOF


class TestGather:
    def test_gathers_once_per_frame_and_ends_an_incomplete_one(self) -> None:
        calls: list[tuple[int, int]] = []
        ended: list[bool] = []

        def gather(buffer: ViewBuffer, nbytes: int) -> bool:
            calls.append((len(buffer), nbytes))
            buffer.clear()  # the engine took the head
            return True

        reader = FrameReader(gather, lambda: ended.append(True))
        reader.buffer.append(view(b"head"))
        assert reader.need(1 << 20) is Next.WAIT_READABLE
        assert reader.need(1 << 20) is Next.WAIT_READABLE
        assert calls == [(4, 1 << 20)]  # asked once, with the head queued
        reader.done(1 << 20)  # the wait ended (cancelled) before the frame
        assert ended == [True]
        reader.done(1 << 20)
        assert ended == [True]  # nothing open any more

    def test_a_complete_frame_ends_nothing(self) -> None:
        ended: list[bool] = []
        reader = FrameReader(lambda b, n: True, lambda: ended.append(True))
        assert reader.need(8) is Next.WAIT_READABLE
        reader.buffer.append(view(b"12345678"))  # the engine delivers it whole
        assert reader.need(8) is Next.READY
        reader.done(8)
        assert ended == []

    def test_a_declined_gather_is_asked_once_per_wait(self) -> None:
        calls: list[int] = []
        reader = FrameReader(lambda b, n: bool(calls.append(n)), lambda: None)
        reader.need(100)
        reader.need(100)
        assert calls == [100]
        reader.done(100)
        reader.need(100)
        assert calls == [100, 100]


class TestStarvation:
    def test_pooled_views_are_unpinned_bytes_views_are_not(self) -> None:
        # Views over bytes are heap memory already: nothing to unpin.
        reader = FrameReader()
        reader.buffer.append(view(b"x" * 10))
        assert reader.starved() is False
        assert reader.need(20) is Next.WAIT_MEMORY
        reader.released()
        assert reader.need(20) is Next.WAIT_READABLE

    def test_new_bytes_end_the_wait_for_memory(self) -> None:
        reader = FrameReader()
        assert reader.starved() is False
        assert reader.need(1) is Next.WAIT_MEMORY
        reader.buffer.append(view(b"y"))
        assert reader.need(2) is Next.WAIT_READABLE

    @pytest.mark.parametrize("n", [0, 1, 5])
    def test_ready_beats_starved(self, n: int) -> None:
        reader = FrameReader()
        reader.buffer.append(view(b"abcde"))
        reader.starved()
        assert reader.need(n) is Next.READY
