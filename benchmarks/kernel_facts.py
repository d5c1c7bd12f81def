"""Check, on this machine, the kernel facts aiozc is built on (docs/kernel.md).

    python -m benchmarks.kernel_facts

Each check sets up the situation over 127.0.0.1, calls the kernel directly
(``ctypes``: ``mmap``, ``getsockopt(TCP_ZEROCOPY_RECEIVE)``, ``madvise``),
and prints what the kernel did, so docs/kernel.md can say "measured here"
and anyone can see whether their kernel agrees.  Nothing here times
anything; the costs are in docs/tuning.md (``python -m benchmarks.tune``).
Peers that must send mappable pages use :class:`aiozc.testing.ZeroCopySender`.
The SIGBUS check runs in a child process (it is killed, as intended).
The locked-memory check needs root (it drops to ``nobody`` in a child).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import platform
import resource
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from aiozc._errqueue import MSG_ZEROCOPY, SO_ZEROCOPY, drain_completions
from aiozc.testing import ZeroCopySender

PAGE = os.sysconf("SC_PAGESIZE")
KiB, MiB = 1 << 10, 1 << 20
TCP_ZEROCOPY_RECEIVE = 35
TLB_CLEAN_HINT = 0x1
PROT_READ, PROT_WRITE, MAP_SHARED = 0x1, 0x2, 0x01
MADV_DONTNEED = 4

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.getsockopt.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                            ctypes.POINTER(ctypes.c_uint32)]
MAP_FAILED = ctypes.c_void_p(-1).value


class ZcReceive(ctypes.Structure):
    """``struct tcp_zerocopy_receive`` (include/uapi/linux/tcp.h)."""

    _fields_ = [
        ("address", ctypes.c_uint64), ("length", ctypes.c_uint32),
        ("recv_skip_hint", ctypes.c_uint32), ("inq", ctypes.c_uint32),
        ("err", ctypes.c_int32), ("copybuf_address", ctypes.c_uint64),
        ("copybuf_len", ctypes.c_int32), ("flags", ctypes.c_uint32),
        ("msg_control", ctypes.c_uint64), ("msg_controllen", ctypes.c_uint64),
        ("msg_flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32),
    ]


def zc_call(sock: socket.socket, address: int, length: int, copybuf: ctypes.Array[ctypes.c_char]
            | None = None, flags: int = 0, reserved: int = 0,
            optlen: int = 64) -> tuple[int, ZcReceive, int]:
    """One TCP_ZEROCOPY_RECEIVE: (errno or 0, the struct after, optlen after)."""
    block = (ctypes.c_char * max(optlen, 64))()
    zc = ZcReceive.from_buffer(block)
    zc.address, zc.length, zc.flags, zc.reserved = address, length, flags, reserved
    if copybuf is not None:
        zc.copybuf_address = ctypes.addressof(copybuf)
        zc.copybuf_len = len(copybuf)
    if optlen > 64:
        block[64] = b"\x01"  # a non-zero byte past the struct
    n = ctypes.c_uint32(optlen)
    rc = libc.getsockopt(sock.fileno(), socket.IPPROTO_TCP, TCP_ZEROCOPY_RECEIVE,
                         ctypes.addressof(block), ctypes.byref(n))
    err = ctypes.get_errno() if rc else 0
    return err, ZcReceive.from_buffer_copy(bytes(block)[:64]), n.value


def window(sock: socket.socket, size: int, prot: int = PROT_READ) -> tuple[int, int]:
    """mmap() ``size`` bytes of ``sock``: (address or 0, errno)."""
    addr = libc.mmap(None, size, prot, MAP_SHARED, sock.fileno(), 0)
    if addr == MAP_FAILED or addr is None:
        return 0, ctypes.get_errno()
    return int(addr), 0


def queued(sock: socket.socket) -> int:
    """Bytes in the receive queue (SIOCINQ)."""
    buf = bytearray(4)
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


def wait_queued(sock: socket.socket, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while queued(sock) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {queued(sock)} of {n} bytes arrived")
        time.sleep(0.001)


@contextmanager
def pair(rcvbuf: int = 0) -> Iterator[tuple[socket.socket, socket.socket]]:
    """(receiver, sender), connected over 127.0.0.1."""
    ls = socket.socket()
    if rcvbuf:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    tx = socket.create_connection(ls.getsockname())
    rx, _ = ls.accept()
    ls.close()
    try:
        yield rx, tx
    finally:
        rx.close()
        tx.close()


def send_zc(tx: socket.socket, data: bytes) -> ZeroCopySender:
    sender = ZeroCopySender(tx)
    sender.send(data)
    return sender


REPORT: list[str] = []


def name(err: int) -> str:
    """errno's symbolic name (EOPNOTSUPP rather than its alias ENOTSUP)."""
    if err == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return errno.errorcode.get(err, str(err))


