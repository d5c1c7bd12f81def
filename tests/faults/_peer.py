"""A peer process to SIGKILL: ``python -m faults._peer ADDRESS SEED [--limit N]``.

Run under ``ip netns exec NS`` for a veth link.  It listens on ``ADDRESS``
(any port), prints the port, accepts one connection and sends reproducible
stream ``SEED`` (see ``_harness.Stream``) with MSG_ZEROCOPY in random-sized
writes, forever or until ``--limit`` bytes, then sleeps.  It never reads:
whatever the receiver sends it stays unread, so that the kernel answers the
process's death with a reset rather than a FIN.  It prints ``sent N`` after
each megabyte so that the test can kill it mid-stream.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import time

from aiozc.testing import ZeroCopySender

from ._harness import MiB, Stream


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("seed", type=int)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()
    with socket.socket() as listener:
        listener.bind((args.address, 0))
        listener.listen(1)
        print(listener.getsockname()[1], flush=True)
        conn, _ = listener.accept()
    sender = ZeroCopySender(conn, zerocopy=not args.plain)
    stream = Stream(args.seed)
    rnd = random.Random(args.seed)
    sent = reported = 0
    while not args.limit or sent < args.limit:
        n = rnd.randint(1, MiB)
        if args.limit:
            n = min(n, args.limit - sent)
        sender.send(stream.take(n))
        sent += n
        if sent - reported >= MiB:
            reported = sent
            print(f"sent {sent}", flush=True)
    sender.flush()
    print(f"done {sent}", flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, ConnectionError):
        sys.exit(0)
