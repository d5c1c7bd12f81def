"""``MSG_ZEROCOPY`` completions on a socket's error queue: the wire format, read once.

Both ends of aiozc that send with ``MSG_ZEROCOPY`` learn from here when the
kernel is done with a buffer: the transport's send tracking
(``_zerocopy_send.py``) and the blocking test peer
(:class:`aiozc.testing.ZeroCopySender`).  The format is the kernel's
(``include/uapi/linux/errqueue.h``; docs/kernel.md, "MSG_ZEROCOPY
completions"):

* ``SO_ZEROCOPY`` must be set on the socket before ``send(MSG_ZEROCOPY)``
  means anything.  Each such send that moves at least one byte takes the
  next id of a per-socket 32-bit counter that starts at 0.
* When the kernel no longer needs the pages of a run of sends, it queues a
  message on the error queue whose ``IP_RECVERR`` (or ``IPV6_RECVERR``)
  control message holds a ``struct sock_extended_err``: ``ee_errno`` 0,
  ``ee_origin`` ``SO_EE_ORIGIN_ZEROCOPY``, and the inclusive id range
  ``[ee_info, ee_data]``.  A range that follows on from the one still
  queued is merged into it, so one message can complete many sends.
* ``ee_code & SO_EE_CODE_ZEROCOPY_COPIED``: the kernel copied the data
  after all (local delivery over loopback or veth, a device without
  scatter-gather, a packet tap).  For a merged message the flag is the
  first range's.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Final

__all__ = [
    "MSG_ZEROCOPY", "SO_ZEROCOPY", "SO_EE_ORIGIN_ZEROCOPY", "SO_EE_CODE_ZEROCOPY_COPIED",
    "IP_RECVERR", "IPV6_RECVERR", "SOCK_EXTENDED_ERR", "Completion", "drain_completions",
]

#: ``setsockopt(SOL_SOCKET, SO_ZEROCOPY, 1)``: allow ``MSG_ZEROCOPY`` on the
#: socket (without it the flag is ignored and no completion is queued).
SO_ZEROCOPY: Final = 60
#: The ``send()`` flag: send from the caller's pages, complete later.
MSG_ZEROCOPY: Final = 0x4000000
#: ``ee_origin`` of a ``MSG_ZEROCOPY`` completion.
SO_EE_ORIGIN_ZEROCOPY: Final = 5
#: ``ee_code`` bit: the kernel copied the data anyway.
SO_EE_CODE_ZEROCOPY_COPIED: Final = 1
#: The control message types that carry a ``sock_extended_err``.
IP_RECVERR: Final = 11
IPV6_RECVERR: Final = 25
#: ``struct sock_extended_err``: ee_errno u32, ee_origin u8, ee_type u8,
#: ee_code u8, ee_pad u8, ee_info u32, ee_data u32 (16 bytes, native order).
#: In the control message the kernel follows it with the offender's
#: address, a ``sockaddr_in`` or ``sockaddr_in6`` (zeroed for completions).
SOCK_EXTENDED_ERR: Final = struct.Struct("=IBBBBII")

#: One completion: (first id, last id, kernel copied), ids inclusive and
#: 32-bit, so ``last < first`` when the counter wrapped.
Completion = tuple[int, int, bool]

_RECVERR: Final = frozenset({(socket.SOL_IP, IP_RECVERR),
                             (socket.IPPROTO_IPV6, IPV6_RECVERR)})
# Room for the struct and the largest offender address (sockaddr_in6, 28).
_CMSG_SPACE: Final = socket.CMSG_SPACE(SOCK_EXTENDED_ERR.size + 28)
_FLAGS: Final = socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT


def drain_completions(sock: socket.socket) -> Iterator[Completion | None]:
    """Read ``sock``'s error queue, one message per item, until it is empty.

    Yields a :data:`Completion` for each ``MSG_ZEROCOPY`` completion, and
    ``None`` for any other message (an ICMP error or a transmit timestamp
    the application asked for): it was read all the same, which matters to
    a caller that counts what it consumed.  Stops at EAGAIN; any other
    ``OSError`` from ``recvmsg`` propagates.  A caller may stop early (stop
    iterating); what it has not read stays queued.

    The socket must not wait in ``recvmsg``: ``MSG_DONTWAIT`` is passed,
    but a socket with a timeout (``settimeout(t)``, t > 0) makes Python poll
    for readability first, so such a caller sets the timeout to 0 around
    the drain (see :class:`aiozc.testing.ZeroCopySender`).
    """
    while True:
        try:
            _, ancdata, _, _ = sock.recvmsg(0, _CMSG_SPACE, _FLAGS)
        except (BlockingIOError, InterruptedError):
            return
        completion: Completion | None = None
        # One sock_extended_err per message: the kernel queues one per skb.
        for level, kind, payload in ancdata:
            if (level, kind) not in _RECVERR or len(payload) < SOCK_EXTENDED_ERR.size:
                continue
            ee_errno, origin, _, code, _, lo, hi = SOCK_EXTENDED_ERR.unpack_from(payload)
            if origin == SO_EE_ORIGIN_ZEROCOPY and ee_errno == 0:
                completion = (lo, hi, bool(code & SO_EE_CODE_ZEROCOPY_COPIED))
        yield completion
