# The kernel interface aiozc needs, declared once: the TCP_ZEROCOPY_RECEIVE
# argument block, and the handful of libc calls around it.  See
# docs/kernel.md ("struct tcp_zerocopy_receive", "What one call does", and
# "Kernel versions" for which kernel has which field) and the kernel's
# net/ipv4/tcp.c for what each field does.

from libc.stdint cimport int32_t, uint32_t, uint64_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <errno.h>
    #include <time.h>
    #include <sys/ioctl.h>
    #include <sys/mman.h>
    #include <sys/socket.h>
    #include <sys/epoll.h>
    #include <netinet/in.h>

    /* Spelled out here rather than taken from <linux/tcp.h>, which clashes
       with glibc's <netinet/tcp.h> and, on older headers, lacks the fields
       added in 5.11 (copybuf) and 5.14 (msg_control).  The layout is ABI. */
    struct aiozc_zc_receive {
        uint64_t address;          /* in: page-aligned address in the window */
        uint32_t length;           /* in/out: bytes to map / mapped */
        uint32_t recv_skip_hint;   /* out: bytes to read by copy next */
        uint32_t inq;              /* out: bytes still queued */
        int32_t  err;              /* out: pending socket error */
        uint64_t copybuf_address;  /* in: hybrid copy buffer */
        int32_t  copybuf_len;      /* in/out: its size / bytes copied */
        uint32_t flags;            /* in: TLB-clean hint */
        uint64_t msg_control;
        uint64_t msg_controllen;
        uint32_t msg_flags;
        uint32_t reserved;         /* must be zero */
    };
    _Static_assert(sizeof(struct aiozc_zc_receive) == 64,
                   "struct tcp_zerocopy_receive is 64 bytes");

    #define AIOZC_TCP_ZEROCOPY_RECEIVE 35
    #define AIOZC_ZC_FLAG_TLB_CLEAN_HINT 0x1

    /* Read one byte per cache line of [p, p+n): what the application's
       first read of freshly mapped pages costs (TLB fills and cache misses),
       made visible to the probe's clock.  volatile keeps the loads. */
    static inline unsigned aiozc_touch(const char *p, size_t n) {
        const volatile char *q = (const volatile char *)p;
        unsigned acc = 0;
        for (size_t i = 0; i < n; i += 64) acc += (unsigned char)q[i];
        return acc;
    }

    /* connect() to an AF_UNSPEC address: the kernel's tcp_disconnect(),
       which resets an established connection (RST) and drops both queues,
       as close() of a socket with unread bytes does.  The one way to reset
       a socket whose file something else (a mapping) keeps open. */
    static inline int aiozc_disconnect(int fd) {
        struct sockaddr sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_family = AF_UNSPEC;
        return connect(fd, &sa, sizeof sa);
    }

    static inline int64_t aiozc_thread_cpu_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }

    /* For decisions on a scale of 0.1 s and more (the slab stores' decay,
       a probing slot gone stale): the coarse clock (a few ms of
       resolution) is read from the vDSO without the TSC read and scaling. */
    static inline int64_t aiozc_coarse_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
    }
    """
    struct aiozc_zc_receive:
        uint64_t address
        uint32_t length
        uint32_t recv_skip_hint
        uint32_t inq
        int32_t err
        uint64_t copybuf_address
        int32_t copybuf_len
        uint32_t flags
        uint64_t msg_control
        uint64_t msg_controllen
        uint32_t msg_flags
        uint32_t reserved

    int AIOZC_TCP_ZEROCOPY_RECEIVE
    int AIOZC_ZC_FLAG_TLB_CLEAN_HINT
    long long aiozc_thread_cpu_ns() nogil
    long long aiozc_coarse_ns() nogil
    int aiozc_disconnect(int fd) nogil
    unsigned aiozc_touch(const char *p, size_t n) nogil

    ctypedef unsigned int socklen_t
    int IPPROTO_TCP
    int SOL_SOCKET
    int SO_ERROR
    int getsockopt(int fd, int level, int name, void *val, socklen_t *len) nogil
    int shutdown(int fd, int how) nogil
    int SHUT_RDWR
    ssize_t recv(int fd, void *buf, size_t n, int flags) nogil
    unsigned long FIONREAD
    int ioctl(int fd, unsigned long request, ...) nogil

    int PROT_READ
    int PROT_WRITE
    int MAP_SHARED
    int MAP_PRIVATE
    int MAP_ANONYMOUS
    void *MAP_FAILED
    int MADV_DONTNEED
    void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off) nogil
    int munmap(void *addr, size_t len) nogil
    int madvise(void *addr, size_t len, int advice) nogil

    # The readiness of every aiozc socket of a loop (_poller.pyx).
    union epoll_data_t "epoll_data":
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int EPOLLIN
    int EPOLL_CLOEXEC
    int EPOLL_CTL_ADD
    int EPOLL_CTL_DEL
    int epoll_create1(int flags) nogil
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event) nogil
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout) nogil
    int close(int fd) nogil
