"""Shared fixtures: every test runs once per event loop, over real sockets.

Every ``@pytest.mark.asyncio`` test runs on a fresh stdlib selector loop and
on a fresh uvloop loop (pytest-asyncio's ``pytest_asyncio_loop_factories``
hook, below: the test is parametrized, as uvloop's own suite runs one mixin
per loop; the ids say which).  aiozc's entry points must work on any loop,
so these are the loops' own classes; a project testing its code on aiozc's
loops uses the same hook through ``aiozc.testing.pytest_plugin``.  Tests
that drive a loop in a child process take ``loop_name``.  The peers are real: a thread that sends with MSG_ZEROCOPY (pages
the kernel can map) or with plain sendmsg (pages it cannot).

Only fixtures live here; the helpers tests import (``Peer``, ``payload``,
``count_fds``, ``run_module``, ...) are in tests/support.py.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator, Mapping

import pytest

from support import LOOPS


@pytest.fixture(params=list(LOOPS))
def loop_name(request: pytest.FixtureRequest) -> str:
    """The kind of event loop the test runs on."""
    return str(request.param)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio: run each asyncio test on every loop of ``LOOPS``."""
    return LOOPS


@pytest.fixture(autouse=True)
def _collect_after() -> Iterator[None]:
    """Collect garbage after each test, while its failures are still its own
    (a transport or view dropped unclosed warns in its __del__)."""
    yield
    gc.collect()
