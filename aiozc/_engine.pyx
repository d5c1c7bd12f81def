# cython: language_level=3, freethreading_compatible=False
"""The compiled receive engine: receives, views, gathered frames, errors.

It knows nothing of event loops.  A driver (the asyncio transport, the anyio
stream, the benchmark's blocking floor) calls :meth:`Receiver.pump` when the
socket is readable; ``pump`` receives with ``TCP_ZEROCOPY_RECEIVE`` or
``recv`` and hands each piece of payload, in stream order, to ``sink`` as a
read-only memoryview.

The memory it receives into, and the exporter behind every view, belong to
the connection's pool: ``aiozc/_pool.pyx``, whose docstring states the one
rule of memory safety everything here serves (no byte range is zapped or
unmapped while a view covers it).  Whether a receive maps or copies is the
policy's choice: ``aiozc/_policy.pyx``.
"""

from cpython.pyport cimport PY_SSIZE_T_MAX
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_SetFromErrno
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF
from libc.errno cimport (EACCES, EAGAIN, EINTR, EINVAL, EIO, ENOPROTOOPT, ENOSYS,
                         EOPNOTSUPP, EPERM, errno)
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

cdef extern from "Python.h":
    # Raw-pointer spellings, for _PyBytes_Resize, which needs the only
    # reference to the object (a Cython object variable would hold one).
    PyObject *_bytes_new "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n)
    char *_bytes_data "PyBytes_AS_STRING"(PyObject *o)
    int _PyBytes_Resize(PyObject **o, Py_ssize_t n)

from aiozc._kernel cimport (AIOZC_TCP_ZEROCOPY_RECEIVE, AIOZC_ZC_FLAG_TLB_CLEAN_HINT,
                            FIONREAD, IPPROTO_TCP, SHUT_RDWR, SO_ERROR, SOL_SOCKET,
                            aiozc_disconnect, aiozc_thread_cpu_ns, aiozc_touch,
                            aiozc_zc_receive, getsockopt, ioctl, recv, shutdown,
                            socklen_t)
from aiozc._policy cimport MODE_COPY, MODE_ZC, PH_PROBE, POLICY_AUTO, Policy, ProbeHistory
from aiozc._pool cimport KIND_FRAME, KIND_REGION, KIND_SLAB, Budget, Pool

import os as _os

from aiozc._stats import ZCStats

# What pump() returns besides a byte count.
PUMP_EOF = -1
PUMP_STARVED = -2

cdef enum:
    PAGE = 4096

# A copy slab holds this many receives of receive_size.  Consecutive
# receives land back to back in a slab, so a frame that spans them is one
# view over both (join(), in _pool.pyx): with one receive per slab every
# frame that straddled two receives was copied to be assembled.
cdef enum:
    SLAB_RECEIVES = 4

# One pump() delivers at most this many bytes before returning to the event
# loop, so one busy connection cannot starve the others.  4x CPython's
# per-event read (256 KiB) amortises the loop's per-event cost (epoll, a
# handle, a Python frame) over ~1 MiB without hurting fairness measurably.
# Measured on this project's VM (one machine: 1 MiB L2 per core), builds
# with 256 KiB and with 4 MiB cost the same as this one in every bulk cell,
# within the noise of unchanged code (aiozc's own CPU per message, median
# -0.3% and +0.5% over 78 cells; benchmarks/results/2026-11-28-pump-budget.md).
# The budget sets how often the loop gets a turn, not the size of a
# receive (receive_size at most, outside a gather, whatever the budget).
cdef enum:
    PUMP_BUDGET = 1048576
cdef Py_ssize_t PUMP_UNBOUNDED = PY_SSIZE_T_MAX

# After a gathered frame, the next receive takes at most this much.
cdef enum:
    AFTER_GATHER_RECEIVE = 16384


# The bytes of struct tcp_zerocopy_receive up to and including copybuf_len:
# a kernel that returns a shorter optlen did not read the copy buffer.
cdef enum:
    ZC_LEN_WITH_COPYBUF = 36


cdef object _oserror(int err):
    return OSError(err, _os.strerror(err))


