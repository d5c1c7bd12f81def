"""aiozc: Linux TCP receive zerocopy for asyncio and uvloop.

A :class:`ZCProtocol` receives read-only memoryviews over pages the kernel
mapped into the process (``TCP_ZEROCOPY_RECEIVE``), or over pooled copy
buffers where mapping is unavailable or does not pay.  Start with
:func:`create_connection` / :func:`create_server`, or run your program on a
loop from :func:`new_event_loop` / :func:`run`.
"""

from ._buffer import ViewBuffer as ViewBuffer
from ._config import ExhaustedPolicy as ExhaustedPolicy
from ._config import ZCConfig as ZCConfig
from ._config import ZerocopyPolicy as ZerocopyPolicy
from ._connect import connect_accepted_socket as connect_accepted_socket
from ._connect import create_connection as create_connection
from ._connect import create_server as create_server
from ._loop import EventLoopPolicy as EventLoopPolicy
from ._loop import ZCEventLoop as ZCEventLoop
from ._loop import install as install
from ._loop import loop_factory as loop_factory
from ._loop import new_event_loop as new_event_loop
from ._loop import run as run
from ._memory import ZCMemoryStats as ZCMemoryStats
from ._memory import memory_stats as memory_stats
from ._memory import set_memory_limit as set_memory_limit
from ._protocol import ZCProtocol as ZCProtocol
from ._server import Server as Server
from ._stats import ZCStats as ZCStats
from ._streams import ZCStreamReader as ZCStreamReader
from ._streams import open_connection as open_connection
from ._streams import start_server as start_server
from ._transport import ZCTransport as ZCTransport

__all__ = [
    "EventLoopPolicy",
    "ExhaustedPolicy",
    "Server",
    "ViewBuffer",
    "ZCConfig",
    "ZCEventLoop",
    "ZCMemoryStats",
    "ZCProtocol",
    "ZCStats",
    "ZCStreamReader",
    "ZCTransport",
    "ZerocopyPolicy",
    "connect_accepted_socket",
    "create_connection",
    "create_server",
    "install",
    "loop_factory",
    "memory_stats",
    "new_event_loop",
    "open_connection",
    "run",
    "set_memory_limit",
    "start_server",
]

__version__ = "0.1.0"
