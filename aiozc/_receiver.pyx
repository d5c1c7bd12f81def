# cython: language_level=3, freethreading_compatible=False
"""The compiled receive engine: window, regions, copy slabs, views, modes.

It knows nothing of event loops.  A driver (the asyncio transport, the anyio
stream, the benchmark's blocking floor) calls :meth:`Receiver.pump` when the
socket is readable; ``pump`` receives with ``TCP_ZEROCOPY_RECEIVE`` or
``recv`` and hands each piece of payload, in stream order, to ``sink`` as a
read-only memoryview.

Memory safety, the one rule everything here serves
--------------------------------------------------
Touching a window address whose page is not mapped raises SIGBUS.  So a byte
range of the window is zapped (``madvise(MADV_DONTNEED)``) or unmapped only
when no exported buffer covers it.  Every view is a memoryview over a
``_Chunk``; the chunk counts its buffer exports and, when the last one goes,
returns its region to the pool and forgets the pool, after which it refuses
to export again (``BufferError``).  A region is zapped only when its chunk
count is zero, and the pool (which owns the window and the copy slabs) is
freed only when the receiver and every unreleased chunk have let go of it.
"""

cimport cython
from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.buffer cimport PyBuffer_FillInfo
from cpython.exc cimport PyErr_SetFromErrno
from cpython.memoryview cimport PyMemoryView_FromObject
from libc.errno cimport (EAGAIN, EINTR, EINVAL, EIO, ENODEV, ENOPROTOOPT,
                         EOPNOTSUPP, errno)
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcpy, memset
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF

cdef extern from "Python.h":
    # Raw-pointer spellings, for _PyBytes_Resize, which needs the only
    # reference to the object (a Cython object variable would hold one).
    PyObject *_bytes_new "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n)
    char *_bytes_data "PyBytes_AS_STRING"(PyObject *o)
    int _PyBytes_Resize(PyObject **o, Py_ssize_t n)

from aiozc._kernel cimport *

import os as _os
from builtins import memoryview as _MemoryView

from aiozc._stats import ZCStats

# What pump() returns besides a byte count.
PUMP_EOF = -1
PUMP_STARVED = -2
cdef enum:
    _EOF = -1
    _STARVED = -2
    _ERROR = -3
    PAGE = 4096

# Region states.
cdef enum:
    R_CLEAN = 0      # nothing mapped: may become current (TLB-clean hint ok)
    R_CURRENT = 1    # being filled by receives, bump by bump
    R_RETIRED = 2    # full; waits for the views over it to be released
    R_DIRTY = 3      # released, pages still mapped: waits for a batched zap

cdef enum:
    KIND_REGION = 0
    KIND_SLAB = 1
    KIND_FRAME = 2

# Gathered frames (Receiver.gather) are received into buffers of their own,
# pooled so that a stream of big frames reuses already-faulted memory: a
# fresh 1 MiB malloc per frame comes from mmap() and costs its 256 page
# faults (plus zeroing) in the kernel, which measured as much as the copy
# the gather saves.  Four covers an application that holds a frame or two
# while the next arrives; more in flight are simply refused (the reader
# then assembles as before).  Buffers are rounded up to 64 KiB so that
# frames of slightly different sizes share them.
cdef enum:
    MAX_FRAMES = 4
    FRAME_ROUND = 65536

cdef enum:
    MODE_ZC = 0
    MODE_COPY = 1

cdef enum:
    POLICY_AUTO = 0
    POLICY_ALWAYS = 1
    POLICY_NEVER = 2

cdef enum:
    PH_STEADY = 0
    PH_PROBE = 1

# Released regions are zapped in batches of this many (coalesced into one
# madvise per run of adjacent regions).  One madvise costs a syscall and a
# TLB flush of the range; 4 regions (2 MiB by default) amortise that over
# ~60 receive calls on loopback, while bounding the mapped-but-unused memory
# a connection keeps around to 4 regions plus the one being filled.
cdef enum:
    ZAP_BATCH = 4

# The most copy slabs one connection keeps track of (indices are ints):
# 2**20 slabs of the smallest size (4 x 4 KiB) is 16 GiB, beyond any bound
# a receiver sets in practice.  The arrays grow with use, not with the bound.
cdef Py_ssize_t MAX_SLABS = 1 << 20

# A copy slab holds this many receives of receive_size.  Consecutive
# receives land back to back in a slab, so a frame that spans them is one
# view over both (join()): with one receive per slab every frame that
# straddled two receives was copied to be assembled.
cdef enum:
    SLAB_RECEIVES = 4

# One pump() delivers at most this many bytes before returning to the event
# loop, so one busy connection cannot starve the others.  4x CPython's
# per-event read (256 KiB) amortises the loop's per-event cost (epoll, a
# handle, a Python frame) over ~1 MiB without hurting fairness measurably.
cdef enum:
    PUMP_BUDGET = 1048576
cdef Py_ssize_t PUMP_UNBOUNDED = PY_SSIZE_T_MAX

# After a gathered frame, the next receive takes at most this much.
cdef enum:
    AFTER_GATHER_RECEIVE = 16384

# 'auto' maps only when mapping measured at least this much cheaper than
# copying.  The mapping probe charges each mapped page its first read (see
# _zc_round), but some of mapping's cost still falls outside the clock: the
# assembly of frames that straddle the smaller mapped views (28 KiB on
# loopback against 256 KiB copies) in a stream reader.  In
# benchmarks/frames.py, with neither the touch nor the margin, 1 run in 8
# picked mapping on a machine where it costs 1.5x per frame; where mapping
# really pays (the kernel's tcp_mmap reports 2.5x less CPU on bare metal), a
# 15% margin changes nothing.
cdef double ZC_MARGIN = 0.15


cdef object _oserror(int err):
    return OSError(err, _os.strerror(err))


@cython.final
@cython.freelist(64)
cdef class _Chunk:
    """The exporter behind one view: a byte range of a region or a slab."""

    cdef _Pool pool
    cdef char *ptr
    cdef Py_ssize_t size
    cdef int kind
    cdef int index
    cdef int exports

    def __getbuffer__(self, Py_buffer *buf, int flags):
        if self.pool is None:
            raise BufferError(
                "this aiozc view was released and its memory recycled; "
                "keep the original memoryview (or a slice of it) instead"
            )
        # readonly=1: a request for a writable buffer raises BufferError, so
        # every memoryview over a chunk is read-only.
        PyBuffer_FillInfo(buf, self, self.ptr, self.size, 1, flags)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buf):
        self.exports -= 1
        if self.exports == 0 and self.pool is not None:
            pool = self.pool
            self.pool = None
            pool.release(self.kind, self.index)

    def __dealloc__(self):
        # A chunk whose view was never made (an exception between the two)
        # still holds its region.
        if self.pool is not None:
            self.pool.release(self.kind, self.index)
            self.pool = None


