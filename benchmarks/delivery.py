"""CPU per delivery, without an event loop: aiozc's receive engine against the
receive calls the peers' transports make.

Each delivery writes one message of S bytes into a loopback TCP connection
and receives it on the other end, all in one thread (no second process, no
event loop, no pacing): what is left is the cost of the receive call, of
what the receiver allocates or touches per call, and of one callback per
receive (``data_received``/``buffer_updated``, counting the bytes).  The
send costs the same in every row (on loopback it also runs the receiving
side's TCP processing), so the differences between rows are the receivers' own.

Rows:

* ``sock.recv(256 KiB)`` is what asyncio's selector transport calls for an
  ``asyncio.Protocol`` (a new ``bytes`` each time, shrunk to what arrived);
  in a fresh process, and "warmed" after one 300 KiB bytes object was
  freed (which raises glibc's mmap threshold above the request).  Either
  row can land in one of two modes: the buffer reused warm from the heap,
  or faulted in afresh at every call (glibc serving the 256 KiB request by
  mmap(), or growing the heap's top that the previous free() trimmed),
  which costs 50-60 us more per 64 KiB.  Which one a process is in
  depends on its heap's history, and varies between runs of this same
  code; it is asyncio's, and aiozc's slabs do not depend on it.
* ``sock.recv_into(64 KiB)``: an ``asyncio.BufferedProtocol`` with one
  64 KiB buffer of its own, as the benchmarks' peers use.
* aiozc: the receive engine (``Receiver.pump``, what ``ZCTransport`` calls
  per read event) with ``zerocopy='never'`` and ``'auto'`` (a plain
  sender: ``auto`` ends up copying), the sink releasing each view as the
  README's ``with data:`` does.

Every cell runs in a fresh process, rounds interleaved; or, with
``--same-process``, every receiver in one process (malloc warmed) on a
connection of its own, alternating round by round, which resolves
differences of a few tenths of a microsecond here.  Thread CPU time per
delivery, median of the rounds.

    python -m benchmarks.delivery [--same-process] [--deliveries N] [--rounds N]
                                  [--sizes 4096,65536] [--output PATH]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ._machine import machine_info, machine_lines
from ._report import emit, table

RECEIVERS = ("sock.recv(256 KiB)", "sock.recv(256 KiB), malloc warmed",
             "sock.recv_into(64 KiB)", "aiozc engine, never", "aiozc engine, auto")
SIZES = (4096, 32768, 65536, 262144)
# The checkout the cells run from (each is `python -m benchmarks.delivery`).
_ROOT = Path(__file__).resolve().parent.parent


# Every connection made, kept open for the life of the process (a runner
# that holds only a socket's descriptor must not see it closed).
_open: list[socket.socket] = []


def _connection() -> tuple[socket.socket, socket.socket]:
    """A loopback TCP connection: (sending end, non-blocking receiving end).

    The send and the receive run in one thread, so a message must fit in
    the sender's buffer and the receiver's window at once: with Linux's
    default autotuned buffers (4 MiB at most) 256 KiB does.
    """
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        c = socket.create_connection(ls.getsockname())
        s, _ = ls.accept()
    s.setblocking(False)
    _open.extend((c, s))
    return c, s


def _runner(receiver: str, size: int) -> Callable[[int], float]:
    """Set ``receiver`` up on a connection of its own: a function that makes
    ``k`` deliveries of ``size`` bytes and returns its thread CPU seconds."""
    c, s = _connection()
    payload = os.urandom(size)
    got = 0
    receive: Callable[[], None]
    if receiver.startswith("aiozc"):
        import aiozc
        from aiozc._engine import Receiver

        def data_received(view: memoryview) -> None:  # as the README writes it
            nonlocal got
            with view:
                got += len(view)

        rx = Receiver(s.fileno(), aiozc.ZCConfig(zerocopy=receiver.rsplit(" ", 1)[1]),
                      data_received)

        def receive() -> None:
            nonlocal got
            while got < size:
                if rx.pump(0) < 0:
                    raise RuntimeError("the connection ended or starved mid-run")
            got = 0
    elif receiver.startswith("sock.recv_into"):
        buf = memoryview(bytearray(64 * 1024))

        def buffer_updated(nbytes: int) -> None:
            nonlocal got
            got += nbytes

        def receive() -> None:
            nonlocal got
            while got < size:
                try:
                    buffer_updated(s.recv_into(buf))
                except BlockingIOError:  # (as pump(0) returning 0: try again)
                    pass
            got = 0
    else:
        if "warmed" in receiver:
            # Free one mmap()ed chunk bigger than recv()'s request: glibc
            # then serves such requests from the heap (which it may still trim).
            warm = bytes(300 * 1024)
            del warm

        def data_received_bytes(data: bytes) -> None:
            nonlocal got
            got += len(data)

        def receive() -> None:
            nonlocal got
            while got < size:
                try:
                    data_received_bytes(s.recv(256 * 1024))
                except BlockingIOError:
                    pass
            got = 0

    def run(k: int) -> float:
        t0 = time.thread_time()
        for _ in range(k):
            c.sendall(payload)
            receive()
        return time.thread_time() - t0

    # Past aiozc's first MiB (auto copies it, untimed) and its probe: the
    # steady state, for every receiver alike.
    run(max(1, (8 << 20) // size))
    return run


def _deliveries(size: int, base: int) -> int:
    # Bigger messages, fewer of them: about the same bytes per cell.
    return max(200, base * 65536 // max(size, 65536))


def _pin() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _fresh(sizes: list[int], rounds: int, base: int) -> dict[tuple[str, int], list[float]]:
    # Every cell in a process of its own (malloc's state is each process's
    # history), rounds interleaved, alternate rounds in reverse order.
    res: dict[tuple[str, int], list[float]] = {}
    for r in range(rounds):
        order = RECEIVERS if r % 2 == 0 else RECEIVERS[::-1]
        for size in sizes:
            k = _deliveries(size, base)
            for rx in order:
                out = subprocess.run(
                    [sys.executable, "-m", "benchmarks.delivery", "--cell", rx, str(size), str(k)],
                    check=False, capture_output=True, text=True, cwd=_ROOT)
                if out.returncode:
                    sys.stderr.write(out.stderr)
                    raise SystemExit(f"the cell {rx!r}, {size} B failed (its output is above)")
                res.setdefault((rx, size), []).append(float(out.stdout))
    return res


def _same_process(sizes: list[int], rounds: int, base: int) -> dict[tuple[str, int], list[float]]:
    # Every receiver in this one process (malloc warmed first), each on its
    # own connection, alternating round by round: the finest comparison
    # this machine allows, and the "fresh" recv row cannot appear in it.
    _pin()
    warm = bytes(300 * 1024)
    del warm
    names = [rx for rx in RECEIVERS if rx != "sock.recv(256 KiB)"]
    res: dict[tuple[str, int], list[float]] = {}
    for size in sizes:
        k = _deliveries(size, base)
        runs = {rx: _runner(rx, size) for rx in names}
        for r in range(rounds):
            for rx in names if r % 2 == 0 else names[::-1]:
                res.setdefault((rx, size), []).append(runs[rx](k) / k * 1e6)
    return res


def main(argv: list[str] | None = None) -> int:
    """Run the cells and print a markdown report."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=4000,
                        help="deliveries per cell at 64 KiB and below (fewer above)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--same-process", action="store_true",
                        help="every receiver in one process, alternating (malloc warmed)")
    parser.add_argument("--output", help="also write the report to this file")
    parser.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)  # the child
    args = parser.parse_args(argv)
    if args.cell:
        _pin()
        rx, size, k = args.cell[0], int(args.cell[1]), int(args.cell[2])
        print(_runner(rx, size)(k) / k * 1e6)
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    machine = machine_info()  # (before --same-process pins this process)
    run = _same_process if args.same_process else _fresh
    res = run(sizes, args.rounds, args.deliveries)
    names = [rx for rx in RECEIVERS if (rx, sizes[0]) in res]
    rows = []
    for rx in names:
        row = [rx]
        for size in sizes:
            m = statistics.median(res[(rx, size)])
            best = min(statistics.median(res[(p, size)]) for p in names
                       if not p.startswith("aiozc"))
            row.append(f"{m:.2f} ({m - best:+.2f})")
        rows.append(row)
    flag = " --same-process" if args.same_process else ""
    how = ("every receiver in one process, on a connection of its own, "
           "alternating round by round, malloc warmed first" if args.same_process
           else "each cell in a fresh process, rounds interleaved")
    lines = [
        "# CPU per delivery, no event loop\n",
        (f"Generated by `python -m benchmarks.delivery{flag}`: one message written to "
         "a loopback TCP connection and received in the same thread, thread CPU µs per "
         f"delivery (the send included in every row), median of {args.rounds} rounds, "
         f"{how}; in brackets the difference to the cheapest peer call.  See the "
         "module docstring for the rows.\n"),
        machine_lines(machine) + "\n",
        table(["receiver"] + [f"{s // 1024} KiB" for s in sizes], rows),
    ]
    emit("\n".join(lines) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
