# The choice between mapping and copying (aiozc/_policy.pyx), declared here
# so that the engine (aiozc/_engine.pyx) reads the mode as a C field and
# reports its samples through cdef methods.

cimport cython
from libc.stdint cimport int64_t, uint64_t

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

cdef enum:
    MAX_PROBING = 2           # connections of a loop probing at once (see _policy.pyx)


@cython.final
cdef class ProbeHistory:
    cdef int streak           # probes in a row that found mapping no cheaper
    cdef uint64_t decisions   # probes due while the streak stood
    cdef uint64_t skipped     # of those, not run
    cdef int probing          # slots held now
    cdef bint held[MAX_PROBING]
    cdef unsigned int gen[MAX_PROBING]    # bumped when a slot is taken from its holder
    cdef long long seen[MAX_PROBING]      # its holder's last probe round (coarse ns)

    cdef int take_slot(self, unsigned int *gen) noexcept
    cdef void give_slot(self, int slot, unsigned int gen) noexcept

    cdef bint skip_probe(self) noexcept
    cdef void copy_won(self) noexcept
    cdef void map_won(self) noexcept


@cython.final
@cython.no_gc_clear
cdef class Policy:
    # what the engine reads on every round
    cdef int kind             # POLICY_*: ZCConfig.zerocopy, NEVER once copying for good
    cdef int mode             # MODE_*: how the next round receives
    cdef int phase            # PH_*: probing ('auto' only) or steady
    cdef object reason        # why the connection copies, or None
    cdef uint64_t mode_switches
    # configuration
    cdef uint64_t probe_bytes
    cdef uint64_t reprobe_bytes
    cdef double min_mapped_fraction
    # 'auto': the probe and the steady state
    cdef int settled_mode
    cdef int zc_wins
    cdef uint64_t zc_bytes
    cdef uint64_t zc_mapped
    cdef int64_t zc_ns
    cdef uint64_t copy_bytes
    cdef int64_t copy_ns
    cdef uint64_t slice_bytes
    cdef uint64_t assembled   # bytes the reader copied to join mapped views
    cdef int64_t until_reprobe
    cdef ProbeHistory history  # shared by the connections of a loop, or None
    cdef int slot              # the history's probing slot it holds, or -1
    cdef unsigned int slot_gen # that slot's generation when taken
    cdef bint probe_paused     # a probe whose slot was taken halfway, to go on later
    cdef int paused_mode       # the mode its slice was in

    cdef void probe_sample(self, uint64_t mapped, uint64_t got, int64_t ns) noexcept
    cdef void steady_sample(self, uint64_t mapped, uint64_t got) noexcept
    cdef void note_assembled(self, uint64_t nbytes) noexcept
    cdef void settle(self, int mode, object reason) noexcept
    cdef void reset_probe(self) noexcept
    cdef void start_probe(self) noexcept
    cdef bint keep_slot(self) noexcept
    cdef void wait_for_slot(self) noexcept
    cdef void release_slot(self) noexcept
    cdef void copy_for_good(self, int err, str what)