# ZCStats.fallback_reason of a connection in mapping mode that has mapped
# nothing (docs/kernel.md, "Which pages map").
cdef str _NOTHING_MAPPED = (
    "nothing has been mapped: every byte so far arrived in pages the kernel "
    "cannot map (a peer that sends with plain send() over loopback, a NIC "
    "without header split or an MTU that splits pages, payloads not "
    "page-aligned); each receive still tries to map, and copies what it cannot"
)


cdef bint _queued(int fd) noexcept:
    """Bytes wait in the socket's receive queue (FIONREAD)."""
    cdef int queued = 0
    return ioctl(fd, FIONREAD, &queued) == 0 and queued > 0


# The window is an mmap() of the socket, so while views keep it mapped the
# mapping holds a reference to the socket's file: close(fd) then only drops
# the fd, and the kernel's tcp_close(), which sends the FIN or the RST,
# waits for the last view.  The transport also keeps the fd itself open
# after abort() while zerocopy sends are in the kernel (the linger).  In
# both cases the driver ends the connection itself.  A shutdown(SHUT_RDWR)
# sends the FIN, but it is not all close() does: close() of a socket with
# unread bytes resets the connection instead.  Without the reset a peer
# whose sends filled our receive window stays blocked for as long as the
# socket stays open (the zero-window probes it sends carry no new data, so
# nothing answers them with a reset); that was a hang of the fault suite,
# abort() with views held over loopback.  So, with unread bytes, or when
# the driver asks for a reset, the connection is disconnected (connect()
# to AF_UNSPEC: tcp_disconnect(), the same RST and the same dropped queues
# as close()'s).  Data that arrives after the FIN gets a reset from the
# kernel as after close().

def end_connection(int fd, bint reset=False):
    """End the TCP connection on ``fd`` as ``close(fd)`` would, leaving the
    fd open: a FIN, or a reset when bytes are unread or ``reset`` is true
    (an abortive close, as with SO_LINGER 0).  Errors (the connection is
    already gone) are ignored, as close() ignores them.

    For a driver about to close an fd that stays referenced
    (:attr:`Receiver.holds_socket`), or that keeps it open on purpose.
    """
    if fd < 0:
        return
    if not reset and not _queued(fd):
        shutdown(fd, SHUT_RDWR)
    elif aiozc_disconnect(fd) != 0:
        shutdown(fd, SHUT_RDWR)