def fact(name: str, observed: str) -> None:
    line = f"- **{name}**: {observed}"
    REPORT.append(line)
    print(line, flush=True)


# -- the checks ---------------------------------------------------------------


def check_struct() -> None:
    fields = ", ".join(f"{name} @{getattr(ZcReceive, name).offset}"
                       for name, _ in ZcReceive._fields_)
    with pair() as (rx, tx):
        addr, _ = window(rx, 64 * KiB)
        tx.sendall(b"x" * 100)
        wait_queued(rx, 100)
        cb = ctypes.create_string_buffer(16 * KiB)
        err, zc, n = zc_call(rx, addr, 64 * KiB, cb)
        err72, _, _ = zc_call(rx, addr, 64 * KiB, cb, optlen=72)
        err_res, _, _ = zc_call(rx, addr, 64 * KiB, cb, reserved=1)
        err_unaligned, _, _ = zc_call(rx, addr + 8, 64 * KiB, cb)
        libc.munmap(addr, 64 * KiB)
    fact("struct tcp_zerocopy_receive", f"{ctypes.sizeof(ZcReceive)} bytes: {fields}")
    fact("optlen 64", f"accepted (errno {err}), optlen after the call {n}")
    fact("optlen 72, non-zero byte past the struct", name(err72))
    fact("reserved = 1", name(err_res))
    fact("address not page-aligned", name(err_unaligned))


def check_mmap() -> None:
    with pair() as (rx, _):
        addr, err = window(rx, 64 * KiB, PROT_READ | PROT_WRITE)
        ro, err_ro = window(rx, 64 * KiB)
        libc.munmap(ro, 64 * KiB)
        maps_before = _vmas()
        big, _ = window(rx, 16 * MiB)
        maps_after = _vmas()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    uaddr, uerr = window(udp, 64 * KiB)
    udp.close()
    fact("mmap(PROT_READ|PROT_WRITE) of a TCP socket",
         f"{'refused, ' + name(err) if not addr else 'ALLOWED'}; "
         f"PROT_READ: {'allowed' if ro else name(err_ro)}")
    fact("mmap() of a UDP socket", name(uerr) if not uaddr else "allowed")
    fact("a 16 MiB window", f"adds {maps_after - maps_before} mapping(s) to /proc/self/maps")
    libc.munmap(big, 16 * MiB)


