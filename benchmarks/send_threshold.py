"""Where ``MSG_ZEROCOPY`` starts to pay for the sender (``ZCConfig.send_zerocopy_threshold``).

    python -m benchmarks.send_threshold [--quick] [--output docs/send_threshold.md]

A zerocopy send skips one thing, the copy of the payload into kernel
buffers, and adds others: pinning the pages, a notification per send, and
the ``recvmsg(MSG_ERRQUEUE)`` that reaps it and lets the buffer go.  It
pays once the copy it saves costs more than what it adds.

**Part 1, the break-even.**  Every TCP path on a single machine delivers
locally, and local delivery copies zerocopy pages anyway
(``SO_EE_CODE_ZEROCOPY_COPIED``; docs/kernel.md, "MSG_ZEROCOPY
completions"), so TCP cannot show the saving here.  A path that really
sends from the user's pages needs a device that consumes the packet
without copying it: a veth whose peer is down
drops every packet in ``veth_xmit`` (the drop frees the skb: a completion
without the COPIED flag, checked below), after the whole send path ran,
copy or pin included.  So, in a private network namespace (needs root;
skipped otherwise), UDP datagrams of ``S`` bytes (MTU 65535, so one skb
each) go out plainly and with ``MSG_ZEROCOPY``, the zerocopy sender reaping
its notification after every send (an application that writes once per
event-loop iteration does that; one that writes more per iteration reaps
less often, so this leans towards a higher threshold).  The break-even is
where the two CPU-per-send curves cross (linear interpolation between the
sizes measured).  UDP pays for a notification per send where TCP coalesces
consecutive sends into one, another lean towards a higher threshold.

**Part 2, what a copied zerocopy send costs.**  Over loopback TCP, a plain
send copies once at ``send()`` and a zerocopy send copies once at delivery
(in the same process context), so the CPU difference per send is what
``MSG_ZEROCOPY`` costs where the kernel copies anyway: what ``auto`` pays
on loopback until ``send_zerocopy_copied_limit`` copied completions make it
fall back.  The receiver is a process on the other CPU draining with
``recv_into``; both modes run the same non-blocking loop (send until
EAGAIN, ``poll``, reap once per wake-up, as ``ZCTransport`` does).

Both parts: the sender is this thread (``time.thread_time``), pinned to
one CPU; source buffers are a pool of distinct ``bytes`` objects (32 MiB,
so they are not cache-hot); plain and zerocopy alternate run by run and
the figures are medians over the repeats.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import platform
import select
import socket
import statistics
import subprocess
import time
from multiprocessing.connection import Connection

from aiozc import ZCConfig
from aiozc._errqueue import (
    MSG_ZEROCOPY,
    SO_EE_CODE_ZEROCOPY_COPIED,
    SO_ZEROCOPY,
    SOCK_EXTENDED_ERR,
)
from aiozc._zerocopy_send import ZeroCopySendTracker

from ._process import pin, pin_cpus, spawn
from ._report import table

_POOL = 32 << 20
_CLONE_NEWNET = 0x40000000
_UDP_SIZES = [1024, 2048, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65000]
_BATCH = 16  # sends per reap in the batched variant
_AIOZC = -1  # the variant through aiozc's ZeroCopySendTracker
_TCP_SIZES = [4096, 16384, 65536, 262144, 1 << 20]


def _pool(size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(max(2, _POOL // size))]


def _reap(sock: socket.socket, outstanding: int = -1) -> tuple[int, int]:
    """Drain the error queue: (send ids completed, of which reported copied).

    With ``outstanding`` >= 0, stop once that many ids have completed
    instead of reading until EAGAIN (saves a system call per reap).  The
    bare minimum on purpose (no cmsg checks): the baseline that aiozc's
    ``aiozc._errqueue.drain_completions`` is compared against.
    """
    done = copied = 0
    while done != outstanding:
        try:
            _, anc, _, _ = sock.recvmsg(0, 64, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        for _, _, data in anc:
            _, _, _, code, _, lo, hi = SOCK_EXTENDED_ERR.unpack_from(data)
            done += hi - lo + 1
            if code & SO_EE_CODE_ZEROCOPY_COPIED:
                copied += hi - lo + 1
    return done, copied


# -- part 1: UDP into a veth whose peer is down ------------------------------


def _udp_child(pipe: Connection, cpu: int | None, total: int, repeats: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(_CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        for cmd in ("ip link add zcs0 type veth peer name zcs1",
                    "ip link set zcs0 mtu 65535", "ip link set zcs0 up",
                    "ip addr add 10.77.0.1/24 dev zcs0",
                    "ip neigh add 10.77.0.2 lladdr 02:00:00:00:00:02 dev zcs0"):
            subprocess.run(cmd.split(), check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pipe.send(("skip", f"no private network namespace with a veth ({exc})"))
        return
    pin(cpu)
    rows = []
    for size in _UDP_SIZES:
        pool = _pool(size)
        count = max(64, total // size)
        runs: dict[int, list[float]] = {0: [], 1: [], _BATCH: [], _AIOZC: []}
        copied = completed = 0
        for r in range(repeats):
            for every in ((0, 1, _BATCH, _AIOZC) if r % 2 == 0 else (_AIOZC, _BATCH, 1, 0)):
                if every == _AIOZC:
                    runs[every].append(_udp_aiozc(pool, count))
                    continue
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
                sock.connect(("10.77.0.2", 9))
                flags = MSG_ZEROCOPY if every else 0
                outstanding = 0
                t0 = time.thread_time()
                for i in range(count):
                    sock.send(pool[i % len(pool)], flags)
                    if every:
                        outstanding += 1
                        if outstanding == every:
                            # The veth frees the skb inside send(), so the
                            # notifications are already queued (coalesced).
                            d, c = _reap(sock, outstanding)
                            outstanding -= d
                            completed += d
                            copied += c
                runs[every].append((time.thread_time() - t0) / count)
                completed += _reap(sock)[0]
                sock.close()
        rows.append((size, statistics.median(runs[0]), statistics.median(runs[1]),
                     statistics.median(runs[_BATCH]), statistics.median(runs[_AIOZC]),
                     completed, copied))
    pipe.send(("ok", rows))


def _udp_aiozc(pool: list[bytes], count: int) -> float:
    """CPU per send through aiozc's own bookkeeping (ZeroCopySendTracker), reaping
    after every send, as ZCTransport.write() does for a write per iteration."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(("10.77.0.2", 9))
    zc = ZeroCopySendTracker(sock, ZCConfig(send_zerocopy="always"))
    t0 = time.thread_time()
    for i in range(count):
        view = zc.view_for(pool[i % len(pool)])
        assert view is not None
        zc.send(view)
        zc.reap()
    cpu = (time.thread_time() - t0) / count
    assert zc.pending == 0 and zc.completions_copied == 0
    sock.close()
    return cpu


