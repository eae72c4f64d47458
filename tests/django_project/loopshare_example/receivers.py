"""Async ``request_started`` / ``request_finished`` receivers.

Django 5.0+ runs async receivers itself (through ``async_to_sync`` under WSGI).
On Django 4.2 a receiver must be sync, so there the same coroutines are run with
``async_to_sync`` from sync receivers, as applications did before 5.0.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import django
from asgiref.sync import async_to_sync
from django.core.signals import request_finished, request_started

from loopshare_example import probe


def begin_probe(sender: Any, environ: Any = None, **kwargs: Any) -> None:
    """Sync: put the request's ``X-Probe`` id in the request thread's context."""
    environ = environ or {}
    probe.current_probe.set(environ.get("HTTP_X_PROBE"))
    probe.current_path.set(environ.get("PATH_INFO"))


async def on_request_started(sender: Any, environ: Any = None, **kwargs: Any) -> None:
    probe.record("request_started")
    path = (environ or {}).get("PATH_INFO", "")
    if path.startswith("/redis/"):
        # A third piece of the request using Redis (middleware, view).
        from loopshare_example import redis_client

        await redis_client.for_path(path).incr("loopshare:request_started")


async def on_request_finished(sender: Any, **kwargs: Any) -> None:
    probe.record("request_finished")
    # Where applications close loop-bound connections at the end of a request.
    from loopshare_example import redis_client

    await redis_client.close_connections(probe.current_path.get() or "")


def as_receiver(coroutine_function: Callable[..., Awaitable[None]]) -> Any:
    if django.VERSION >= (5, 0):
        return coroutine_function

    def receiver(sender: Any, **kwargs: Any) -> None:
        async_to_sync(coroutine_function)(sender, **kwargs)

    return receiver


_RECEIVERS = [
    (request_started, begin_probe, "loopshare-begin-probe"),
    (request_started, as_receiver(on_request_started), "loopshare-started"),
    (request_finished, as_receiver(on_request_finished), "loopshare-finished"),
]


def connect() -> None:
    for signal, receiver, uid in _RECEIVERS:
        signal.connect(receiver, dispatch_uid=uid, weak=False)


def disconnect() -> None:
    for signal, _receiver, uid in _RECEIVERS:
        signal.disconnect(dispatch_uid=uid)