def _vmas() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def check_small_queue() -> None:
    with pair() as (rx, tx):
        addr, _ = window(rx, 256 * KiB)
        cb = ctypes.create_string_buffer(16 * KiB)
        tx.sendall(b"a" * 1000)
        wait_queued(rx, 1000)
        err, zc, _ = zc_call(rx, addr, 256 * KiB, cb)
        fact("1000 bytes queued, 16 KiB copy buffer",
             f"errno {err}, length {zc.length}, copybuf_len {zc.copybuf_len}, "
             f"recv_skip_hint {zc.recv_skip_hint}, inq {zc.inq}")
        tx.sendall(b"b" * 1000)
        wait_queued(rx, 1000)
        err, zc, _ = zc_call(rx, addr, 256 * KiB)
        fact("1000 bytes queued, no copy buffer",
             f"errno {err}, length {zc.length}, recv_skip_hint {zc.recv_skip_hint}, inq {zc.inq}")
        rx.recv(1000)
        err, zc, _ = zc_call(rx, addr, 256 * KiB)
        fact("nothing queued", f"errno {err}, length {zc.length}, recv_skip_hint "
             f"{zc.recv_skip_hint}, inq {zc.inq} (no EAGAIN)")
        tx.sendall(b"c" * 1000)
        tx.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        err, zc, _ = zc_call(rx, addr, 256 * KiB, cb)
        err2, _, _ = zc_call(rx, addr, 256 * KiB, cb)
        fact("1000 bytes then FIN", f"first call: copybuf_len {zc.copybuf_len}, inq {zc.inq}; "
             f"next call: {name(err2)}")
        libc.munmap(addr, 256 * KiB)
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    err, _, _ = zc_call(ls, 0, 0)
    ls.close()
    fact("a listening socket", name(err))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    err, _, _ = zc_call(udp, 0, 0)
    udp.close()
    unix_a, unix_b = socket.socketpair()
    err_unix, _, _ = zc_call(unix_a, 0, 0)
    try:
        unix_a.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        so_zc_unix = "accepted"
    except OSError as exc:
        so_zc_unix = name(exc.errno or 0)
    unix_a.close()
    unix_b.close()
    fact("TCP_ZEROCOPY_RECEIVE on a UDP socket / an AF_UNIX socket",
         f"{name(err)} / {name(err_unix)}")
    fact("SO_ZEROCOPY on an AF_UNIX socket", so_zc_unix)


def _receive_all(rx: socket.socket, addr: int, size: int, total: int,
                 on_call: Callable[[ZcReceive], None] | None = None) -> tuple[int, int, int]:
    """Receive ``total`` bytes by TCP_ZEROCOPY_RECEIVE: (mapped, copied, calls)."""
    cb = ctypes.create_string_buffer(16 * KiB)
    buf = bytearray(size)
    mapped = copied = calls = 0
    while mapped + copied < total:
        err, zc, _ = zc_call(rx, addr, size, cb, flags=TLB_CLEAN_HINT)
        calls += 1
        if err:
            raise OSError(err, os.strerror(err))
        if on_call:
            on_call(zc)
        if zc.length:
            libc.madvise(addr, zc.length, MADV_DONTNEED)
        mapped += zc.length
        copied += max(zc.copybuf_len, 0)
        if zc.recv_skip_hint:
            copied += rx.recv_into(buf, min(zc.recv_skip_hint, size))
        elif not zc.length and zc.copybuf_len <= 0:
            time.sleep(0.0005)
    return mapped, copied, calls