# -- part 2: TCP over loopback ------------------------------------------------


def _tcp_receiver(pipe: Connection, cpu: int | None) -> None:
    pin(cpu)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    pipe.send(listener.getsockname()[1])
    buf = bytearray(1 << 20)
    while True:
        conn, _ = listener.accept()
        with conn:
            while conn.recv_into(buf):
                pass
        pipe.send("done")


def _tcp_one(port: int, pool: list[bytes], total: int, zerocopy: bool) -> tuple[float, int, int]:
    """Send ``total`` bytes: (this thread's CPU seconds, sends, copied completions)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if zerocopy:
        sock.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    sock.setblocking(False)
    writable = select.poll()
    writable.register(sock.fileno(), select.POLLOUT)
    errors = select.poll()
    errors.register(sock.fileno(), 0)  # POLLERR is reported regardless
    flags = MSG_ZEROCOPY if zerocopy else 0
    held: list[bytes] = []  # every buffer stays alive until the end
    ids = completed = copied = sends = 0
    sent = i = 0
    t0 = time.thread_time()
    while sent < total:
        data = pool[i % len(pool)]
        i += 1
        view = memoryview(data)
        while view:
            try:
                n = sock.sendmsg([view], [], flags)
            except BlockingIOError:
                writable.poll()
                if zerocopy:
                    d, c = _reap(sock)
                    completed, copied = completed + d, copied + c
                continue
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                errors.poll(10)
                d, c = _reap(sock)
                completed, copied = completed + d, copied + c
                continue
            sends += 1
            if zerocopy:
                ids += 1
                held.append(data)
            view = view[n:]
            sent += n
    while completed < ids:
        errors.poll(5000)
        d, c = _reap(sock)
        completed, copied = completed + d, copied + c
    cpu = time.thread_time() - t0
    sock.close()
    return cpu, sends, copied


def _fit(xs: list[int], ys: list[float]) -> tuple[float, float]:
    """Least-squares line through the points: (intercept, slope)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = (sum((x - mx) * (y - my) for x, y in zip(xs, ys))
             / sum((x - mx) ** 2 for x in xs))
    return my - slope * mx, slope


