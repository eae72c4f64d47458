"""`install` / `uninstall`: patch the installed asgiref in place.

The patch is ``asgiref.sync.AsyncToSync.__call__`` (and
``AsyncSingleThreadContext.__enter__``, which must see through a closed
request scope left set in a thread: see `loopshare_enter`; and
``AsyncToSync.__init__``, which does what asgiref's does, for less: see
`loopshare_init`). Replacing it
on the class reaches every way in at once - ``asgiref.sync.async_to_sync``
(which looks ``AsyncToSync`` up at call time), modules that imported
``async_to_sync`` or ``AsyncToSync`` before `install`, and ``AsyncToSync``
instances created before it (Django wraps middleware once at start-up).
"""

from __future__ import annotations

import threading

from asgiref.sync import AsyncSingleThreadContext, AsyncToSync

from asgiref_loopshare import _worker_locals
from asgiref_loopshare._core import (
    loopshare_call,
    loopshare_enter,
    loopshare_init,
    stock_call,
    stock_enter,
    stock_init,
)

__all__ = ["install", "is_installed", "uninstall"]

_lock = threading.Lock()


def install() -> None:
    """Make asgiref share one loop per ``AsyncSingleThreadContext``. Idempotent."""
    with _lock:
        if AsyncToSync.__dict__.get("__call__") is stock_call:
            AsyncToSync.__call__ = loopshare_call  # type: ignore[method-assign]
        if AsyncToSync.__dict__.get("__init__") is stock_init:
            AsyncToSync.__init__ = loopshare_init  # type: ignore[method-assign]
        if AsyncSingleThreadContext.__dict__.get("__enter__") is stock_enter:
            AsyncSingleThreadContext.__enter__ = loopshare_enter  # type: ignore[method-assign]


def uninstall() -> None:
    """Restore asgiref's own ``AsyncToSync.__call__``. Idempotent.

    Contexts already using a shared loop keep it until they exit; new calls in
    them run as stock asgiref does inside a context.
    """
    with _lock:
        if AsyncToSync.__dict__.get("__call__") is loopshare_call:
            AsyncToSync.__call__ = stock_call  # type: ignore[method-assign]
        if AsyncToSync.__dict__.get("__init__") is loopshare_init:
            AsyncToSync.__init__ = stock_init  # type: ignore[method-assign]
        if AsyncSingleThreadContext.__dict__.get("__enter__") is loopshare_enter:
            AsyncSingleThreadContext.__enter__ = stock_enter  # type: ignore[method-assign]
        _worker_locals.remove_hook()


def is_installed() -> bool:
    """Whether `install` is in effect."""
    return AsyncToSync.__dict__.get("__call__") is loopshare_call
