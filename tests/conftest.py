from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref import sync as asgiref_sync

import asgiref_loopshare
from asgiref_loopshare import LoopScope, _loop
from asgiref_loopshare import sync as loopshare_sync

AsyncToSyncFactory = Callable[..., Callable[..., Any]]


@contextlib.contextmanager
def loopshare_installed() -> Iterator[None]:
    """asgiref patched in place inside the block, restored after (even on error).

    For tests that run stock and patched in turn (per Hypothesis example, where a
    function-scoped fixture would span every example).
    """
    was_installed = asgiref_loopshare.is_installed()
    asgiref_loopshare.install()
    try:
        yield
    finally:
        if not was_installed:
            asgiref_loopshare.uninstall()


@pytest.fixture
def installed() -> Iterator[None]:
    """asgiref patched in place for the test, restored after."""
    with loopshare_installed():
        yield


@pytest.fixture(params=["installed", "drop-in"])
def async_to_sync(request: pytest.FixtureRequest) -> Iterator[AsyncToSyncFactory]:
    """Each way in: asgiref's async_to_sync patched, or the drop-in module's."""
    if request.param == "installed":
        asgiref_loopshare.install()
        yield asgiref_sync.async_to_sync
        asgiref_loopshare.uninstall()
    else:
        assert not asgiref_loopshare.is_installed()
        yield loopshare_sync.async_to_sync


@pytest.fixture(autouse=True)
def _restore_settings() -> Iterator[None]:
    settings = _loop.get_settings()
    yield
    _loop.configure(**settings.__dict__)


async def loop_and_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    return asyncio.get_running_loop(), threading.current_thread()


def loop_in(scope: LoopScope) -> asyncio.AbstractEventLoop:
    """The loop an ``async_to_sync`` call gets with *scope* active."""
    token = scope.activate()
    try:
        loop, _ = asgiref_sync.async_to_sync(loop_and_thread)()
        return loop
    finally:
        scope.deactivate(token)