def _breakeven(sizes: list[int], plain: list[float], zc: list[float]) -> float | None:
    """Where the fitted lines cross (None: zerocopy's line never gets below)."""
    p0, p1 = _fit(sizes, plain)
    z0, z1 = _fit(sizes, zc)
    if p1 <= z1:
        return None
    return (z0 - p0) / (p1 - z1)


def main(argv: list[str] | None = None) -> None:
    """Measure both parts and print (or write) the markdown report."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 4 MiB per run, 2 repeats (figures not meaningful)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--output", default=None, help="also write the markdown report here")
    args = ap.parse_args(argv)
    total = (4 if args.quick else 64) << 20
    repeats = args.repeats or (2 if args.quick else 9)
    tx_cpu, rx_cpu = pin_cpus()
    started = time.monotonic()

    pipe, proc = spawn(_udp_child, tx_cpu, total, repeats)
    udp_status, udp = pipe.recv()
    proc.join()

    pipe, proc = spawn(_tcp_receiver, rx_cpu)
    port = pipe.recv()
    pin(tx_cpu)
    tcp = []
    for size in _TCP_SIZES:
        pool = _pool(size)
        runs: dict[bool, list[tuple[float, int, int]]] = {False: [], True: []}
        for r in range(repeats):
            for zc in ((False, True) if r % 2 == 0 else (True, False)):
                runs[zc].append(_tcp_one(port, pool, total, zc))
                pipe.recv()
        plain = statistics.median(c for c, _, _ in runs[False])
        zcopy = statistics.median(c for c, _, _ in runs[True])
        sends = statistics.median(n for _, n, _ in runs[True])
        copied = sum(c for _, _, c in runs[True])
        all_sends = sum(n for _, n, _ in runs[True])
        tcp.append((size, plain, zcopy, sends, copied, all_sends))
        del pool
    proc.kill()
    elapsed = time.monotonic() - started

    out = [
        "# MSG_ZEROCOPY send: break-even and the cost of copied sends",
        "",
        "Generated by `python -m benchmarks.send_threshold` (method: see its docstring). "
        f"{total >> 20} MiB per run, {repeats} interleaved repeats per cell; entries are "
        f"medians of the sender thread's CPU. Whole run: {elapsed:.0f} s.",
        "",
        f"- Kernel: `{platform.release()}` ({platform.machine()}); "
        f"Python {platform.python_version()}",
        "",
        "## 1. Break-even: UDP into a veth whose peer is down (nothing copies a zerocopy send)",
        "",
    ]
    if udp_status != "ok":
        out.append(f"Skipped: {udp}.")
    else:
        sizes = [r[0] for r in udp]
        plain_udp = [r[1] for r in udp]
        variants = (("reap every send", 2), (f"reap every {_BATCH} sends", 3),
                    ("aiozc's ZeroCopySendTracker, reap every send", 4))
        rows = []
        for row in udp:
            size, p = row[0], row[1]
            rows.append([f"{size} B", f"{p * 1e6:.2f}",
                         *(f"{row[col] * 1e6:.2f} ({(row[col] - p) * 1e6:+.2f})"
                           for _, col in variants),
                         f"{row[5]} ({row[6]})"])
        out.append(table(["datagram", "plain µs/send",
                          *(f"MSG_ZEROCOPY, {label}" for label, _ in variants),
                          "completions (copied)"], rows))
        p0, p1 = _fit(sizes, plain_udp)
        out += ["", "Linear fits of CPU per send against size, and where they cross plain's:",
                "", f"- plain: {p0 * 1e6:.2f} µs + {p1 * 1e6 * 1024:.4f} µs per KiB"]
        for label, col in variants:
            zs = [r[col] for r in udp]
            z0, z1 = _fit(sizes, zs)
            be = _breakeven(sizes, plain_udp, zs)
            out.append(f"- MSG_ZEROCOPY, {label}: {z0 * 1e6:.2f} µs + {z1 * 1e6 * 1024:.4f} µs "
                       "per KiB → " + (f"**break-even {be / 1024:.1f} KiB**" if be is not None
                                       else "no break-even"))
    out += [
        "",
        "## 2. The cost of a zerocopy send the kernel copies anyway (TCP over loopback)",
        "",
    ]
    mb = total / 1e6
    out.append(table(["write size", "plain CPU µs/MB", "MSG_ZEROCOPY CPU µs/MB",
                      "Δ µs per send", "completions reported copied"],
                     [[f"{size // 1024} KiB", f"{p * 1e6 / mb:.0f}", f"{z * 1e6 / mb:.0f}",
                       f"{(z - p) * 1e6 / n:+.1f}", f"{copied}/{all_sends}"]
                      for size, p, z, n, copied, all_sends in tcp]))
    text = "\n".join(out) + "\n"
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
