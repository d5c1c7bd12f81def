# The readiness of every aiozc connection of an event loop, from one epoll
# instance of aiozc's own (Poller): the loop watches that one descriptor,
# and aiozc reads the events behind it and calls each ready connection.
#
# Why not the loop's add_reader() per socket, as before:
#
# * uvloop (libuv) treats EPOLLERR on a watched descriptor as fatal: it
#   stops watching and calls the reader once more.  A reset queued behind
#   the last bytes of a receive would then never be reported, so every
#   receive that drained the socket had to ask for a pending error at once
#   (getsockopt(SO_ERROR)): a system call per request for an RPC server
#   with one request in flight per connection.  aiozc's own epoll is
#   level-triggered on every loop and reports EPOLLERR until it is
#   collected, by the receive that returns the error, as the stdlib
#   selector loop does.
# * A socket watched by uvloop costs seven system calls to add and remove
#   (libuv checks a new descriptor with an ADD and a DEL, sets O_NONBLOCK
#   again, adds it, and removes it three times) and a poll handle object;
#   here it is one epoll_ctl each way.  A server that accepts and closes
#   connections pays this per connection.
# * The ready sockets' events are read and dispatched in C, up to 256 per
#   wake-up of the loop.
#
# The stdlib selector loop keeps its own add_reader() for every socket (a
# Poller with no limit on direct_max, see poller_for()):
# it reports errors until they are collected anyway, and there the
# poller's second epoll_wait() per wake-up costs more than the Python work
# of the selector it saves.
#
# What it keeps from the loops' own watching: level-triggered readiness (a
# callback that leaves bytes queued is called again at the next iteration);
# each callback runs in a copy of the context that was current when it was
# registered, as add_reader() callbacks do; an exception escaping a
# callback goes to the loop's exception handler and the other callbacks
# still run.  The poller watches reading only: writers stay with the loop
# (add_writer), which sees a socket only while its writes wait.
#
# Up to DIRECT_MAX connections of a loop at a time (the first ones, and
# later whichever starts reading while fewer are) are watched by the loop
# itself instead, with add_reader(): the poller pays when a wake-up brings
# several ready sockets, which takes many connections; with few, it only
# adds a second epoll_wait() and a nested wake-up to each wake-up.  Each
# connection stays as it started until it stops reading; register() says
# which way a socket is watched, and the transport collects errors
# eagerly for a socket the loop watches (on loops that need it).
#
# The epoll descriptor exists while at least one connection is registered
# with it: the last unregister removes it from the loop and closes it, so
# a loop with no aiozc connection holds nothing of aiozc's.

cimport cython
from cpython.contextvars cimport PyContext_CopyCurrent, PyContext_Enter, PyContext_Exit
from libc.errno cimport EBADF, EINTR, ENOENT, errno
from libc.stdint cimport uint64_t

cdef extern from "Python.h":
    const Py_ssize_t PY_SSIZE_T_MAX

from aiozc._kernel cimport (EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLLIN, close,
                            epoll_create1, epoll_ctl, epoll_event, epoll_wait)

import contextvars as _contextvars
import os as _os
import weakref as _weakref

from aiozc._quirks import quirks_of

# How many sockets the loop watches itself before the poller's epoll takes
# the next ones.  Measured on uvloop with 512 B requests, one in flight per
# connection: server CPU per request through the poller, over add_reader()
# with the SO_ERROR check (benchmarks/results/2026-11-28-poller.md; medians
# of paired rounds on a noisy machine).  With the poller for every
# connection (or all but one): one connection 1.04-1.10x, 10 connections
# 0.98-1.06x, 100 and 1,000 connections 0.88-1.05x.  With this setting:
# 100 and 1,000 connections 0.93-1.01x, and up to 16 as before.  So up to
# 16 connections of a loop keep add_reader(), and a server with more has
# most of its connections watched by the poller.
DEF DIRECT_MAX_DEFAULT = 16

# Events read per epoll_wait().  More ready sockets than this are read at
# the loop's next iteration (readiness is level-triggered), which also
# lets the loop's other callbacks run in between; 256 events are 3 KiB.
DEF MAX_EVENTS = 256


