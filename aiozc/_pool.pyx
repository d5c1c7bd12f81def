# cython: language_level=3, freethreading_compatible=False
"""The page pool of one connection, and the exporter behind every view.

A :class:`Pool` owns a connection's mapped window (carved into regions),
its copy slabs and its gathered-frame buffers, and counts the memory views
pin.  A :class:`Chunk` exports one byte range of one of them as a read-only
buffer: every view the engine (``aiozc/_engine.pyx``) hands out is a
memoryview over a chunk.  :func:`join` makes one view of two adjacent ones,
and :func:`is_pool_view` tells such views from any other memory.

Memory safety, the one rule everything here serves
--------------------------------------------------
Touching a window address whose page is not mapped raises SIGBUS.  So a byte
range of the window is zapped (``madvise(MADV_DONTNEED)``) or unmapped only
when no exported buffer covers it.  Every view is a memoryview over a
``Chunk``; the chunk counts its buffer exports and, when the last one goes,
returns its region to the pool and forgets the pool, after which it refuses
to export again (``BufferError``).  A region is zapped only when its chunk
count is zero, and the pool (which owns the window and the copy slabs) is
freed only when the receiver and every unreleased chunk have let go of it.
"""

cimport cython
from cpython.buffer cimport (PyBUF_SIMPLE, PyBuffer_FillInfo, PyBuffer_Release,
                             PyObject_GetBuffer)
from cpython.memoryview cimport PyMemoryView_FromObject
from libc.errno cimport errno
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memmove, memset

from aiozc._kernel cimport (MADV_DONTNEED, MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE,
                            MAP_SHARED, PROT_READ, PROT_WRITE, aiozc_coarse_ns, madvise,
                            mmap, munmap)

from builtins import memoryview as _MemoryView

__all__ = ["Budget", "join", "is_pool_view", "slab_stores", "trim_slab_stores"]


# Copy slabs start SKEW bytes into their mapping, not at
# a page boundary.  recv() copies the kernel's pages (page-aligned, from a
# MSG_ZEROCOPY peer) into them, and a copy whose source and destination have
# the same offset within a page stalls on 4 KiB aliasing (loads that look
# like they depend on the stores just made): page-aligned slabs cost the
# engine 2 us more per 32 KiB RPC request with a MSG_ZEROCOPY peer (16.8 ->
# 19.3 us, benchmarks' floor, medians of 5), which malloc'd slabs (16 bytes
# in) never paid.  One cache line keeps the copies aligned for the CPU.
cdef enum:
    SKEW = 64
    PAGE_SIZE = 4096

# Gathered-frame buffers, though, start at their page's first byte
# (FRAME_SKEW 0).  A frame's rest is received straight after its head
# (Receiver.gather), at an offset that depends on where the head ended, and
# from a MSG_ZEROCOPY peer 1 MiB frames then cost 1.26x the best peer with
# the buffer 64 bytes in against 1.24x page-aligned for ZCProtocol, 1.62x
# against 1.22x for the no-loop floor, 1.59x against 1.21x for streams
# (benchmarks.ab, 6 rounds x 3 repeats, quiet; 256 KiB frames -3 to -14%,
# the RPC cell, which receives into slabs, unchanged within 1.5%).
cdef enum:
    FRAME_SKEW = 0