def check_what_maps() -> None:
    total = 8 * MiB
    for kind in ("plain send()", "MSG_ZEROCOPY"):
        lengths: list[int] = []
        copies: list[int] = []
        with pair() as (rx, tx):
            addr, _ = window(rx, 256 * KiB)
            data = os.urandom(total)
            if kind == "MSG_ZEROCOPY":
                t = threading.Thread(target=lambda: send_zc(tx, data).flush())
            else:
                t = threading.Thread(target=tx.sendall, args=(data,))
            t.start()
            mapped, copied, calls = _receive_all(
                rx, addr, 256 * KiB, total,
                lambda zc: (lengths.append(zc.length) if zc.length else None,
                            copies.append(zc.copybuf_len) if zc.length else None))
            t.join()
            libc.munmap(addr, 256 * KiB)
        typical = sorted(lengths)[len(lengths) // 2] if lengths else 0
        straggler = sorted(copies)[len(copies) // 2] if copies else 0
        detail = (f"in the calls that mapped, median {typical / KiB:.0f} KiB mapped and "
                  f"{straggler} bytes copied into the copy buffer" if lengths
                  else "no call mapped anything")
        fact(f"{total // MiB} MiB from a {kind} peer over loopback (MTU "
             f"{_lo_mtu()}), 256 KiB asked per call, 16 KiB copy buffer",
             f"{100 * mapped / total:.1f}% mapped, {calls} calls; {detail}")


def _lo_mtu() -> str:
    try:
        with open("/sys/class/net/lo/mtu") as f:
            return f.read().strip()
    except OSError:
        return "?"


def check_pending_error() -> None:
    with pair() as (rx, tx):
        addr, _ = window(rx, 256 * KiB)
        sender = send_zc(tx, os.urandom(96 * KiB))
        wait_queued(rx, 96 * KiB)
        sender.flush()
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tx.close()  # RST
        time.sleep(0.05)
        cb = ctypes.create_string_buffer(16 * KiB)
        err, zc, _ = zc_call(rx, addr, 64 * KiB, cb, flags=TLB_CLEAN_HINT)
        so_error = rx.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        rest = 0
        while chunk := rx.recv(1 << 20):
            rest += len(chunk)
        libc.munmap(addr, 256 * KiB)
    fact("96 KiB queued, then a reset; one call",
         f"errno {err}, err field {zc.err} ({errno.errorcode.get(-zc.err, '')}), "
         f"{zc.length + max(zc.copybuf_len, 0)} bytes received, inq {zc.inq}; "
         f"SO_ERROR afterwards {so_error}; recv() then returns the other {rest} bytes "
         f"and then 0 (EOF), not ECONNRESET")


def check_whose_window() -> None:
    with pair() as (rxa, _), pair() as (rxb, txb):
        addr_a, _ = window(rxa, 256 * KiB)
        sender = send_zc(txb, b"\x05" * (48 * KiB))
        wait_queued(rxb, 48 * KiB)
        sender.flush()
        err, zc, _ = zc_call(rxb, addr_a, 64 * KiB, flags=TLB_CLEAN_HINT)
        first = ctypes.string_at(addr_a, 1) if not err and zc.length else b""
        anon = libc.mmap(None, 256 * KiB, PROT_READ, 0x22, -1, 0)  # MAP_PRIVATE|ANONYMOUS
        err_anon, _, _ = zc_call(rxb, anon, 64 * KiB, flags=TLB_CLEAN_HINT)
        libc.munmap(anon, 256 * KiB)
        libc.munmap(addr_a, 256 * KiB)
    fact("socket B's call with an address in socket A's window",
         f"errno {err}, mapped {zc.length // KiB} KiB, first byte {first!r}; "
         f"with an anonymous mapping instead: {name(err_anon)}")


def check_hint_with_pages_present() -> None:
    with pair() as (rx, tx):
        vmas = [_vmas()]
        addr, _ = window(rx, 256 * KiB)
        vmas.append(_vmas())
        sender = send_zc(tx, b"\x01" * (48 * KiB))
        wait_queued(rx, 48 * KiB)
        cb = ctypes.create_string_buffer(16 * KiB)
        _, first, _ = zc_call(rx, addr, 64 * KiB, cb, flags=TLB_CLEAN_HINT)
        vmas.append(_vmas())
        libc.madvise(addr, PAGE, MADV_DONTNEED)  # zap one page of them
        vmas.append(_vmas())
        sender.flush()
        rx.recv(queued(rx))
        sender.send(b"\x02" * (48 * KiB))
        wait_queued(rx, 48 * KiB)
        sender.flush()
        # Same address, pages still mapped, hint set anyway.
        err, second, _ = zc_call(rx, addr, 64 * KiB, cb, flags=TLB_CLEAN_HINT)
        now = ctypes.string_at(addr, 1) if second.length else b""
        libc.munmap(addr, 256 * KiB)
    fact("TLB-clean hint over pages still mapped",
         f"first call mapped {first.length // KiB} KiB; second call at the same address: "
         f"errno {err}, mapped {second.length // KiB} KiB, first byte now {now!r}")
    fact("mappings in /proc/self/maps", f"before the window {vmas[0]}, with it {vmas[1]}, "
         f"with pages mapped {vmas[2]}, after zapping one page {vmas[3]}")


def check_window_after_close() -> None:
    with pair() as (rx, tx):
        addr, _ = window(rx, 256 * KiB)
        sender = send_zc(tx, b"\x07" * (96 * KiB))
        wait_queued(rx, 96 * KiB)
        sender.flush()
        _, zc, _ = zc_call(rx, addr, 64 * KiB, flags=TLB_CLEAN_HINT)
    # Both sockets are closed now; the mapped pages are still ours.
    content = ctypes.string_at(addr, zc.length) if zc.length else b""
    libc.munmap(addr, 256 * KiB)
    fact("mapped pages after the socket is closed",
         f"{len(content) // KiB} KiB still readable, all {set(content)!r}")


_SIGBUS_CHILD = r"""
import ctypes, socket, sys
sys.path[:0] = {path!r}
from benchmarks.kernel_facts import window, pair
with pair() as (rx, tx):
    addr, _ = window(rx, 64 * 1024)
    print("touching", flush=True)
    ctypes.string_at(addr, 1)
print("survived", flush=True)
"""


def check_sigbus() -> None:
    code = _SIGBUS_CHILD.format(path=sys.path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    sig = -proc.returncode if proc.returncode < 0 else 0
    fact("reading a window page that is not mapped",
         f"the process is killed by signal {sig} "
         f"({'SIGBUS' if sig == 7 else 'unexpected'}); output {proc.stdout.split()}")


def check_completions() -> None:
    with pair() as (rx, tx):
        tx.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
        buffers = [os.urandom(64 * KiB) for _ in range(32)]
        done = threading.Event()

        def drain() -> None:
            while rx.recv(1 << 20):
                pass
            done.set()

        t = threading.Thread(target=drain)
        t.start()
        for b in buffers:
            tx.sendall(b, MSG_ZEROCOPY)
        time.sleep(0.1)
        _, anc, _, _ = tx.recvmsg(0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        level, kind, payload = anc[0]
        first = struct.unpack_from("=IBBBBII", payload)
        rest = list(drain_completions(tx))
        tx.shutdown(socket.SHUT_WR)
        t.join()
    ids = [first[5], first[6]] + [x for c in rest if c for x in c[:2]]
    fact("32 sends of 64 KiB with MSG_ZEROCOPY over loopback",
         f"first error-queue message: cmsg level {level} type {kind}, {len(payload)} bytes; "
         f"sock_extended_err errno {first[0]} origin {first[1]} type {first[2]} "
         f"code {first[3]} info (first id) {first[5]} data (last id) {first[6]}; "
         f"{1 + len(rest)} message(s) in all, ids {min(ids)}..{max(ids)}")


def check_memlock() -> None:
    if os.geteuid() != 0:
        fact("RLIMIT_MEMLOCK and MSG_ZEROCOPY", "skipped (needs root to drop to nobody)")
        return
    r, w = os.pipe()
    with pair() as (rx, tx):
        pid = os.fork()
        if pid == 0:  # the child: no CAP_IPC_LOCK, a 256 KiB locked-memory limit
            try:
                os.close(r)
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (256 * KiB, 256 * KiB))
                os.setgid(65534)
                os.setuid(65534)
                tx.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
                tx.setblocking(False)
                data = b"z" * (64 * KiB)
                sent = 0
                outcome = "no error"
                for _ in range(256):
                    try:
                        sent += tx.send(data, MSG_ZEROCOPY)
                    except OSError as exc:
                        outcome = name(exc.errno or 0)
                        break
                os.write(w, f"{outcome} after {sent // KiB} KiB in flight".encode())
            finally:
                os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        result = os.read(r, 200).decode()
        os.close(r)
    fact("unprivileged MSG_ZEROCOPY sender, RLIMIT_MEMLOCK 256 KiB, receiver not reading",
         result)


def main() -> None:
    only = set(sys.argv[1:])
    print(f"# Kernel facts, checked on {platform.release()} ({platform.machine()}), "
          f"page size {PAGE}\n")
    for check in (check_struct, check_mmap, check_small_queue, check_what_maps,
                  check_pending_error, check_whose_window, check_hint_with_pages_present,
                  check_window_after_close, check_sigbus, check_completions,
                  check_memlock):
        if only and check.__name__ not in only:
            continue
        try:
            check()
        except Exception as exc:  # report and go on: each check stands alone
            fact(check.__name__, f"FAILED: {exc!r}")
    with open("/proc/sys/net/core/optmem_max") as f:
        optmem = f.read().strip()
    with open("/proc/sys/vm/max_map_count") as f:
        max_map = f.read().strip()
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    fact("limits here", f"net.core.optmem_max {optmem}, vm.max_map_count {max_map}, "
         f"RLIMIT_MEMLOCK {soft // KiB if soft >= 0 else soft} KiB, euid {os.geteuid()}")


if __name__ == "__main__":
    main()
