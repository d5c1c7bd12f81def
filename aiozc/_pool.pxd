# The page pool of one connection (aiozc/_pool.pyx): the mapped window and
# its regions, the copy slabs, the gathered-frame buffers, and the exporter
# behind every view (Chunk).  Declared here so that the engine
# (aiozc/_engine.pyx) cimports them and reaches their fields and cdef
# methods as C, never through Python attributes.

cimport cython
from libc.stdint cimport uint64_t

# What a chunk's bytes belong to (Chunk.kind, and Pool.view()'s kind).
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


@cython.final
cdef class SlabStore:
    cdef size_t slab_size
    cdef char **free_slabs     # a stack: the most recently given back on top
    cdef size_t *free_faulted  # how much of each free slab is faulted in
    cdef long long *free_since # when each was given back (CLOCK_MONOTONIC_COARSE ns)
    cdef int ncold             # free_slabs[:ncold] hold no pages (oldest first)
    cdef int nfree
    cdef int cap
    cdef Py_ssize_t in_use     # slabs taken and not given back
    cdef Py_ssize_t demand     # the recent peak of in_use (decays)
    cdef long long demand_at   # when demand last decayed (CLOCK_MONOTONIC_COARSE ns)
    cdef long long trimmed_at  # when trim() last ran
    cdef Py_ssize_t mapped     # slabs mapped: in use and free
    cdef Py_ssize_t unmapped   # slabs given back to the OS, ever

    cdef char *take(self, size_t *faulted) noexcept
    cdef void give(self, char *slab, size_t faulted) noexcept
    cdef void trim(self) noexcept
    cdef void _decay(self, long long now) noexcept


@cython.final
cdef class Budget:
    cdef Py_ssize_t max_pinned
    cdef Py_ssize_t pinned
    cdef Py_ssize_t views
    cdef Py_ssize_t peak
    cdef unsigned long long exhausted
    cdef list starved          # pools that starved on this budget, to wake

    cdef void wake(self) noexcept


@cython.final
@cython.no_gc_clear
cdef class Pool:
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
    cdef SlabStore store       # where slabs come from and go back to
    cdef Budget budget         # the loop-wide bound (None: none)
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

    cdef int _grow_slabs(self, int cap) except -1
    cdef bint over_bound(self, size_t more) noexcept
    cdef void pin(self, Py_ssize_t n) noexcept
    cdef void unpin(self, Py_ssize_t n) noexcept
    cdef void give_slab(self, int idx) noexcept
    cdef void release_idle(self) noexcept
    cdef void settle(self) noexcept
    cdef int map_window(self, int fd) except -1
    cdef void release(self, int kind, int idx) noexcept
    cdef void _unmap(self) noexcept
    cdef void close(self) noexcept
    cdef void zap(self) noexcept
    cdef size_t region_room(self, size_t min_room) noexcept
    cdef size_t slab_room(self, size_t want, size_t min_room, bint prefault) noexcept
    cdef inline void touched(self, int idx) noexcept:
        # A receive wrote up to sused[idx]: those pages are resident now.
        if self.sused[idx] > self.sfaulted[idx]:
            self.sfaulted[idx] = self.sused[idx]
    cdef size_t _slab_room(self, size_t want, size_t min_room) noexcept
    cdef int hold_frame(self, size_t size) noexcept
    cdef void unhold_frame(self, int idx) noexcept
    cdef object view(self, int kind, int idx, char *ptr, Py_ssize_t size)


@cython.final
cdef class Chunk:
    cdef Pool pool
    cdef char *ptr
    cdef Py_ssize_t size
    cdef int kind
    cdef int index
    cdef int exports
