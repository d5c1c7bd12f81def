# cython: language_level=3
"""A queue of received views that frames are cut from (:class:`ViewBuffer`).

The streams reader, the anyio stream and ZCProtocol applications keep what
the receive engine delivered as a queue of read-only memoryviews, and cut
frames from its front.  A frame that lies inside one view is returned as a
slice of it: no copy.  A frame that spans views is assembled once, into a
new ``bytes`` whose read-only view is returned, and counted in
``bytes_assembled``.

Ownership: every view appended is owned by the buffer until it is cut out
(then the caller owns the slice) or the buffer is cleared (then it is
released).  A slice keeps its parent's memory pinned, as any view does.

Why compiled: a frame costs two cuts (header, body), and in Python each cut
was a method call, a slice for the frame and another slice to replace the
queue's head: 0.9 us per frame against 0.4 us for an application parsing
in place over one bytearray (the BufferedProtocol peers of the benchmark),
which at 4 KiB frames was a third of aiozc's receiver CPU.  Here the queue
is a list with a head index and an offset into the first view, so a cut
makes exactly one slice (the one it returns), and ``take_int`` reads a
length header with no object at all.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from aiozc._pool import join as _join

__all__ = ["ViewBuffer"]

cdef extern from "<string.h>":
    # GNU extension; Python.h defines _GNU_SOURCE on Linux.
    void *memmem(const void *haystack, size_t hlen, const void *needle, size_t nlen) nogil


# Separator search: memoryview has no find(), and copying each received
# view to bytes to search it would undo the zerocopy receive.
cdef Py_ssize_t _find(object data, bytes sep, Py_ssize_t start) except -2:
    """Offset of the first ``sep`` in ``data`` at or after ``start``, or -1."""
    cdef Py_buffer buf
    cdef const char *hit
    cdef Py_ssize_t nlen = PyBytes_GET_SIZE(sep)
    if start < 0:
        start = 0
    PyObject_GetBuffer(data, &buf, PyBUF_SIMPLE)
    try:
        if start > buf.len or nlen > buf.len - start:
            return -1
        hit = <const char *>memmem(<const char *>buf.buf + start, buf.len - start,
                                   PyBytes_AS_STRING(sep), nlen)
        if hit == NULL:
            return -1
        return hit - <const char *>buf.buf
    finally:
        PyBuffer_Release(&buf)


@cython.final
cdef class ViewBuffer:
    """A FIFO of read-only memoryviews, cut into frames without copying."""

    # _views[_head:] are queued; the first of them starts at _off.
    cdef list _views
    cdef Py_ssize_t _head
    cdef Py_ssize_t _off
    cdef Py_ssize_t _first_len  # len(_views[_head]), 0 when empty
    cdef Py_ssize_t _size
    #: Bytes copied to join frames that spanned more than one view (and the
    #: heads of gathered frames).
    cdef public Py_ssize_t bytes_assembled
    # The engine of the last gather() call: told when take() copies to
    # assemble a frame (Receiver.note_assembled), which its 'auto' policy
    # weighs against mapping.
    cdef object _engine

    def __cinit__(self):
        self._views = []

    def __len__(self):
        return self._size

    @property
    def first_size(self):
        """Bytes left in the first queued view (0 when empty)."""
        return self._first_len - self._off if self._size else 0

    def append(self, view):
        """Queue a view; the buffer owns it from now on."""
        cdef Py_ssize_t n = len(view)
        if not n:
            return
        self._views.append(view)
        if self._size == 0:
            self._first_len = n
        self._size += n

    cdef inline void _advance(self) noexcept:
        # The first view is used up: move the head on (its slices, if any,
        # keep its memory).  The list is compacted now and then, not per cut.
        cdef list views = self._views
        views[self._head] = None
        self._head += 1
        self._off = 0
        if self._head == len(views):
            views.clear()
            self._head = 0
            self._first_len = 0
        else:
            if self._head >= 64:
                del views[:self._head]
                self._head = 0
            self._first_len = len(views[self._head])

    cpdef object take(self, Py_ssize_t n):
        """Cut the first ``n`` bytes (``n <= len(self)``) as a read-only view.

        A slice of the first view when it holds all ``n`` bytes; otherwise
        the bytes are assembled into one new buffer.
        """
        cdef Py_ssize_t off = self._off, avail
        if n <= 0:
            # A new one each time: the caller may release it.
            return memoryview(b"")
        if n > self._size:
            raise ValueError(f"take({n}) from a ViewBuffer holding {self._size} bytes")
        first = self._views[self._head]
        avail = self._first_len - off
        if avail > n:
            self._off = off + n
            self._size -= n
            return first[off:off + n]
        if avail == n:
            self._size -= n
            self._advance()
            if off == 0:
                return first
            out = first[off:]
            first.release()
            return out
        out = self._take_joined(n)
        if out is not None:
            return out
        out = self.take_bytes(n)
        self.bytes_assembled += n
        if self._engine is not None:
            self._engine.note_assembled(n)
        return memoryview(out)

    cdef object _take_joined(self, Py_ssize_t n):
        # The first n bytes span views: if each view continues the previous
        # one in the same pooled buffer (aiozc._pool.join), cut them as
        # one view, no copy; else None, nothing consumed.
        cdef list views = self._views
        cdef Py_ssize_t i = self._head, k = self._first_len - self._off, last_len
        first = views[i]
        cur = first[self._off:] if self._off else first
        while k < n:
            i += 1
            nxt = views[i]
            joined = _join(cur, nxt)
            if cur is not first:
                cur.release()
            if joined is None:
                return None
            cur = joined
            k += len(nxt)
        if k > n:
            out = cur[:n]
            cur.release()
        else:
            out = cur
        # Consume: views head..i-1 entirely, view i up to its last k - n bytes.
        for j in range(self._head, i):
            v = views[j]
            views[j] = None
            v.release()
        last = views[i]
        last_len = len(last)
        self._head = i
        self._first_len = last_len
        self._off = last_len - (k - n)
        self._size -= n
        if k == n:
            self._advance()
            last.release()
        return out

    cpdef bytes take_bytes(self, Py_ssize_t n):
        """Cut the first ``n`` bytes (``n <= len(self)``) as a copy."""
        cdef Py_buffer pb
        cdef Py_ssize_t k, need
        cdef char *dst
        if n <= 0:
            return b""
        if n > self._size:
            raise ValueError(f"take_bytes({n}) from a ViewBuffer holding {self._size} bytes")
        out = PyBytes_FromStringAndSize(NULL, n)
        dst = PyBytes_AS_STRING(out)
        need = n
        while need:
            first = self._views[self._head]
            k = self._first_len - self._off
            if k > need:
                k = need
            PyObject_GetBuffer(first, &pb, PyBUF_SIMPLE)
            memcpy(dst, <char *>pb.buf + self._off, k)
            PyBuffer_Release(&pb)
            dst += k
            need -= k
            self._size -= k
            if self._off + k == self._first_len:
                self._advance()
                first.release()
            else:
                self._off += k
        return out

    cpdef object take_int(self, Py_ssize_t n, str byteorder="big"):
        """Cut the first ``n`` bytes and return them as an unsigned integer.

        ``int.from_bytes(buffer.take_bytes(n), byteorder)`` for a length
        header, without the intermediate objects when the header lies
        inside one view.
        """
        cdef Py_buffer pb
        cdef const unsigned char *p
        cdef unsigned long long value = 0
        cdef Py_ssize_t i
        cdef bint big
        if byteorder == "big":
            big = True
        elif byteorder == "little":
            big = False
        else:
            raise ValueError("byteorder must be either 'little' or 'big'")
        if n <= 0:
            return 0
        if n > 8 or n > self._first_len - self._off:
            return int.from_bytes(self.take_bytes(n), byteorder)
        if n > self._size:
            raise ValueError(f"take_int({n}) from a ViewBuffer holding {self._size} bytes")
        first = self._views[self._head]
        PyObject_GetBuffer(first, &pb, PyBUF_SIMPLE)
        p = <const unsigned char *>pb.buf + self._off
        if big:
            for i in range(n):
                value = (value << 8) | p[i]
        else:
            for i in range(n - 1, -1, -1):
                value = (value << 8) | p[i]
        PyBuffer_Release(&pb)
        self._size -= n
        if self._off + n == self._first_len:
            self._advance()
            first.release()
        else:
            self._off += n
        return value

    def take_all(self):
        """Cut everything queued (see :meth:`take`)."""
        return self.take(self._size)

    def find(self, bytes sep, Py_ssize_t start=0):
        """Offset of the first ``sep`` at or after ``start``, or -1."""
        cdef Py_ssize_t offset = 0, size, keep, at, i, skip
        if not sep:
            return min(start, self._size)
        carry = b""  # the tail of the previous views, for a sep that spans
        keep = len(sep) - 1
        for i in range(self._head, len(self._views)):
            view = self._views[i]
            skip = self._off if i == self._head else 0
            if skip:
                view = view[skip:]
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

    def gather(self, receiver, Py_ssize_t total):
        """Hand the queued bytes to ``receiver`` to receive a ``total``-byte frame whole.

        ``receiver`` is the receive engine (``Receiver.gather``): it copies
        the queued bytes, the head of the frame, into a buffer of ``total``
        bytes and delivers the complete frame later as one view, which
        lands here through the sink like any other.  The buffer is then
        empty.  False (and nothing changed) if the engine declines.
        """
        cdef Py_ssize_t copied
        if self._size >= total:
            return False
        self._engine = receiver
        live = self._views[self._head:]
        if live and self._off:
            live[0] = live[0][self._off:]
        copied = receiver.gather(live, total)
        if live and self._off:
            live[0].release()
        if copied < 0:
            return False
        self.bytes_assembled += copied
        self.clear()
        return True

    # A reader waiting for a frame bigger than the memory its connection
    # may pin would wait forever for a release only it can make: the pooled
    # buffers it waits for are under its own queued views.  unpin() copies
    # those bytes out to the heap, so the engine can recycle the buffers.
    # Each byte is copied at most once: views already over heap memory
    # (earlier unpins, assembled frames, copies past the bound) are kept
    # as they are, and each run of pooled views between them becomes one
    # bytes object.  A frame of F bytes under a bound of B thus costs F
    # bytes of unpinning plus one assembly of F: linear, where copying the
    # whole queue again at every starvation cost F * F / B.

    def unpin(self):
        """Copy queued bytes that lie in pooled memory to the heap; returns the bytes copied.

        The views over pooled memory are released, so the receive engine
        can reuse it; the queue's contents and order are unchanged.
        Counted in ``bytes_assembled``.
        """
        cdef list out = []
        cdef list run = []
        cdef Py_ssize_t i, copied = 0
        if not self._size:
            return 0
        for i in range(self._head, len(self._views)):
            view = self._views[i]
            if i == self._head and self._off:
                part = view[self._off:]
                view.release()
                view = part
            if type(view.obj) is bytes:
                if run:
                    copied += self._copy_run(run, out)
                out.append(view)
            else:
                run.append(view)
        if run:
            copied += self._copy_run(run, out)
        self._views = out
        self._head = 0
        self._off = 0
        self._first_len = len(out[0])
        self.bytes_assembled += copied
        return copied

    cdef Py_ssize_t _copy_run(self, list run, list out):
        data = b"".join(run)
        for view in run:
            view.release()
        run.clear()
        out.append(memoryview(data))
        return len(data)

    def clear(self):
        """Release every queued view."""
        cdef Py_ssize_t i
        for i in range(self._head, len(self._views)):
            self._views[i].release()
        self._views.clear()
        self._head = self._off = self._first_len = self._size = 0