cdef char *_map_anonymous(size_t size) noexcept:
    """Fresh private memory for ``size`` bytes, at SKEW into its mapping
    (NULL if the kernel refuses); give it back with _unmap_anonymous.

    Copy slabs and frame buffers are mapped, not malloc'd: unmapping gives
    their pages back to the OS at once, where glibc would keep a freed
    block of this size for reuse (its mmap threshold rises to the size of
    the blocks freed, so 1 MiB blocks end up in the heap, and stay).
    """
    cdef void *addr = mmap(NULL, size + PAGE_SIZE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    return NULL if addr == MAP_FAILED else <char *>addr + SKEW


cdef char *_map_frame(size_t size) noexcept:
    """_map_anonymous for a gathered-frame buffer: FRAME_SKEW into its mapping."""
    cdef void *addr = mmap(NULL, size + PAGE_SIZE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    return NULL if addr == MAP_FAILED else <char *>addr + FRAME_SKEW


cdef void _unmap_frame(char *ptr, size_t size) noexcept:
    munmap(ptr - FRAME_SKEW, size + PAGE_SIZE)


cdef void _unmap_anonymous(char *ptr, size_t size) noexcept:
    munmap(ptr - SKEW, size + PAGE_SIZE)


cdef void _drop_pages(char *ptr, size_t used) noexcept:
    """MADV_DONTNEED the pages under the first ``used`` bytes at ``ptr``."""
    cdef size_t length = (used + SKEW + PAGE_SIZE - 1) & ~(<size_t>PAGE_SIZE - 1)
    madvise(ptr - SKEW, length, MADV_DONTNEED)


# -- copy slabs shared by every connection -------------------------------------
#
# A connection needs a copy slab only while it receives and while views over
# it are held: a drained connection whose views are released gives its slab
# back (Pool.release_idle), and one slab no view holds goes back at once.  So
# slabs follow the bytes in flight, not the connection count: a server with
# 10,000 idle connections holds none.  The store keeps the slabs given back
# for the next taker (already faulted in: a fresh slab costs its page faults
# and zeroing), but only as many as recent demand says will be taken again:
# demand is the peak of slabs in use, halved every DEMAND_HALF_LIFE_NS, and
# the store keeps demand minus the slabs in use, at least KEEP_FREE (so one
# connection that gives back and takes again at each event never maps or
# unmaps).  Anything beyond is unmapped.
#
# One store per slab size, for the process: connections on every loop and
# thread share it.  Its operations run with the GIL held (a slab is given
# back from a buffer release, in any thread), and never hold it across a
# system call other than munmap of a slab no one can reach.
cdef long long DEMAND_HALF_LIFE_NS = 1000000000
# A free slab not taken again within this long keeps its address range but
# gives its pages back (MADV_DONTNEED): connections that come back soon (a
# server's rotation through its clients) find it resident, and a server that
# went quiet holds no slab pages a moment later.
cdef long long COLD_AFTER_NS = 200000000
cdef enum:
    KEEP_FREE = 2


@cython.final
cdef class SlabStore:
    """The free copy slabs of one size, shared by the process's connections."""

    def __cinit__(self, size_t slab_size):
        self.slab_size = slab_size
        self.demand_at = aiozc_coarse_ns()

    def __dealloc__(self):
        cdef int i
        for i in range(self.nfree):
            _unmap_anonymous(self.free_slabs[i], self.slab_size)
        free(self.free_slabs)
        free(self.free_faulted)
        free(self.free_since)

    cdef void _decay(self, long long now) noexcept:
        while now - self.demand_at >= DEMAND_HALF_LIFE_NS:
            self.demand = max(self.in_use, self.demand // 2)
            self.demand_at += DEMAND_HALF_LIFE_NS
            if self.demand == self.in_use:
                self.demand_at = now
                break

    cdef char *take(self, size_t *faulted) noexcept:
        """A slab (and how much of it is faulted in); NULL if none could be mapped."""
        cdef char *slab
        if self.nfree:
            self.nfree -= 1
            slab = self.free_slabs[self.nfree]
            faulted[0] = self.free_faulted[self.nfree]
            if self.ncold > self.nfree:
                self.ncold = self.nfree
        else:
            slab = _map_anonymous(self.slab_size)
            if slab == NULL:
                return NULL
            faulted[0] = 0
            self.mapped += 1
        self.in_use += 1
        if self.in_use > self.demand:
            self.demand = self.in_use
        return slab

    cdef void trim(self) noexcept:
        """Unmap the free slabs beyond what recent demand says will be taken
        again, and drop the pages of those free for longer than COLD_AFTER_NS
        (the longest-unused first: the stack's bottom)."""
        cdef int k, i
        cdef long long now = aiozc_coarse_ns()
        self.trimmed_at = now
        self._decay(now)
        k = self.nfree - <int>max(<Py_ssize_t>KEEP_FREE, self.demand - self.in_use)
        if k > 0:
            for i in range(k):
                _unmap_anonymous(self.free_slabs[i], self.slab_size)
            memmove(self.free_slabs, self.free_slabs + k, (self.nfree - k) * sizeof(char *))
            memmove(self.free_faulted, self.free_faulted + k, (self.nfree - k) * sizeof(size_t))
            memmove(self.free_since, self.free_since + k, (self.nfree - k) * sizeof(long long))
            self.nfree -= k
            self.ncold = max(0, self.ncold - k)
            self.mapped -= k
            self.unmapped += k
        while self.ncold < self.nfree and self.free_since[self.ncold] <= now - COLD_AFTER_NS:
            if self.free_faulted[self.ncold]:
                _drop_pages(self.free_slabs[self.ncold], self.free_faulted[self.ncold])
                self.free_faulted[self.ncold] = 0
            self.ncold += 1

    cdef void give(self, char *slab, size_t faulted) noexcept:
        cdef char **slabs
        cdef size_t *sizes
        cdef long long *since
        cdef long long now = aiozc_coarse_ns()
        cdef int cap
        self.in_use -= 1
        if self.nfree == self.cap:
            cap = 2 * self.cap if self.cap else 16
            slabs = <char **>realloc(self.free_slabs, cap * sizeof(char *))
            if slabs != NULL:
                self.free_slabs = slabs
            sizes = <size_t *>realloc(self.free_faulted, cap * sizeof(size_t))
            if sizes != NULL:
                self.free_faulted = sizes
            since = <long long *>realloc(self.free_since, cap * sizeof(long long))
            if since != NULL:
                self.free_since = since
            if slabs == NULL or sizes == NULL or since == NULL:
                _unmap_anonymous(slab, self.slab_size)
                self.mapped -= 1
                self.unmapped += 1
                return
            self.cap = cap
        self.free_slabs[self.nfree] = slab
        self.free_faulted[self.nfree] = faulted
        self.free_since[self.nfree] = now
        self.nfree += 1
        # give() runs after every pump whose slab no view holds (Pool.settle):
        # trim only when there is something to unmap, or cold pages may be
        # due (at most every COLD_AFTER_NS / 4); otherwise this is a push.
        if (self.nfree > KEEP_FREE and self.nfree > self.demand - self.in_use) \
                or now - self.trimmed_at >= COLD_AFTER_NS // 4:
            self.trim()


cdef dict _stores = {}

cdef SlabStore _store_for(size_t slab_size):
    store = _stores.get(slab_size)
    if store is None:
        store = _stores[slab_size] = SlabStore(slab_size)
    return <SlabStore>store


def trim_slab_stores():
    """Give back to the OS the free slabs recent demand does not call for.

    Demand decays with time, so a process that went quiet keeps fewer and
    fewer; returns True while some store still has slabs in use (their
    release will want a trim) or holds more than its floor: call again later.
    """
    cdef SlabStore store
    more = False
    for obj in _stores.values():
        store = <SlabStore>obj
        store.trim()
        if store.in_use or store.nfree > KEEP_FREE or store.ncold < store.nfree:
            more = True
    return more


def slab_stores():
    """The shared copy-slab stores: ``{slab_size: (in_use, free, mapped, unmapped)}``."""
    cdef SlabStore store
    out = {}
    for size, obj in _stores.items():
        store = <SlabStore>obj
        out[size] = (store.in_use, store.nfree, store.mapped, store.unmapped)
    return out


# -- the loop-wide bound ----------------------------------------------------------
#
# Every connection bounds the memory its views pin (max_pinned_bytes); a
# Budget bounds the sum over the connections that share it (one per event
# loop: aiozc.set_memory_limit).  Past it, a connection that needs more
# memory does what its own bound would make it do (on_exhausted: copy into
# heap buffers of exactly the bytes received, or pause), and nothing is
# lost.  A connection paused on the budget waits for a release anywhere in
# the loop, so the budget keeps the starved pools and wakes them all on any
# release; each then tries again.

@cython.final
cdef class Budget:
    """The memory views may pin across the connections of one event loop."""

    def __cinit__(self, Py_ssize_t max_pinned):
        if max_pinned < 0:
            raise ValueError("max_pinned_bytes must not be negative")
        self.max_pinned = max_pinned
        self.starved = []

    @property
    def max_pinned_bytes(self):
        """The bound, in bytes."""
        return self.max_pinned

    @max_pinned_bytes.setter
    def max_pinned_bytes(self, Py_ssize_t value):
        if value < 0:
            raise ValueError("max_pinned_bytes must not be negative")
        self.max_pinned = value
        self.wake()

    @property
    def bytes_pinned(self):
        """Bytes pinned by views now, over every connection."""
        return self.pinned

    @property
    def peak_bytes_pinned(self):
        """The most ever pinned at once."""
        return self.peak

    @property
    def views_outstanding(self):
        """Views handed out and not yet released, over every connection."""
        return self.views

    @property
    def exhausted_receives(self):
        """Receives that found the bound reached (and copied, or paused)."""
        return self.exhausted

    cdef void wake(self) noexcept:
        cdef Pool pool
        if not self.starved:
            return
        waiting, self.starved = self.starved, []
        for obj in waiting:
            pool = <Pool>obj
            if pool.starved and pool.on_release is not None:
                pool.starved = False
                pool.on_release()


# Region states.
cdef enum:
    R_CLEAN = 0      # nothing mapped: may become current (TLB-clean hint ok)
    R_CURRENT = 1    # being filled by receives, bump by bump
    R_RETIRED = 2    # full; waits for the views over it to be released
    R_DIRTY = 3      # released, pages still mapped: waits for a batched zap

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


# Chunk and Pool are declared (final, with their fields and cdef methods) in
# _pool.pxd, which the engine cimports.
#
# Every view has a Chunk behind it, and every Chunk would be one more object
# for the garbage collector to track: a stream reader keeps the views it has
# not cut yet (three tracked objects each: the memoryview, its managed
# buffer and the Chunk) across loop iterations, and those allocations are
# what starts generation-0 collections (a streams RPC server with 1,000
# connections made 3x asyncio streams' collections: 1.9 us of CPU per
# request against 1.1).  A Chunk cannot be part of a reference cycle: it
# refers only to its Pool, and a Pool to no Python object that can lead back
# to a view (its on_release callbacks hold their owners weakly: the
# transport's and the anyio stream's; its budget and slab store hold pools
# and memory).  So the collector need not track it, and does not.
@cython.freelist(64)
@cython.no_gc
cdef class Chunk:
    """The exporter behind one view: a byte range of a region or a slab."""

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


@cython.no_gc_clear  # __dealloc__ gives slabs back to the store it refers to
cdef class Pool:
    """Owns the mapped window and the copy slabs, and their accounting."""

    def __cinit__(self, size_t window_size, size_t region_size,
                  size_t slab_size, Py_ssize_t max_pinned, Budget budget=None):
        self.window = NULL
        self.window_size = window_size
        self.region_size = region_size
        self.nregions = <int>(window_size // region_size)
        self.cur_region = -1
        self.cur_slab = -1
        self.slab_size = slab_size
        self.store = _store_for(slab_size)
        self.budget = budget
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
                    if self.store is not None:
                        self.give_slab(i)
                    else:
                        _unmap_anonymous(self.slabs[i], self.slab_size)
        for i in range(MAX_FRAMES):
            if self.fbufs[i] != NULL:
                _unmap_frame(self.fbufs[i], self.fcap[i])
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

    cdef bint over_bound(self, size_t more) noexcept:
        """True if pinning ``more`` bytes would pass max_pinned_bytes, or the
        loop-wide budget.

        A connection whose views pin nothing may always receive within its
        own bound (else a bound below one buffer would stop it for good);
        the loop's budget has no such exception.  Unsigned, so that a bound
        near sys.maxsize cannot overflow the sum.
        """
        cdef Budget budget = self.budget
        if self.pinned != 0 and <size_t>self.pinned + more > <size_t>self.max_pinned:
            return True
        if budget is not None and <size_t>budget.pinned + more > <size_t>budget.max_pinned:
            budget.exhausted += 1
            return True
        return False

    cdef void pin(self, Py_ssize_t n) noexcept:
        cdef Budget budget = self.budget
        self.pinned += n
        if budget is not None:
            budget.pinned += n
            if budget.pinned > budget.peak:
                budget.peak = budget.pinned

    cdef void unpin(self, Py_ssize_t n) noexcept:
        cdef Budget budget = self.budget
        self.pinned -= n
        if budget is not None:
            budget.pinned -= n
            if budget.starved:
                budget.wake()

    cdef void give_slab(self, int idx) noexcept:
        """Hand slab ``idx`` (no view over it) back to the shared store."""
        self.store.give(self.slabs[idx], self.sfaulted[idx])
        self.slabs[idx] = NULL
        self.sused[idx] = 0
        self.sfaulted[idx] = 0
        if idx == self.cur_slab:
            self.cur_slab = -1

    cdef void settle(self) noexcept:
        """After a pump: the current slab goes back to the store if no view holds it."""
        cdef int cur = self.cur_slab
        if cur >= 0 and self.srefs[cur] == 0:
            self.give_slab(cur)

    # A connection that has drained its socket, and whose views are all
    # released, should hold nothing: its memory follows the bytes in flight.
    # The driver calls this once the connection has been idle for a moment
    # (the asyncio transport batches it across connections; see _transport):
    # the current slab goes back to the store, the current region retires,
    # every released region is zapped now rather than at the next receive
    # (which still finds clean regions, so it passes the TLB-clean hint),
    # and idle frame buffers are unmapped.  Anything a view holds stays, and
    # goes when the view does.
    cdef void release_idle(self) noexcept:
        cdef int cur = self.cur_slab
        cdef int i
        if cur >= 0 and self.srefs[cur] == 0:
            self.give_slab(cur)
        cur = self.cur_region
        if self.window != NULL and cur >= 0 and self.rrefs[cur] == 0:
            self.cur_region = -1
            if self.rused[cur]:
                self.rstate[cur] = R_DIRTY
                self.ndirty += 1
            else:
                self.rstate[cur] = R_CLEAN
                self.clean_stack[self.nclean] = cur
                self.nclean += 1
        if self.ndirty:
            self.zap()
        for i in range(MAX_FRAMES):
            if self.fbufs[i] != NULL and self.frefs[i] == 0:
                _unmap_frame(self.fbufs[i], self.fcap[i])
                self.fbufs[i] = NULL

    cdef int map_window(self, int fd) except -1:
        """mmap the window over socket ``fd``: 0, or the errno of a failed mmap().

        A failed mmap() is a result, not an exception: the errno (always
        positive) tells the caller why to copy instead.  The only exception
        is MemoryError, when the region arrays cannot be allocated (the
        window is then unmapped again); -1 is its return value, hence
        ``except -1``.
        """
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
        if self.budget is not None:
            self.budget.views -= 1
        if kind == KIND_REGION:
            self.rrefs[idx] -= 1
            if self.rrefs[idx] == 0:
                self.unpin(self.region_size)
                if self.rstate[idx] == R_RETIRED:
                    self.rstate[idx] = R_DIRTY
                    self.ndirty += 1
        elif kind == KIND_SLAB:
            self.srefs[idx] -= 1
            if self.srefs[idx] == 0:
                self.unpin(self.slab_size)
                if idx != self.cur_slab or self.closed:
                    # A slab no view holds, and not being received into:
                    # back to the store for whichever connection needs one.
                    self.give_slab(idx)
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
                self.give_slab(i)
        for i in range(MAX_FRAMES):
            if self.fbufs[i] != NULL and self.frefs[i] == 0:
                _unmap_frame(self.fbufs[i], self.fcap[i])
                self.fbufs[i] = NULL
        if self.budget is not None and self in self.budget.starved:
            self.budget.starved.remove(self)
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
                if self.rrefs[cur] == 0 and self.over_bound(self.region_size):
                    return 0  # its next view would pin it again, past a bound
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

    cdef size_t slab_room(self, size_t want, size_t min_room, bint prefault) noexcept:
        """Bytes free in the current slab (switching if needed); 0 if none.

        With ``prefault``, the bytes returned are faulted in first.
        """
        cdef size_t room = self._slab_room(want, min_room)
        cdef int cur = self.cur_slab
        cdef size_t end
        # Only for a round the 'auto' probe times: otherwise the recv()
        # faults in what it writes, and no more (prefaulting the whole room,
        # a 256 KiB receive, for a 32 KiB message cost 64 faults and a
        # zeroing pass per message on connections that take a fresh slab
        # for each: 2.5x asyncio's CPU per MB with 1,000 connections).
        if room and prefault:
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
                # in data_received, every recv lands in the same bytes.  Its
                # next view pins it again: within the bounds, like a new one.
                if self.over_bound(self.slab_size):
                    return 0
                self.sused[cur] = 0
            room = self.slab_size - self.sused[cur]
            if room >= min_room:
                return room if room < want else want
        # A slab from the shared store, within the pinned bounds (it will
        # be pinned by the view made over it), except that a connection
        # whose views pin nothing may always receive within its own bound.
        # The slot table holds the slabs this connection's views still pin;
        # a slot whose slab went back to the store is reused.
        if self.over_bound(self.slab_size):
            return 0
        for i in range(self.nslabs):
            if self.slabs[i] == NULL:
                break
        else:
            if self.nslabs >= self.max_slabs:
                return 0
            if self.nslabs == self.slab_cap:
                try:
                    self._grow_slabs(<int>min(self.max_slabs, 2 * <Py_ssize_t>self.slab_cap))
                except MemoryError:
                    return 0
            i = self.nslabs
        self.slabs[i] = self.store.take(&self.sfaulted[i])
        if self.slabs[i] == NULL:
            return 0
        if i == self.nslabs:
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
                _unmap_frame(self.fbufs[empty], self.fcap[empty])
                self.fbufs[empty] = NULL
            self.fbufs[empty] = _map_frame(cap)
            if self.fbufs[empty] == NULL:
                return -1
            # Fault it in now, once: the buffer is reused frame after frame.
            memset(self.fbufs[empty], 0, cap)
            self.fcap[empty] = cap
            best = empty
        elif self.over_bound(self.fcap[best]):
            return -1
        self.frefs[best] = 1
        self.pin(self.fcap[best])
        return best

    cdef void unhold_frame(self, int idx) noexcept:
        self.frefs[idx] -= 1
        if self.frefs[idx] == 0:
            self.unpin(self.fcap[idx])
            if self.closed:
                _unmap_frame(self.fbufs[idx], self.fcap[idx])
                self.fbufs[idx] = NULL

    # -- views ---------------------------------------------------------------

    cdef object view(self, int kind, int idx, char *ptr, Py_ssize_t size):
        cdef Chunk chunk = Chunk.__new__(Chunk)
        chunk.pool = self
        chunk.ptr = ptr
        chunk.size = size
        chunk.kind = kind
        chunk.index = idx
        self.views += 1
        if self.budget is not None:
            self.budget.views += 1
        if kind == KIND_REGION:
            if self.rrefs[idx] == 0:
                self.pin(self.region_size)
            self.rrefs[idx] += 1
        elif kind == KIND_SLAB:
            if self.srefs[idx] == 0:
                self.pin(self.slab_size)
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
    cdef Chunk ca, cb
    cdef Py_buffer ba, bb
    cdef char *start
    cdef Py_ssize_t total
    cdef bint adjacent
    if type(a) is not _MemoryView or type(b) is not _MemoryView:
        return None
    oa = a.obj
    ob = b.obj
    if type(oa) is not Chunk or type(ob) is not Chunk:
        return None
    ca = <Chunk>oa
    cb = <Chunk>ob
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


def is_pool_view(view):
    """True if ``view`` is a memoryview exported by an aiozc :class:`Chunk`.

    Such a view (or a slice of it) is memory aiozc handed out: read-only,
    and never written while a view over it is alive (docs/kernel.md, "The
    SIGBUS hazard"; docs/design.md "Memory safety").  False for anything
    else, and for a released view.
    """
    if type(view) is not _MemoryView:
        return False
    try:
        obj = view.obj
    except ValueError:  # released
        return False
    return type(obj) is Chunk