@cython.final
cdef class Poller:
    """The read readiness of an event loop's aiozc sockets (one epoll).

    ``Poller(loop, direct_max=16)``: the loop watches up to ``direct_max``
    sockets itself (add_reader), the poller's epoll the others.
    """

    cdef readonly object loop
    cdef int epfd
    cdef bint dispatching
    cdef uint64_t next_token
    # token -> (callback, context); fd -> token.  The token, not the fd, is
    # what an event carries: a socket closed and another opened with the
    # same number during one dispatch must not get the old one's event.
    cdef dict entries
    cdef dict tokens
    cdef set direct  # the fds the loop watches itself (add_reader)
    cdef readonly Py_ssize_t direct_max
    cdef epoll_event events[MAX_EVENTS]
    cdef object __weakref__

    def __cinit__(self, loop, Py_ssize_t direct_max=DIRECT_MAX_DEFAULT):
        self.loop = loop
        self.direct_max = direct_max
        self.epfd = -1
        self.entries = {}
        self.tokens = {}
        self.direct = set()
        self.next_token = 1

    def __dealloc__(self):
        if self.epfd >= 0:
            close(self.epfd)

    @property
    def registered(self):
        """How many descriptors are watched."""
        return len(self.tokens) + len(self.direct)

    def watched_by_loop(self, int fd):
        """True if the loop watches ``fd`` itself (add_reader), False if the
        poller's epoll does, None if it is not watched."""
        if fd in self.direct:
            return True
        return False if fd in self.tokens else None

    def register(self, int fd, callback):
        """Call ``callback()`` whenever ``fd`` is readable, until unregistered.

        Returns True if the loop watches ``fd`` itself (it watched fewer
        than ``direct_max``), False if the poller's epoll does.
        """
        cdef epoll_event ev
        if fd in self.tokens or fd in self.direct:
            raise RuntimeError(f"fd {fd} is already watched by aiozc's poller")
        if len(self.direct) < self.direct_max:
            self.loop.add_reader(fd, callback)
            self.direct.add(fd)
            return True
        if self.epfd < 0:
            self._start()
        token = self.next_token
        self.next_token += 1
        ev.events = EPOLLIN
        ev.data.u64 = token
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) != 0:
            err = errno
            if not self.tokens:
                self._stop()
            raise OSError(err, _os.strerror(err))
        self.entries[token] = (callback, PyContext_CopyCurrent())
        self.tokens[fd] = token
        return False

    def unregister(self, int fd):
        """Stop watching ``fd`` (nothing if it is not watched)."""
        cdef epoll_event ev
        if fd in self.direct:
            self.direct.discard(fd)
            self.loop.remove_reader(fd)
            return
        token = self.tokens.pop(fd, None)
        if token is None:
            return
        del self.entries[token]
        if epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, &ev) != 0:
            # ENOENT/EBADF: the descriptor was closed before it was
            # unregistered.  The transport never does that: epoll drops a
            # registration only when the file's last reference goes, and a
            # socket's file can outlive its fd (a mapped receive window
            # holds it), so a socket must be unregistered before it is
            # closed.  The entry is gone from here either way.
            if errno != ENOENT and errno != EBADF:
                err = errno
                raise OSError(err, _os.strerror(err))
        if not self.tokens and not self.dispatching:
            self._stop()

    cdef _start(self):
        cdef int epfd = epoll_create1(EPOLL_CLOEXEC)
        if epfd < 0:
            err = errno
            raise OSError(err, _os.strerror(err))
        self.epfd = epfd
        try:
            # In an empty context: the loop keeps the one add_reader() runs
            # in for as long as the epoll is watched, and it must not be
            # that of whichever task made the first registration.
            _contextvars.Context().run(self.loop.add_reader, epfd, self._dispatch)
        except BaseException:
            self.epfd = -1
            close(epfd)
            raise

    cdef _stop(self):
        cdef int epfd = self.epfd
        if epfd < 0:
            return
        self.epfd = -1
        try:
            if not self.loop.is_closed():
                self.loop.remove_reader(epfd)
        finally:
            close(epfd)

    def _dispatch(self):
        cdef int i, n
        cdef object entry
        if self.epfd < 0:
            return  # stopped after the loop queued this call
        n = epoll_wait(self.epfd, self.events, MAX_EVENTS, 0)
        if n < 0:
            if errno == EINTR:
                return
            err = errno
            raise OSError(err, _os.strerror(err))
        self.dispatching = True
        try:
            for i in range(n):
                entry = self.entries.get(self.events[i].data.u64)
                if entry is None:
                    continue  # unregistered by an earlier callback of this batch
                self._run(entry)
        finally:
            self.dispatching = False
            if not self.tokens:
                self._stop()

    cdef _run(self, tuple entry):
        # As asyncio's Handle._run: in the callback's context, and an
        # exception goes to the loop's handler.
        # (The handler is called outside that context, as asyncio does.)
        cdef object failure = None
        callback, context = entry
        PyContext_Enter(context)
        try:
            callback()
        except BaseException as exc:
            failure = exc
        finally:
            PyContext_Exit(context)
        if failure is not None:
            if isinstance(failure, (SystemExit, KeyboardInterrupt)):
                raise failure
            self.loop.call_exception_handler({
                "message": f"Exception in callback {callback!r}",
                "exception": failure,
            })


DIRECT_MAX = DIRECT_MAX_DEFAULT


# One poller per loop, made by the first connection.  Keyed by id(loop): a
# poller with registrations is held by the loop (its add_reader callback),
# and an idle one by the transports that use it, which hold their loop, so
# the id cannot be reused while its entry lives.
_pollers = _weakref.WeakValueDictionary()


def poller_for(loop):
    """What watches an event loop's aiozc sockets for reading.

    On uvloop and any other loop: a Poller, the loop watching up to
    DIRECT_MAX sockets itself.  On the stdlib selector loop, a Poller that
    leaves every socket to the loop (it never makes its epoll): that loop
    reports errors until they are collected anyway, and there the poller's
    second epoll_wait() per wake-up costs more than the selector's Python
    work it saves (one connection, 512 B requests one at a time: 5-8% more
    CPU per request; 1,000 connections: no change measured).
    """
    poller = _pollers.get(id(loop))
    if poller is None:
        if quirks_of(loop).collect_errors_eagerly:
            poller = Poller(loop)
        else:
            poller = Poller(loop, PY_SSIZE_T_MAX)
        _pollers[id(loop)] = poller
    return poller