cdef class Receiver:
    """Receives from one connected stream socket; see the module docstring.

    ``Receiver(fd, config, sink, eager_errors=False)``: ``fd`` must stay
    open while pump() is called (the driver owns the socket), ``sink`` is
    called with each read-only memoryview in stream order.
    ``eager_errors`` (also settable later, as the transport does when the
    way its socket is watched changes): the event loop stops watching a
    socket once it reports an error (libuv; see aiozc/_quirks.py and
    aiozc/_poller.pyx), so socket errors are collected without waiting to
    be told (see _error_pending).  ``budget``: the
    loop-wide bound on pinned memory (aiozc/_memory.py); ``history``: what
    the 'auto' probes of the loop's other connections measured
    (aiozc/_policy.pyx).  Without them the connection stands alone.
    """

    def __cinit__(self, int fd, config, sink=None, *, bint eager_errors=False,
                  Budget budget=None, ProbeHistory history=None):
        self.fd = fd
        self.eager_errors = eager_errors
        self.sink = sink
        self.pending = []
        self.gidx = -1
        self.receive_size = config.receive_size
        self.copybuf_size = config.copybuf_size
        self.pool = Pool(config.window_size, config.region_size,
                         SLAB_RECEIVES * config.receive_size, config.max_pinned_bytes,
                         budget)
        self.pause_when_exhausted = config.on_exhausted == "pause"
        self.policy = Policy(config, history)

    # -- public --------------------------------------------------------------

    @property
    def mode(self):
        """'zerocopy' or 'copy'."""
        return "zerocopy" if self.policy.mode == MODE_ZC else "copy"

    @property
    def fallback_reason(self):
        """Why the connection copies, or None."""
        return self.policy.reason

    @property
    def on_release(self):
        """Called (once) when pump() returned PUMP_STARVED and memory frees up.

        It must hold its owner weakly (a partial over a weak reference, as
        the transport and the anyio stream set it): the pool keeps it, every
        view's Chunk keeps the pool, and Chunks are not tracked by the
        garbage collector (_pool.pyx), so a callback that leads back to the
        views' owner makes a cycle that is never collected.
        """
        return self.pool.on_release

    @on_release.setter
    def on_release(self, value):
        self.pool.on_release = value

    def stats(self):
        """A :class:`aiozc.ZCStats` snapshot."""
        reason = self.policy.reason
        if reason is None and self.bytes_received and not self.bytes_mapped:
            # Mapping mode ('always', or 'auto' settled on mapping), yet
            # nothing mapped: the peer's pages are not mappable.  The mode
            # says 'zerocopy' and would leave the user guessing.
            reason = _NOTHING_MAPPED
        return ZCStats(
            bytes_received=self.bytes_received,
            bytes_mapped=self.bytes_mapped,
            bytes_copied=self.bytes_copied,
            receive_calls=self.receive_calls,
            views_outstanding=self.pool.views,
            bytes_pinned=self.pool.pinned,
            mode="zerocopy" if self.policy.mode == MODE_ZC else "copy",
            fallback_reason=reason,
            zap_calls=self.pool.zap_calls,
            regions_recycled=self.pool.regions_recycled,
            exhausted_receives=self.exhausted_receives,
            mode_switches=self.policy.mode_switches,
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
        self.policy.release_slot()
        if self.gidx >= 0:
            self.pool.unhold_frame(self.gidx)
            self.gidx = -1
        self.pool.close()

    def release_idle(self):
        """Give back what the connection holds but no view pins: call when it
        has been idle (drained, nothing pending) for a moment.

        Its copy slab returns to the shared store, mapped pages no view
        covers are zapped, idle frame buffers are unmapped.  The next
        receive takes what it needs again (and still finds clean regions
        to map into, for the TLB-clean hint).
        """
        if self.fd >= 0 and self.gidx < 0 and not self.pending:
            self.pool.release_idle()

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

    @property
    def min_gather_size(self):
        """The smallest frame :meth:`gather` accepts (twice ``receive_size``).

        A frame reader need not ask for smaller ones: the answer is no.
        """
        return 2 * self.receive_size

    def deliver_pending(self):
        """Hand views held back by a pause to the sink; False if paused again."""
        while self.pending:
            if self.paused:
                return False
            self.sink(self.pending.pop(0))
        return True

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
        if (self.fd < 0 or self.gidx >= 0 or self.policy.mode != MODE_COPY
                or self.policy.phase == PH_PROBE or self.pending or self.paused
                or <size_t>total < 2 * self.receive_size):  # (min_gather_size)
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

    def note_assembled(self, Py_ssize_t nbytes):
        """The reader copied ``nbytes`` to join views into one frame.

        :class:`~aiozc._buffer.ViewBuffer` calls it (for the engine it last
        asked to :meth:`gather`); 'auto' stops mapping for a reader that
        copies what was mapped anyway (see Policy.note_assembled).
        """
        if nbytes > 0:
            self.policy.note_assembled(<uint64_t>nbytes)

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
        if self.policy.kind == POLICY_AUTO:
            self.policy.steady_sample(0, n)
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
        try:
            return self._pump(want)
        finally:
            # A slab this pump received into and no view holds any more (an
            # application that releases each view in data_received) goes
            # back to the shared store now: the next pump, of this
            # connection or any other, takes it again off the top, still in
            # the cache.  With one slab per connection, 1,000 connections
            # streaming at once wrote into 1,000 different buffers.
            self.pool.settle()

    cdef Py_ssize_t _pump(self, Py_ssize_t want) except? _ERROR:
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
                if want or not self.eager_errors or not self._error_pending():
                    break
                budget = PUMP_UNBOUNDED
            if self.gidx >= 0:
                n = self._gather_round()
            elif self.policy.mode == MODE_ZC:
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
                    if self._still_queued():
                        continue  # see _still_queued
                    self._raise_deferred()
                if n == _STARVED and total:
                    return total
                return n
            if n == 0:
                if self.deferred_err:
                    if self._still_queued():
                        continue
                    self._raise_deferred()
                break
            total += n
            if self._drained:
                # The kernel said nothing is left (inq == 0, or recv()
                # returned less than asked for): another call would only
                # find the queue empty.  An error waiting (deferred, or
                # collected now on loops that need it: _error_pending) is
                # raised once the queue is really empty (_still_queued).
                if self.deferred_err or (self.eager_errors and self._last_recv
                                         and self._error_pending()):
                    if self._still_queued():
                        self._drained = False
                        continue
                    self._raise_deferred()
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
    # once (getsockopt(SO_ERROR), which also clears it: _error_pending) and
    # raises it, after delivering the bytes; and a pump that reaches its
    # budget with bytes still queued checks SO_ERROR too, reading on to the
    # error if there is one.  (A mapping call reports the error itself.)
    #
    # The check costs 0.38 us per drained receive here (one request per
    # receive, as an RPC server with one request in flight sees).  Folding
    # it into the receive does not pay: TCP_ZEROCOPY_RECEIVE with no pages
    # asked for and the room as its copy buffer copies a queue that fits,
    # as recv() would, and reports the error in the same call, but that
    # call costs 0.40 us more than a recv() (benchmarks/results/
    # 2026-11-28-not-kept.md).
    #
    # "Drained" is the kernel's word at the moment of the call (inq == 0,
    # or recv() returning less than asked), and it can be wrong by the time
    # an error is raised: segments that arrived while the call held the
    # socket wait in its backlog, which the kernel moves to the queue only
    # as the call returns (a non-blocking recv() stops at the end of the
    # queue rather than process the backlog, and EAGAIN can come with a
    # backlog too).  Raising then loses those bytes: the reset comes after
    # them in the stream, and the application never reads them (seen with
    # a reset behind 50-470 KB, over veth with two busy processes beside
    # it: 4 runs in 40).  So before raising, the queue is asked once more
    # (FIONREAD, after the backlog was processed); bytes there are read
    # first.  One ioctl per error, none on the normal path.
    cdef bint _still_queued(self) noexcept:
        return _queued(self.fd)

    # -- the two paths -------------------------------------------------------

    cdef Py_ssize_t _zc_round(self) except? _ERROR:
        cdef Pool pool = self.pool
        cdef size_t room, cbroom
        cdef socklen_t zlen = sizeof(aiozc_zc_receive)
        cdef int rc, err, ridx, sidx
        cdef char *addr
        cdef char *cbuf
        cdef uint32_t mapped
        cdef int32_t copied
        cdef uint32_t skip
        cdef int64_t t0 = 0
        cdef Py_ssize_t got, n
        cdef bint timed = self.policy.phase == PH_PROBE

        if not self.window_tried:
            self.window_tried = True
            err = pool.map_window(self.fd)
            if err:
                self.policy.copy_for_good(err, "mmap() of the socket")
                return self._copy_round(self.receive_size)
        # The copy buffer first, and off the probe's clock: a new slab's
        # first use is a one-off cost, not a cost of mapping.
        cbroom = (pool.slab_room(self.copybuf_size, self.copybuf_size, timed)
                  if self.copybuf_size else 0)
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
            # The feature is missing (ENOPROTOOPT, EOPNOTSUPP), or refused
            # before it ever worked on this socket: EINVAL (an old kernel's
            # struct), or EPERM/EACCES/ENOSYS, which no kernel returns here
            # but a seccomp filter or an LSM does (containers): the
            # connection copies for good, and says why, rather than dying.
            if err == ENOPROTOOPT or err == EOPNOTSUPP or (
                    not self.zc_worked and (err == EINVAL or err == EPERM
                                            or err == EACCES or err == ENOSYS)):
                self.policy.copy_for_good(err, "getsockopt(TCP_ZEROCOPY_RECEIVE)")
                return self._copy_round(self.receive_size)
            PyErr_SetFromErrno(OSError)
            return _ERROR
        self.zc_worked = True
        self._drained = self.zc.inq == 0
        mapped = self.zc.length
        if zlen < ZC_LEN_WITH_COPYBUF and cbroom:
            # A kernel before 5.11 read only the fields it knows (24 bytes on
            # 5.7-5.10) and ignored the copy buffer: copybuf_len still holds
            # what we passed in, not bytes it copied (docs/kernel.md).  Take
            # the stragglers with recv() from now on.
            self.zc.copybuf_len = 0
            self.copybuf_size = 0
            cbroom = 0
        copied = self.zc.copybuf_len if self.zc.copybuf_len > 0 else 0
        skip = self.zc.recv_skip_hint
        got = mapped + copied
        if mapped:
            # The kernel maps whole pages; round anyway so that the next
            # address is page-aligned whatever it says.
            pool.rused[ridx] += (mapped + PAGE - 1) & ~(<size_t>PAGE - 1)
        if copied:
            pool.sused[sidx] += copied
            pool.touched(sidx)

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
            if self.zc.inq == 0 and not skip and not self._still_queued():
                raise _oserror(err)
            self.deferred_err = err
        if mapped:
            self.unmapped_rounds = 0
        elif skip:
            self.unmapped_rounds += 1
        if skip and not self.paused:
            # Unmappable bytes the copy buffer could not take.  The kernel's
            # hint runs to the end of the skb at whose unmappable page it
            # stopped (up to ~64 KiB over loopback): recv exactly those, and
            # the next call starts at an skb boundary, where a MSG_ZEROCOPY
            # sender's pages map again.  But a peer whose data never maps
            # (a plain sender over loopback) then costs a getsockopt and a
            # recv per skb, 8 calls per 256 KiB where the copy path makes one
            # (RPC cell, 32 KiB requests, `always`: 26,703 receive calls per
            # 20,000 requests, +20-32% CPU).  So once a call that started at
            # an skb boundary has mapped nothing too (the second such
            # round in a row, counted in unmapped_rounds), recv what the socket holds, up to the
            # receive size, in the one recv; every 16th unmapped round
            # recv's exactly the hint again, so that the next call tests an
            # skb boundary and a peer whose pages become mappable is seen.
            # (Always recv'ing greedily fails: a stream that is misaligned
            # once, after a copied stretch, stays misaligned for good.)
            if mapped or self.unmapped_rounds < 2 or self.unmapped_rounds % 16 == 0:
                n = self._copy_round(skip)
            else:
                n = self._copy_round(self.receive_size)
            if n > 0:
                got += n
            elif got == 0 and n < 0:
                # _STARVED (every buffer held, on_exhausted='pause') or
                # _EOF: pump() must hear it; 0 would say "nothing to read"
                # on a readable socket, and the loop would call again at
                # once, forever.
                return n
        if timed and got:
            self.policy.probe_sample(mapped, got, aiozc_thread_cpu_ns() - t0)
        elif self.policy.kind == POLICY_AUTO:
            self.policy.steady_sample(mapped, got)
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
        cdef Pool pool = self.pool
        cdef size_t room
        cdef ssize_t n
        cdef int sidx
        cdef char *buf
        cdef int64_t t0 = 0
        # In the mapping probe, a skip-hint recv is timed by its mapping round.
        cdef bint timed = self.policy.phase == PH_PROBE and self.policy.mode == MODE_COPY
        # Prefaulted (off the clock) only while the probe times this round.
        room = pool.slab_room(limit, min(limit, self.receive_size // 4),
                              self.policy.phase == PH_PROBE)
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
        pool.touched(sidx)
        self.bytes_copied += n
        self.bytes_received += n
        if not timed and self.policy.kind == POLICY_AUTO and self.policy.mode == MODE_COPY:
            self.policy.steady_sample(0, n)
        self.sink(pool.view(KIND_SLAB, sidx, buf, n))
        if timed:
            self.policy.probe_sample(0, n, aiozc_thread_cpu_ns() - t0)
        return n

    cdef Py_ssize_t _exhausted_round(self, size_t limit) except? _ERROR:
        """Every pooled buffer is held by the application's views."""
        cdef ssize_t n
        cdef PyObject *raw
        self.exhausted_receives += 1
        if self.pause_when_exhausted and (
                self.pool.pinned or (self.pool.budget is not None and self.pool.budget.pinned)):
            # (Pause only while some view pins memory: its release is what
            # resumes reading.  With nothing pinned, the pool ran out for
            # another reason, a slab the kernel would not map (ENOMEM, the
            # map count): then copy, or nothing would ever resume.)
            self.pool.starved = True
            if self.pool.budget is not None:
                # Perhaps the loop's bound: then a release on any connection
                # of the loop may be the one this one waits for.
                self.pool.budget.starved.append(self.pool)
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
