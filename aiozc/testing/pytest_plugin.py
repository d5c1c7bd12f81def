"""A pytest plugin that runs asyncio tests on aiozc's event loops.

Opt in from a ``conftest.py``::

    pytest_plugins = ["aiozc.testing.pytest_plugin"]

With pytest-asyncio 1.x installed, every test marked ``@pytest.mark.asyncio``
(or every async test, in its auto mode) then runs once per aiozc loop: the
stdlib selector loop and, when uvloop is installed, uvloop, both
zerocopy-aware (:func:`aiozc.loop_factory`; the test ids say which).  The
plugin implements pytest-asyncio's ``pytest_asyncio_loop_factories`` hook
with :func:`aiozc.testing.loop_factories`; a project that wants other loops
implements that hook itself and may still call that function.

For anyio's pytest plugin, parametrize its ``anyio_backend`` fixture with
:func:`aiozc.testing.anyio_backends`::

    @pytest.fixture(params=aiozc.testing.anyio_backends())
    def anyio_backend(request):
        return request.param
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest

from . import loop_factories

__all__ = ["pytest_asyncio_loop_factories"]


# optionalhook: without pytest-asyncio there is no such hook, and the plugin
# must still load (a suite that only uses anyio's plugin, say).
@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """pytest-asyncio's hook: run each asyncio test on every aiozc loop."""
    return loop_factories()
