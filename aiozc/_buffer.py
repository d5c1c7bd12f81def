"""A queue of received views that frames are cut from (:class:`ViewBuffer`).

The streams reader and the anyio stream both keep what the receive engine
delivered as a queue of read-only memoryviews, and cut frames from its
front.  A frame that lies inside one view is returned as a slice of it: no
copy.  A frame that spans views is assembled once, into a new ``bytes``
whose read-only view is returned, and counted in ``bytes_assembled``.

Ownership: every view appended is owned by the buffer until it is cut out
(then the caller owns the slice) or the buffer is cleared (then it is
released).  A slice keeps its parent's memory pinned, as any view does.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol, final

from ._search import find as _find

__all__ = ["ViewBuffer"]


class _Gatherer(Protocol):
    """What :meth:`ViewBuffer.gather` needs: the engine's ``gather``."""

    def gather(self, views: deque[memoryview], total: int) -> int: ...


@final
class ViewBuffer:
    """A FIFO of read-only memoryviews, cut into frames without copying."""

    __slots__ = ("_views", "_size", "bytes_assembled")

    def __init__(self) -> None:
        self._views: deque[memoryview] = deque()
        self._size = 0
        #: Bytes copied to join frames that spanned more than one view.
        self.bytes_assembled = 0

    def __len__(self) -> int:
        return self._size

    @property
    def first_size(self) -> int:
        """Bytes in the first queued view (0 when empty)."""
        return len(self._views[0]) if self._views else 0

    def append(self, view: memoryview) -> None:
        """Queue a view; the buffer owns it from now on."""
        if len(view):
            self._views.append(view)
            self._size += len(view)

    def take(self, n: int) -> memoryview:
        """Cut the first ``n`` bytes (``n <= len(self)``) as a read-only view.

        A slice of the first view when it holds all ``n`` bytes; otherwise
        the bytes are assembled into one new buffer.
        """
        if n <= 0:
            return memoryview(b"")
        first = self._views[0]
        size = len(first)
        if size > n:
            self._views[0] = first[n:]
            self._size -= n
            return first[:n]
        if size == n:
            self._size -= n
            return self._views.popleft()
        out = self.take_bytes(n)
        self.bytes_assembled += n
        return memoryview(out)

    def take_bytes(self, n: int) -> bytes:
        """Cut the first ``n`` bytes (``n <= len(self)``) as a copy."""
        if n <= 0:
            return b""
        views = self._views
        first = views[0]
        if len(first) >= n:
            out = bytes(first[:n])
            self._drop_front(first, n)
            return out
        # bytes.join copies each piece once, straight into the result.
        parts = []
        need = n
        while need:
            view = views[0]
            k = min(len(view), need)
            parts.append(view[:k])
            need -= k
            self._drop_front(view, k)
        out = b"".join(parts)
        for part in parts:
            part.release()
        return out

    def take_all(self) -> memoryview:
        """Cut everything queued (see :meth:`take`)."""
        return self.take(self._size)

    def find(self, sep: bytes, start: int = 0) -> int:
        """Offset of the first ``sep`` at or after ``start``, or -1."""
        if not sep:
            return min(start, self._size)
        offset = 0
        carry = b""  # the tail of the previous views, for a sep that spans
        keep = len(sep) - 1
        for view in self._views:
            size = len(view)
            if carry:
                window = carry + bytes(view[:keep])
                at = window.find(sep, max(0, start - (offset - len(carry))))
                if at != -1 and at < len(carry):
                    return offset - len(carry) + at
            at = _find(view, sep, max(0, start - offset))
            if at != -1:
                return offset + at
            if keep:
                carry = (carry + bytes(view[-keep:]))[-keep:] if size < keep else bytes(view[-keep:])
            offset += size
        return -1

    def gather(self, receiver: _Gatherer, total: int) -> bool:
        """Hand the queued bytes to ``receiver`` to receive a ``total``-byte frame whole.

        ``receiver`` is the receive engine (``Receiver.gather``): it copies
        the queued bytes, the head of the frame, into a buffer of ``total``
        bytes and delivers the complete frame later as one view, which
        lands here through the sink like any other.  The buffer is then
        empty.  False (and nothing changed) if the engine declines.
        """
        copied = receiver.gather(self._views, total)
        if copied < 0:
            return False
        self.bytes_assembled += copied
        self.clear()
        return True

    def clear(self) -> None:
        """Release every queued view."""
        for view in self._views:
            view.release()
        self._views.clear()
        self._size = 0

    def _drop_front(self, view: memoryview, k: int) -> None:
        self._size -= k
        if k == len(view):
            self._views.popleft()
            view.release()
        else:
            self._views[0] = view[k:]
            view.release()