@cython.final
cdef class _Pool:
    """Owns the mapped window and the copy slabs, and their accounting."""

    # --- the window (mapped pages) ---
    cdef char *window
    cdef size_t window_size
    cdef size_t region_size
    cdef int nregions
    cdef int *rrefs
    cdef unsigned char *rstate
    cdef size_t *rused
    cdef int *clean_stack
    cdef int nclean
    cdef int ndirty
    cdef int cur_region
    # --- copy slabs ---
    cdef char **slabs
    cdef int *srefs
    cdef size_t *sused
    cdef size_t *sfaulted
    cdef int nslabs
    cdef int slab_cap          # entries allocated in the slab arrays
    cdef Py_ssize_t max_slabs
    cdef int cur_slab
    cdef size_t slab_size
    # --- accounting ---
    cdef char *fbufs[MAX_FRAMES]
    cdef size_t fcap[MAX_FRAMES]
    cdef int frefs[MAX_FRAMES]

    cdef Py_ssize_t views
    cdef Py_ssize_t pinned
    cdef Py_ssize_t max_pinned
    cdef bint closed
    cdef public bint starved
    cdef public object on_release
    cdef uint64_t zap_calls
    cdef uint64_t regions_recycled

    def __cinit__(self, size_t window_size, size_t region_size,
                  size_t slab_size, Py_ssize_t max_pinned):
        self.window = NULL
        self.window_size = window_size
        self.region_size = region_size
        self.nregions = <int>(window_size // region_size)
        self.cur_region = -1
        self.cur_slab = -1
        self.slab_size = slab_size
        self.max_pinned = max_pinned
        # At least two slabs, whatever the bound: one the application holds
        # a partial frame in, one to receive the rest into.  The count is
        # kept in a Py_ssize_t (a bound of sys.maxsize bytes must not wrap
        # to a handful of slabs) and capped where the arrays' int indices
        # end; the arrays themselves grow with use (_grow_slabs), so a huge
        # bound costs nothing until memory is really pinned.
        self.max_slabs = max(2, min(max_pinned // <Py_ssize_t>slab_size, MAX_SLABS))
        self._grow_slabs(<int>min(self.max_slabs, 8))

    def __dealloc__(self):
        cdef int i
        if self.window != NULL:
            munmap(self.window, self.window_size)
            self.window = NULL
        if self.slabs != NULL:
            for i in range(self.nslabs):
                if self.slabs[i] != NULL:
                    free(self.slabs[i])
        for i in range(MAX_FRAMES):
            free(self.fbufs[i])
            self.fbufs[i] = NULL
        free(self.slabs)
        free(self.srefs)
        free(self.sused)
        free(self.sfaulted)
        free(self.rrefs)
        free(self.rstate)
        free(self.rused)
        free(self.clean_stack)

    cdef int _grow_slabs(self, int cap) except -1:
        """Make room in the slab arrays for ``cap`` slabs (never shrinks)."""
        cdef char **slabs
        cdef int *srefs
        cdef size_t *sused
        cdef size_t *sfaulted
        if cap <= self.slab_cap:
            return 0
        slabs = <char **>realloc(self.slabs, cap * sizeof(char *))
        if slabs == NULL:
            raise MemoryError()
        self.slabs = slabs
        srefs = <int *>realloc(self.srefs, cap * sizeof(int))
        if srefs == NULL:
            raise MemoryError()
        self.srefs = srefs
        sused = <size_t *>realloc(self.sused, cap * sizeof(size_t))
        if sused == NULL:
            raise MemoryError()
        self.sused = sused
        sfaulted = <size_t *>realloc(self.sfaulted, cap * sizeof(size_t))
        if sfaulted == NULL:
            raise MemoryError()
        self.sfaulted = sfaulted
        memset(self.slabs + self.slab_cap, 0, (cap - self.slab_cap) * sizeof(char *))
        memset(self.srefs + self.slab_cap, 0, (cap - self.slab_cap) * sizeof(int))
        memset(self.sused + self.slab_cap, 0, (cap - self.slab_cap) * sizeof(size_t))
        memset(self.sfaulted + self.slab_cap, 0, (cap - self.slab_cap) * sizeof(size_t))
        self.slab_cap = cap
        return 0

    cdef inline bint over_bound(self, size_t more) noexcept:
        """True if pinning ``more`` bytes would pass max_pinned_bytes.

        A connection whose views pin nothing may always receive (else a
        bound below one buffer would stop it for good).  Unsigned, so that
        a bound near sys.maxsize cannot overflow the sum.
        """
        return self.pinned != 0 and <size_t>self.pinned + more > <size_t>self.max_pinned

    cdef int map_window(self, int fd) except -1:
        """mmap the window over the socket: 0 on success, else the errno (raises only MemoryError)."""
        cdef void *addr
        cdef int i
        addr = mmap(NULL, self.window_size, PROT_READ, MAP_SHARED, fd, 0)
        if addr == MAP_FAILED:
            return errno
        self.rrefs = <int *>calloc(self.nregions, sizeof(int))
        self.rstate = <unsigned char *>calloc(self.nregions, 1)
        self.rused = <size_t *>calloc(self.nregions, sizeof(size_t))
        self.clean_stack = <int *>calloc(self.nregions, sizeof(int))
        if (self.rrefs == NULL or self.rstate == NULL or self.rused == NULL
                or self.clean_stack == NULL):
            munmap(addr, self.window_size)
            raise MemoryError()
        self.window = <char *>addr
        # Stack order: region 0 on top, so a fresh connection fills the
        # window front to back and adjacent regions retire together (which
        # is what lets the batched zap coalesce them).
        for i in range(self.nregions):
            self.clean_stack[i] = self.nregions - 1 - i
        self.nclean = self.nregions
        return 0

    cdef void release(self, int kind, int idx) noexcept:
        self.views -= 1
        if kind == KIND_REGION:
            self.rrefs[idx] -= 1
            if self.rrefs[idx] == 0:
                self.pinned -= self.region_size
                if self.rstate[idx] == R_RETIRED:
                    self.rstate[idx] = R_DIRTY
                    self.ndirty += 1
        elif kind == KIND_SLAB:
            self.srefs[idx] -= 1
            if self.srefs[idx] == 0:
                self.pinned -= self.slab_size
                if self.closed:
                    free(self.slabs[idx])
                    self.slabs[idx] = NULL
        else:
            self.unhold_frame(idx)
        if self.closed and self.views == 0 and self.window != NULL:
            # The last view of a closed connection: the window (and with it
            # the socket it maps) goes now, not when the pool is collected.
            self._unmap()
        if self.starved and self.on_release is not None:
            self.starved = False
            # This runs wherever a view is released: in any thread, inside
            # a dealloc, inside the garbage collector.  An exception cannot
            # propagate from here (noexcept): Cython reports it through
            # sys.unraisablehook, as CPython does for errors in __del__.
            self.on_release()

    cdef void _unmap(self) noexcept:
        munmap(self.window, self.window_size)
        self.window = NULL

    cdef void close(self) noexcept:
        """Free whatever no view holds; the rest goes with its last view."""
        cdef int i
        self.closed = True
        self.cur_slab = -1
        for i in range(self.nslabs):
            if self.slabs[i] != NULL and self.srefs[i] == 0:
                free(self.slabs[i])
                self.slabs[i] = NULL
        for i in range(MAX_FRAMES):
            if self.fbufs[i] != NULL and self.frefs[i] == 0:
                free(self.fbufs[i])
                self.fbufs[i] = NULL
        if self.window != NULL:
            for i in range(self.nregions):
                if self.rrefs[i]:
                    return
            self._unmap()

    # -- regions -------------------------------------------------------------

    cdef void zap(self) noexcept:
        """madvise(MADV_DONTNEED) every dirty region, one call per run."""
        cdef int i = 0, start, j
        cdef size_t length
        cdef char *base
        while i < self.nregions:
            if self.rstate[i] != R_DIRTY:
                i += 1
                continue
            start = i
            while i < self.nregions and self.rstate[i] == R_DIRTY:
                i += 1
            # Only the used part of the last region of the run holds pages.
            length = (i - 1 - start) * self.region_size + self.rused[i - 1]
            base = self.window + start * self.region_size
            # Dirty regions have no views and only the pump (this thread)
            # takes regions, so nothing can reach them while the GIL is
            # released; they become clean only once the pages are gone.
            with nogil:
                madvise(base, length, MADV_DONTNEED)
            for j in range(start, i):
                self.rused[j] = 0
                self.rstate[j] = R_CLEAN
                self.clean_stack[self.nclean] = j
                self.nclean += 1
                self.ndirty -= 1
                self.regions_recycled += 1
            self.zap_calls += 1

    cdef size_t region_room(self, size_t min_room) noexcept:
        """Bytes free in the current region (taking a new one if needed); 0 if none."""
        cdef int cur = self.cur_region
        cdef size_t room
        if cur >= 0:
            room = self.region_size - self.rused[cur]
            if room >= min_room:
                return room
            self.cur_region = -1
            if self.rrefs[cur] == 0:
                self.rstate[cur] = R_DIRTY
                self.ndirty += 1
            else:
                self.rstate[cur] = R_RETIRED
        if self.ndirty >= ZAP_BATCH or (self.nclean == 0 and self.ndirty):
            self.zap()
        if self.nclean == 0 or self.over_bound(self.region_size):
            return 0
        self.nclean -= 1
        cur = self.clean_stack[self.nclean]
        self.rstate[cur] = R_CURRENT
        self.cur_region = cur
        return self.region_size

    # -- slabs ---------------------------------------------------------------

    cdef size_t slab_room(self, size_t want, size_t min_room) noexcept:
        """Bytes free in the current slab (switching if needed); 0 if none.

        The bytes returned are faulted in first (see _slab_room).
        """
        cdef size_t room = self._slab_room(want, min_room)
        cdef int cur = self.cur_slab
        cdef size_t end
        if room:
            end = self.sused[cur] + room
            if end > self.sfaulted[cur]:
                # Fault the pages in now, once, rather than inside the recv()
                # into them, where 'auto' would take them for the cost of
                # copying (the caller's clock starts after this).  Only as
                # far as receives reach: a connection that exchanges small
                # messages keeps reusing the start of its first slab, and
                # its memory stays at that.
                memset(self.slabs[cur] + self.sfaulted[cur], 0, end - self.sfaulted[cur])
                self.sfaulted[cur] = end
        return room

    cdef size_t _slab_room(self, size_t want, size_t min_room) noexcept:
        cdef int cur = self.cur_slab
        cdef int i
        cdef size_t room
        if cur >= 0:
            if self.srefs[cur] == 0:
                # Nobody holds anything in it: start over at its (cache-hot)
                # beginning.  With an application that releases each view
                # in data_received, every recv lands in the same bytes.
                self.sused[cur] = 0
            room = self.slab_size - self.sused[cur]
            if room >= min_room:
                return room if room < want else want
        # Another slab no view holds, else a new one; either way within the
        # pinned bound (it will be pinned by the view made over it), except
        # that a connection whose views pin nothing may always receive.
        if self.over_bound(self.slab_size):
            return 0
        for i in range(self.nslabs):
            if self.slabs[i] != NULL and self.srefs[i] == 0 and i != cur:
                self.cur_slab = i
                self.sused[i] = 0
                return self.slab_size if self.slab_size < want else want
        if self.nslabs >= self.max_slabs:
            return 0
        if self.nslabs == self.slab_cap:
            try:
                self._grow_slabs(<int>min(self.max_slabs, 2 * <Py_ssize_t>self.slab_cap))
            except MemoryError:
                return 0
        i = self.nslabs
        self.slabs[i] = <char *>malloc(self.slab_size)
        if self.slabs[i] == NULL:
            return 0
        self.sfaulted[i] = 0
        self.nslabs += 1
        self.cur_slab = i
        self.sused[i] = 0
        return self.slab_size if self.slab_size < want else want

    # -- frame buffers (Receiver.gather) ---------------------------------------

    cdef int hold_frame(self, size_t size) noexcept:
        """A pooled buffer of at least ``size`` bytes, held once; -1 if none."""
        cdef int i, best = -1, empty = -1
        cdef size_t cap = (size + FRAME_ROUND - 1) // FRAME_ROUND * FRAME_ROUND
        # The frame's size comes from the peer (a length header): memory
        # for it is reserved only within max_pinned_bytes, even when
        # nothing else is pinned, or a 4-byte header could make every
        # connection reserve whatever it names.  Bigger frames are received
        # as they arrive, into ordinary buffers, under the usual bound.
        if cap > <size_t>self.max_pinned:
            return -1
        for i in range(MAX_FRAMES):
            if self.frefs[i]:
                continue
            if self.fbufs[i] == NULL:
                if empty < 0:
                    empty = i
            elif self.fcap[i] >= size and (best < 0 or self.fcap[i] < self.fcap[best]):
                best = i
        if best < 0:
            if self.over_bound(cap):
                return -1
            if empty < 0:
                # Every slot holds an idle buffer too small: replace one.
                for i in range(MAX_FRAMES):
                    if self.frefs[i] == 0:
                        empty = i
                        break
                if empty < 0:
                    return -1
                free(self.fbufs[empty])
                self.fbufs[empty] = NULL
            self.fbufs[empty] = <char *>malloc(cap)
            if self.fbufs[empty] == NULL:
                return -1
            # Fault it in now, once: the buffer is reused frame after frame.
            memset(self.fbufs[empty], 0, cap)
            self.fcap[empty] = cap
            best = empty
        elif self.over_bound(self.fcap[best]):
            return -1
        self.frefs[best] = 1
        self.pinned += self.fcap[best]
        return best

    cdef void unhold_frame(self, int idx) noexcept:
        self.frefs[idx] -= 1
        if self.frefs[idx] == 0:
            self.pinned -= self.fcap[idx]
            if self.closed:
                free(self.fbufs[idx])
                self.fbufs[idx] = NULL

    # -- views ---------------------------------------------------------------

    cdef object view(self, int kind, int idx, char *ptr, Py_ssize_t size):
        cdef _Chunk chunk = _Chunk.__new__(_Chunk)
        chunk.pool = self
        chunk.ptr = ptr
        chunk.size = size
        chunk.kind = kind
        chunk.index = idx
        self.views += 1
        if kind == KIND_REGION:
            if self.rrefs[idx] == 0:
                self.pinned += self.region_size
            self.rrefs[idx] += 1
        elif kind == KIND_SLAB:
            if self.srefs[idx] == 0:
                self.pinned += self.slab_size
            self.srefs[idx] += 1
        else:
            # Frame buffers are held (and counted as pinned) from gather().
            self.frefs[idx] += 1
        return PyMemoryView_FromObject(chunk)


# A frame that spans two receives is usually in two views over one pooled
# buffer: consecutive copy receives fill a slab front to back, and
# consecutive mapped receives fill a region page after page.  Where the
# second view starts at the byte after the first one's end, one view over
# both is a new chunk of the same buffer: the frame needs no assembly.
# Views over other memory, or not adjacent (a copy-buffer view between two
# mapped ones, a switch of slab or region), are left to the caller to copy.

def join(a, b):
    """One read-only view over ``a`` then ``b`` if ``b`` continues ``a`` in
    the same pooled buffer, else None.  ``a`` and ``b`` stay valid (the
    caller releases them as usual)."""
    cdef object oa, ob
    cdef _Chunk ca, cb
    cdef Py_buffer ba, bb
    cdef char *start
    cdef Py_ssize_t total
    cdef bint adjacent
    if type(a) is not _MemoryView or type(b) is not _MemoryView:
        return None
    oa = a.obj
    ob = b.obj
    if type(oa) is not _Chunk or type(ob) is not _Chunk:
        return None
    ca = <_Chunk>oa
    cb = <_Chunk>ob
    if (ca.pool is None or ca.pool is not cb.pool or ca.kind != cb.kind
            or ca.index != cb.index):
        return None
    PyObject_GetBuffer(a, &ba, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(b, &bb, PyBUF_SIMPLE)
        try:
            adjacent = <char *>ba.buf + ba.len == <char *>bb.buf
            start = <char *>ba.buf
            total = ba.len + bb.len
        finally:
            PyBuffer_Release(&bb)
    finally:
        PyBuffer_Release(&ba)
    if not adjacent:
        return None
    return ca.pool.view(ca.kind, ca.index, start, total)


@cython.final
cdef class Receiver:
    """Receives from one connected stream socket; see the module docstring.

    ``Receiver(fd, config, sink)``: ``fd`` must stay open while pump() is
    called (the driver owns the socket), ``sink`` is called with each
    read-only memoryview in stream order.
    """

    cdef int fd
    cdef _Pool pool
    cdef public object sink
    cdef public bint paused
    cdef public bint check_error_when_drained
    cdef list pending
    cdef aiozc_zc_receive zc
    cdef bint _drained
    cdef bint _last_recv      # the last receive was a recv(), not a mapping call
    cdef int deferred_err     # a socket error to raise once the queue is drained
    # an open gather(): frame buffer index (-1: none), bytes in it, frame size
    cdef int gidx
    cdef size_t gfill
    cdef size_t gtotal
    cdef bint after_gather    # the last receive completed a gathered frame
    # configuration
    cdef size_t receive_size
    cdef size_t copybuf_size
    cdef int policy
    cdef bint pause_when_exhausted
    cdef uint64_t probe_bytes
    cdef uint64_t reprobe_bytes
    cdef double min_mapped_fraction
    # state
    cdef int _mode
    cdef bint window_tried
    cdef bint zc_worked
    cdef object _reason
    cdef int settled_mode
    cdef int zc_wins
    cdef int phase
    cdef uint64_t zc_bytes
    cdef uint64_t zc_mapped
    cdef int64_t zc_ns
    cdef uint64_t copy_bytes
    cdef int64_t copy_ns
    cdef uint64_t slice_bytes
    cdef int64_t until_reprobe
    # counters
    cdef uint64_t bytes_received
    cdef uint64_t bytes_mapped
    cdef uint64_t bytes_copied
    cdef uint64_t receive_calls
    cdef uint64_t exhausted_receives
    cdef uint64_t mode_switches

    def __cinit__(self, int fd, config, sink=None):
        self.fd = fd
        self.sink = sink
        self.pending = []
        self.gidx = -1
        self.receive_size = config.receive_size
        self.copybuf_size = config.copybuf_size
        self.pool = _Pool(config.window_size, config.region_size,
                          SLAB_RECEIVES * config.receive_size, config.max_pinned_bytes)
        self.pause_when_exhausted = config.on_exhausted == "pause"
        self.probe_bytes = config.probe_bytes
        self.reprobe_bytes = config.reprobe_bytes
        self.min_mapped_fraction = config.min_mapped_fraction
        policy = config.zerocopy
        if policy == "never":
            self.policy = POLICY_NEVER
            self._mode = MODE_COPY
            self._reason = "zerocopy='never' in ZCConfig"
        elif policy == "always":
            self.policy = POLICY_ALWAYS
            self._mode = MODE_ZC
        else:
            self.policy = POLICY_AUTO
            self._mode = MODE_ZC
            self.settled_mode = MODE_ZC
            self.phase = PH_PROBE

    # -- public --------------------------------------------------------------

    @property
    def mode(self):
        """'zerocopy' or 'copy'."""
        return "zerocopy" if self._mode == MODE_ZC else "copy"

    @property
    def fallback_reason(self):
        """Why the connection copies, or None."""
        return self._reason

    @property
    def on_release(self):
        """Called (once) when pump() returned PUMP_STARVED and memory frees up."""
        return self.pool.on_release

    @on_release.setter
    def on_release(self, value):
        self.pool.on_release = value

    def stats(self):
        """A :class:`aiozc.ZCStats` snapshot."""
        return ZCStats(
            bytes_received=self.bytes_received,
            bytes_mapped=self.bytes_mapped,
            bytes_copied=self.bytes_copied,
            receive_calls=self.receive_calls,
            views_outstanding=self.pool.views,
            bytes_pinned=self.pool.pinned,
            mode="zerocopy" if self._mode == MODE_ZC else "copy",
            fallback_reason=self._reason,
            zap_calls=self.pool.zap_calls,
            regions_recycled=self.pool.regions_recycled,
            exhausted_receives=self.exhausted_receives,
            mode_switches=self.mode_switches,
        )

    @property
    def holds_socket(self):
        """True while the window is mapped (views hold it after close()).

        The mapping references the socket's file, so closing the fd does
        not end the connection while it exists: the driver shuts the socket
        down explicitly in that case.
        """
        return self.pool.window != NULL

    def close(self):
        """Stop for good: free what no view holds.  Views stay valid.

        Call it before closing the fd; pump() refuses to run afterwards, so
        a recycled fd number can never be read by mistake.
        """
        self.fd = -1
        self.pending = []
        if self.gidx >= 0:
            self.pool.unhold_frame(self.gidx)
            self.gidx = -1
        self.pool.close()

    @property
    def drained(self):
        """True when the last receive found the socket's queue empty.

        A driver that needs more bytes can then wait for readability at
        once instead of calling pump() just to learn there is nothing.
        """
        return self._drained

    @property
    def has_pending(self):
        """True when a pause held back views that are yet to be delivered."""
        return bool(self.pending)

    def note_copied(self, Py_ssize_t n):
        """Count ``n`` bytes a driver received itself (plain protocols)."""
        self.receive_calls += 1
        self.bytes_copied += n
        self.bytes_received += n

    def deliver_pending(self):
        """Hand views held back by a pause to the sink; False if paused again."""
        while self.pending:
            if self.paused:
                return False
            self.sink(self.pending.pop(0))
        return True

    @property
    def gathering(self):
        """True while a :meth:`gather` frame is being filled."""
        return self.gidx >= 0

    # A frame bigger than what one receive brings spans several views, and a
    # reader that wants it whole must join them: one more copy of every
    # byte, into a fresh buffer (for 1 MiB frames that was 15-20% of the
    # receiver's CPU, half of it page faults).  gather() is the reader
    # telling the engine the size of the frame it waits for: the engine
    # copies the partial frame the reader holds into a pooled buffer of the
    # frame's size and receives the rest straight after it, so the frame is
    # copied once by the kernel plus its (small) head once by memcpy, as a
    # BufferedProtocol does.  Only while copying: mapped pages cannot be
    # made contiguous with bytes already received.

    def gather(self, views, Py_ssize_t total):
        """Receive the next ``total`` bytes of the stream as one view.

        ``views`` are the first bytes of that frame, already delivered (the
        reader's partial frame, fewer than ``total`` bytes); they are copied
        into a pooled buffer of ``total`` bytes, which the following pumps
        fill by ``recv`` and then deliver to the sink as one view (or, at
        EOF or an error, as a shorter view of what arrived).  The caller
        releases ``views`` afterwards.  Returns the bytes copied from
        ``views``, or -1 when the engine declines (mapping now, paused,
        views pending, a gather already open, or no buffer free within
        ``max_pinned_bytes``, or a frame under twice ``receive_size``):
        nothing changed, the caller goes on as before.
        """
        cdef Py_ssize_t head = 0
        cdef int idx
        cdef Py_buffer pb
        cdef char *dst
        if (self.fd < 0 or self.gidx >= 0 or self._mode != MODE_COPY
                or self.phase == PH_PROBE or self.pending or self.paused
                or <size_t>total < 2 * self.receive_size):
            # Smaller frames gain nothing: their head, up to a whole
            # receive, is copied anyway, and finishing them costs one more
            # recv.  Measured with benchmarks/_receivers.py's ZCProtocol
            # (plain sender, medians of 5): 256 KiB frames cost 116 us with
            # gather against 107 without, 512 KiB 222 against 224, and
            # 1 MiB 389 against 427 (asyncio BufferedProtocol: 101, 181, 358).
            return -1
        for v in views:
            head += len(v)
        if total <= head:
            return -1
        idx = self.pool.hold_frame(<size_t>total)
        if idx < 0:
            return -1
        dst = self.pool.fbufs[idx]
        for v in views:
            PyObject_GetBuffer(v, &pb, PyBUF_SIMPLE)
            memcpy(dst, pb.buf, pb.len)
            dst += pb.len
            PyBuffer_Release(&pb)
        self.gidx = idx
        self.gfill = <size_t>head
        self.gtotal = <size_t>total
        return head

    def end_gather(self):
        """Give up an open gather: deliver what arrived of the frame now.

        For a reader whose wait for the frame was cancelled: the bytes go
        to the sink, and the rest of the stream follows as usual.
        """
        if self.gidx >= 0:
            self._end_gather()

    cdef int _end_gather(self) except -1:
        """Deliver the gathered bytes (all of the frame, or what arrived)."""
        cdef int idx = self.gidx
        cdef size_t fill = self.gfill
        self.gidx = -1
        self.after_gather = fill == self.gtotal
        if fill:
            v = self.pool.view(KIND_FRAME, idx, self.pool.fbufs[idx], <Py_ssize_t>fill)
            self.pool.unhold_frame(idx)
            self.sink(v)
        else:
            self.pool.unhold_frame(idx)
        return 0

    cdef Py_ssize_t _gather_round(self) except? _ERROR:
        cdef Py_ssize_t n
        cdef size_t room = self.gtotal - self.gfill
        try:
            n = self._recv(self.pool.fbufs[self.gidx] + self.gfill, room)
        except BaseException:
            # What arrived before the error is the application's.
            self._end_gather()
            raise
        if n == _EOF:
            self._end_gather()
            return _EOF
        if n <= 0:
            return n
        self.gfill += <size_t>n
        self.bytes_copied += n
        self.bytes_received += n
        if self.policy == POLICY_AUTO:
            self._steady_sample(0, n)
        if self.gfill == self.gtotal:
            self._end_gather()
        return n

    def pump(self, Py_ssize_t want=0):
        """Receive what the socket holds, up to a budget, into the sink.

        ``want`` > 0: the consumer waits for that many more bytes and will
        only look at what was delivered once pump() returns (a stream
        reader): stop as soon as they are delivered, rather than read up to
        the budget.  A reader of big frames needs that: the bytes read
        ahead of its next frame would be views it has to assemble, where
        left in the kernel they can be gathered (:meth:`gather`) instead.

        Returns the number of bytes delivered (0: nothing to read now),
        PUMP_EOF once the peer's FIN has been reached (after delivering
        anything before it), or PUMP_STARVED when ``on_exhausted='pause'``
        and every pooled buffer is held by views (call again after
        ``on_release`` fires).  Socket errors raise OSError after the bytes
        received before them have been delivered.
        """
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t n
        if self.fd < 0:
            raise RuntimeError("pump() called after close()")
        if want > 0 and self.gidx >= 0:
            # The reader waits for the frame it is gathering, whose head the
            # engine already holds (the reader's own count says the whole
            # frame): stop at its end, not a head's length into the next.
            want = <Py_ssize_t>(self.gtotal - self.gfill)
        cdef Py_ssize_t budget = want if 0 < want < PUMP_BUDGET else PUMP_BUDGET
        if self.pending and not self.deliver_pending():
            return 0
        while not self.paused:
            if total >= budget:
                # On uvloop a reader may never be called again after this
                # one (below): if the peer reset the connection, read on up
                # to the error now.  A stream reader (want > 0) comes back
                # by itself for the rest.
                if want or not self.check_error_when_drained or not self._error_pending():
                    break
                budget = PUMP_UNBOUNDED
            if self.gidx >= 0:
                n = self._gather_round()
            elif self._mode == MODE_ZC:
                n = self._zc_round()
            elif self.after_gather:
                # The next frame is probably big too, and its reader will
                # gather it: whatever this receive brings of it (its head)
                # is copied once more into the gather buffer.  A small
                # receive brings the header and little else.
                self.after_gather = False
                n = self._copy_round(min(<size_t>AFTER_GATHER_RECEIVE, self.receive_size))
            else:
                n = self._copy_round(self.receive_size)
            if n < 0:
                if n == _EOF and self.deferred_err:
                    self._raise_deferred()
                if n == _STARVED and total:
                    return total
                return n
            if n == 0:
                if self.deferred_err:
                    self._raise_deferred()
                break
            total += n
            if self._drained:
                # The kernel said nothing is left (inq == 0, or recv()
                # returned less than asked for): another call would only
                # find the queue empty.
                if self.deferred_err:
                    self._raise_deferred()
                if self.check_error_when_drained and self._last_recv:
                    self._raise_pending_error()
                break
        return total

    # A reset (or any socket error) with bytes still queued: recv() returns
    # the bytes first and fails only once the queue is empty, but
    # TCP_ZEROCOPY_RECEIVE reports the error (and clears it) in the first
    # call after it happened, with inq saying how much is still queued.
    # The engine keeps it and raises it once those bytes are delivered: the
    # application gets every byte the kernel accepted before the error, as
    # with recv(), and exactly one exception (with the error cleared, the
    # drained socket would otherwise look like a clean EOF).
    cdef int _raise_deferred(self) except -1:
        cdef int err = self.deferred_err
        self.deferred_err = 0
        raise _oserror(err)

    cdef bint _error_pending(self) except -1:
        """True if a socket error waits behind queued bytes (now deferred)."""
        cdef int err = 0
        cdef socklen_t elen = sizeof(int)
        if self.deferred_err:
            return True
        if getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 and err:
            self.deferred_err = err
            return True
        return False

    # uvloop (libuv) watches a descriptor once: when epoll reports EPOLLERR
    # (a reset), libuv stops the watcher and calls the reader one last time.
    # A recv() in that call returns the bytes still queued and leaves the
    # error pending, and no further readiness is ever reported: the
    # connection would hang instead of failing.  So on such loops, a copy
    # receive that drained the queue collects a pending socket error at
    # once (getsockopt(SO_ERROR), which also clears it) and raises it,
    # after delivering the bytes; and a pump that reaches its budget with
    # bytes still queued checks SO_ERROR too (_error_pending), reading on to
    # the error if there is one.  (A mapping call reports the error itself.)
    cdef int _raise_pending_error(self) except -1:
        cdef int err = 0
        cdef socklen_t elen = sizeof(int)
        if getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 and err:
            raise _oserror(err)
        return 0

    # -- the two paths -------------------------------------------------------

    cdef Py_ssize_t _zc_round(self) except? _ERROR:
        cdef _Pool pool = self.pool
        cdef size_t room, cbroom
        cdef socklen_t zlen = sizeof(aiozc_zc_receive)
        cdef int rc, err, ridx, sidx
        cdef char *addr
        cdef char *cbuf
        cdef uint32_t mapped
        cdef int32_t copied
        cdef uint32_t skip
        cdef int64_t t0 = 0
        cdef Py_ssize_t got
        cdef bint timed = self.phase == PH_PROBE

        if not self.window_tried:
            self.window_tried = True
            err = pool.map_window(self.fd)
            if err:
                self._copy_for_good(err, "mmap() of the socket")
                return self._copy_round(self.receive_size)
        # The copy buffer first, and off the probe's clock: a new slab's
        # first use is a one-off cost, not a cost of mapping.
        cbroom = pool.slab_room(self.copybuf_size, self.copybuf_size) if self.copybuf_size else 0
        if timed:
            t0 = aiozc_thread_cpu_ns()
        room = pool.region_room(self.receive_size // 4)
        if room == 0:
            # Every region is held by views (or the pinned bound is
            # reached): copy this time, and say so in the stats.
            self.exhausted_receives += 1
            return self._copy_round(self.receive_size)
        if room > self.receive_size:
            room = self.receive_size
        ridx = pool.cur_region
        sidx = pool.cur_slab
        addr = pool.window + ridx * pool.region_size + pool.rused[ridx]
        cbuf = pool.slabs[sidx] + pool.sused[sidx] if cbroom else NULL

        memset(&self.zc, 0, sizeof(aiozc_zc_receive))
        self.zc.address = <uint64_t>addr
        self.zc.length = <uint32_t>room
        self.zc.copybuf_address = <uint64_t>cbuf
        self.zc.copybuf_len = <int32_t>cbroom
        # The region beyond rused has never been mapped since its last zap,
        # so the kernel may skip zapping it under the socket lock.
        self.zc.flags = AIOZC_ZC_FLAG_TLB_CLEAN_HINT
        with nogil:
            while True:
                rc = getsockopt(self.fd, IPPROTO_TCP, AIOZC_TCP_ZEROCOPY_RECEIVE,
                                &self.zc, &zlen)
                if rc == 0 or errno != EINTR:
                    break
        self.receive_calls += 1
        self._last_recv = False
        if rc != 0:
            err = errno
            if err == EIO:
                return _EOF
            if err == ENOPROTOOPT or err == EOPNOTSUPP or (err == EINVAL and not self.zc_worked):
                self._copy_for_good(err, "getsockopt(TCP_ZEROCOPY_RECEIVE)")
                return self._copy_round(self.receive_size)
            PyErr_SetFromErrno(OSError)
            return _ERROR
        self.zc_worked = True
        self._drained = self.zc.inq == 0
        mapped = self.zc.length
        copied = self.zc.copybuf_len if self.zc.copybuf_len > 0 else 0
        skip = self.zc.recv_skip_hint
        got = mapped + copied
        if mapped:
            # The kernel maps whole pages; round anyway so that the next
            # address is page-aligned whatever it says.
            pool.rused[ridx] += (mapped + PAGE - 1) & ~(<size_t>PAGE - 1)
        if copied:
            pool.sused[sidx] += copied

        if timed and mapped:
            # The application will read these pages after the probe's clock
            # has stopped (a stream reader does, after data_received); a
            # copy's equivalent cost is inside recv().  Charge it here.
            aiozc_touch(addr, mapped)

        # Stream order: mapped pages, then the copy buffer, then the
        # skip-hint bytes (left in the kernel: the next round's copy buffer
        # or recv takes them, so a pause here loses nothing).
        if mapped:
            self.bytes_mapped += mapped
            self.bytes_received += mapped
        if copied:
            self.bytes_copied += copied
            self.bytes_received += copied
        if mapped and copied:
            v2 = pool.view(KIND_SLAB, sidx, cbuf, copied)
            self.sink(pool.view(KIND_REGION, ridx, addr, mapped))
            if self.paused:
                self.pending.append(v2)
            else:
                self.sink(v2)
        elif mapped:
            self.sink(pool.view(KIND_REGION, ridx, addr, mapped))
        elif copied:
            self.sink(pool.view(KIND_SLAB, sidx, cbuf, copied))

        if self.zc.err:
            # sock_error() reports a negative errno; the pending error is
            # cleared by reading it, so it is raised exactly once: now if
            # the queue is empty, else once it is (_raise_deferred).
            err = -self.zc.err if self.zc.err < 0 else self.zc.err
            if self.zc.inq == 0 and not skip:
                raise _oserror(err)
            self.deferred_err = err
        if skip and not self.paused:
            # Unmappable bytes the copy buffer could not take: recv exactly
            # those, so that the pages after them stay mappable.
            n = self._copy_round(skip)
            if n > 0:
                got += n
            elif got == 0 and n < 0:
                # _STARVED (every buffer held, on_exhausted='pause') or
                # _EOF: pump() must hear it; 0 would say "nothing to read"
                # on a readable socket, and the loop would call again at
                # once, forever.
                return n
        if timed and got:
            self._probe_sample(mapped, got, aiozc_thread_cpu_ns() - t0)
        elif self.policy == POLICY_AUTO:
            self._steady_sample(mapped, got)
        return got

    cdef Py_ssize_t _recv(self, char *buf, size_t room) except? _ERROR:
        """recv() into buf: bytes read, 0 (EAGAIN), _EOF, or raise."""
        cdef ssize_t n
        with nogil:
            while True:
                n = recv(self.fd, buf, room, 0)
                if n >= 0 or errno != EINTR:
                    break
        self.receive_calls += 1
        self._last_recv = True
        if n < 0:
            if errno == EAGAIN:  # EWOULDBLOCK is the same on Linux
                return 0
            PyErr_SetFromErrno(OSError)
            return _ERROR
        if n == 0:
            return _EOF
        self._drained = <size_t>n < room
        return n

    cdef Py_ssize_t _copy_round(self, size_t limit) except? _ERROR:
        cdef _Pool pool = self.pool
        cdef size_t room
        cdef ssize_t n
        cdef int sidx, err
        cdef char *buf
        cdef int64_t t0 = 0
        # In the mapping probe, a skip-hint recv is timed by its mapping round.
        cdef bint timed = self.phase == PH_PROBE and self._mode == MODE_COPY
        room = pool.slab_room(limit, min(limit, self.receive_size // 4))
        if room == 0:
            return self._exhausted_round(limit)
        if timed:
            t0 = aiozc_thread_cpu_ns()
        sidx = pool.cur_slab
        buf = pool.slabs[sidx] + pool.sused[sidx]
        n = self._recv(buf, room)
        if n <= 0:
            return n
        pool.sused[sidx] += n
        self.bytes_copied += n
        self.bytes_received += n
        if not timed and self.policy == POLICY_AUTO and self._mode == MODE_COPY:
            self._steady_sample(0, n)
        self.sink(pool.view(KIND_SLAB, sidx, buf, n))
        if timed:
            self._probe_sample(0, n, aiozc_thread_cpu_ns() - t0)
        return n

    cdef Py_ssize_t _exhausted_round(self, size_t limit) except? _ERROR:
        """Every pooled buffer is held by the application's views."""
        cdef ssize_t n
        cdef int err
        cdef char *buf
        cdef PyObject *raw
        self.exhausted_receives += 1
        if self.pause_when_exhausted:
            self.pool.starved = True
            return _STARVED
        # A bytes object of exactly the bytes received, shrunk in place
        # after the recv as socket.recv() does: the view's .obj is reachable
        # by the application, so it must hold no byte that was not received
        # here (malloc'd memory holds whatever was freed before, such as
        # another connection's stream) and no more memory than the view.
        raw = _bytes_new(NULL, <Py_ssize_t>limit)
        if raw == NULL:
            raise MemoryError()
        try:
            n = self._recv(_bytes_data(raw), limit)
        except BaseException:
            Py_XDECREF(raw)
            raise
        if n <= 0:
            Py_XDECREF(raw)
            return n
        if <size_t>n < limit and _PyBytes_Resize(&raw, n) < 0:
            raise MemoryError()  # raw was freed and set to NULL
        data = <object>raw
        Py_XDECREF(raw)
        self.bytes_copied += n
        self.bytes_received += n
        self.sink(memoryview(data))
        return n

    # -- choosing a mode -----------------------------------------------------
    #
    # 'auto' measures instead of guessing.  A probe receives probe_bytes by
    # mapping and probe_bytes by copying, interleaved in slices of
    # probe_bytes/8 (map, copy, map, copy, ...), timing each round with the
    # thread's CPU clock, and then keeps the cheaper mode for reprobe_bytes.
    # Interleaving matters: the first megabytes of a connection (slow start,
    # a receive buffer still growing, cold caches) cost several times the
    # steady state, and a probe that ran one mode before the other charged
    # that to whichever came first.  Mapping must win by ZC_MARGIN, and in
    # two probes in a row (the first decision thus takes 4 * probe_bytes
    # when mapping wins, 2 * probe_bytes when copying does).  A peer
    # whose pages the kernel cannot map settles the question at once (no
    # page mapped in probe_bytes/16), and a steady mapping mode whose mapped
    # share falls below min_mapped_fraction over any probe_bytes stretch
    # switches to copying.
    #
    # A round's time runs from before the receive (and any zap) to after the
    # sink has handled its views, and a mapping round also reads one byte
    # per cache line of what it mapped: on the project's machines most of
    # mapping's extra cost is that first touch of freshly mapped pages (TLB
    # and cache misses, +155-200 us/MB against +74-130 for bytes the copy
    # just wrote; docs/tuning.md), which a stream reader pays after the
    # clock has stopped.  A new copy slab is faulted in off the clock.
    #
    # The clock is read only while probing: in steady state the mode costs
    # nothing but two additions per round.

    cdef void _probe_sample(self, uint64_t mapped, uint64_t got, int64_t ns) noexcept:
        cdef double zc_cost, copy_cost, frac
        if self._mode == MODE_ZC:
            self.zc_bytes += got
            self.zc_mapped += mapped
            self.zc_ns += ns
            if self.zc_mapped == 0 and self.zc_bytes >= self.probe_bytes // 16:
                # Not one page mapped: a peer whose data the kernel cannot
                # map (plain send() on loopback).  No need to probe on.
                self._settle(MODE_COPY, "auto: none of the peer's bytes could be mapped")
                return
        else:
            self.copy_bytes += got
            self.copy_ns += ns
        self.slice_bytes += got
        if self.zc_bytes >= self.probe_bytes and self.copy_bytes >= self.probe_bytes:
            frac = <double>self.zc_mapped / <double>self.zc_bytes
            if frac < self.min_mapped_fraction:
                self._settle(MODE_COPY,
                             f"auto: only {frac:.0%} of the peer's bytes could be mapped")
                return
            zc_cost = <double>self.zc_ns / <double>self.zc_bytes
            copy_cost = <double>self.copy_ns / <double>self.copy_bytes
            if zc_cost < copy_cost * (1.0 - ZC_MARGIN):
                # Mapping must win two probes in a row: one noisy probe that
                # picks it wrongly costs 1.5-2x per byte for reprobe_bytes,
                # one probe more where it really wins costs probe_bytes.
                self.zc_wins += 1
                if self.zc_wins >= 2:
                    self._settle(MODE_ZC, None)
                else:
                    self._reset_probe()
                    self._mode = MODE_ZC
            else:
                self.zc_wins = 0
                self._settle(MODE_COPY, (
                    f"auto: mapping measured no cheaper than copying by the "
                    f"{ZC_MARGIN:.0%} margin (copy {copy_cost * 1e3:.0f} vs map "
                    f"{zc_cost * 1e3:.0f} us/MB of receiver CPU)"))
        elif self.slice_bytes >= self.probe_bytes // 8:
            self.slice_bytes = 0
            if self._mode == MODE_ZC and self.copy_bytes < self.probe_bytes:
                self._mode = MODE_COPY
            elif self._mode == MODE_COPY and self.zc_bytes < self.probe_bytes:
                self._mode = MODE_ZC

    cdef void _steady_sample(self, uint64_t mapped, uint64_t got) noexcept:
        if self.phase != PH_STEADY:
            return
        self.until_reprobe -= <int64_t>got
        if self._mode == MODE_ZC:
            self.zc_bytes += got
            self.zc_mapped += mapped
            if self.zc_bytes >= self.probe_bytes:
                if <double>self.zc_mapped < self.min_mapped_fraction * <double>self.zc_bytes:
                    self._settle(MODE_COPY, "auto: the peer's bytes stopped being mappable")
                    return
                self._reset_probe()
        if self.until_reprobe <= 0:
            self.phase = PH_PROBE
            self._mode = MODE_ZC
            self._reset_probe()

    cdef void _settle(self, int mode, object reason) noexcept:
        if mode != self.settled_mode:
            self.settled_mode = mode
            self.mode_switches += 1
        self._mode = mode
        self._reason = reason
        self.phase = PH_STEADY
        self.until_reprobe = <int64_t>self.reprobe_bytes
        self._reset_probe()

    cdef void _reset_probe(self) noexcept:
        self.zc_bytes = self.zc_mapped = self.copy_bytes = self.slice_bytes = 0
        self.zc_ns = self.copy_ns = 0

    cdef void _copy_for_good(self, int err, str what):
        self.policy = POLICY_NEVER
        self.phase = PH_STEADY
        if self._mode != MODE_COPY:
            self._mode = MODE_COPY
            self.mode_switches += 1
        if err == ENODEV or err == ENOPROTOOPT or err == EOPNOTSUPP:
            why = "the socket does not support TCP receive zerocopy (not TCP, or the kernel lacks it)"
        else:
            why = "the kernel refused it"
        self._reason = f"{what} failed with {_os.strerror(err)}: {why}"
