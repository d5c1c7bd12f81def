# The receive engine (aiozc/_engine.pyx).  Its Python API is in
# _engine.pyi; this declares its fields and cdef methods for Cython.

cimport cython
from libc.stdint cimport uint64_t

from aiozc._kernel cimport aiozc_zc_receive
from aiozc._policy cimport Policy
from aiozc._pool cimport Pool

# What a receive round returns besides a byte count: pump() returns the
# first two as PUMP_EOF and PUMP_STARVED; _ERROR means an exception is set.
cdef enum:
    _EOF = -1
    _STARVED = -2
    _ERROR = -3


@cython.final
cdef class Receiver:
    cdef int fd
    cdef Pool pool
    cdef Policy policy        # the mode: 'auto''s probes, or a fixed choice
    cdef public object sink
    cdef public bint paused
    cdef public bint eager_errors  # collect socket errors without being told (libuv)
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
    cdef bint pause_when_exhausted
    # state
    cdef bint window_tried
    cdef bint zc_worked
    cdef unsigned int unmapped_rounds  # rounds in a row that mapped nothing, hint left
    # counters
    cdef uint64_t bytes_received
    cdef uint64_t bytes_mapped
    cdef uint64_t bytes_copied
    cdef uint64_t receive_calls
    cdef uint64_t exhausted_receives

    cdef Py_ssize_t _pump(self, Py_ssize_t want) except? _ERROR
    cdef int _end_gather(self) except -1
    cdef Py_ssize_t _gather_round(self) except? _ERROR
    cdef int _raise_deferred(self) except -1
    cdef bint _error_pending(self) except -1
    cdef bint _still_queued(self) noexcept
    cdef Py_ssize_t _zc_round(self) except? _ERROR
    cdef Py_ssize_t _recv(self, char *buf, size_t room) except? _ERROR
    cdef Py_ssize_t _copy_round(self, size_t limit) except? _ERROR
    cdef Py_ssize_t _exhausted_round(self, size_t limit) except? _ERROR
