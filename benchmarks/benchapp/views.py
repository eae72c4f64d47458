"""Views: sync, async, sync fan-out, and redis.asyncio GETs."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from django.http import HttpRequest, HttpResponse

from benchapp.clients import (
    fake_get,
    fresh_client_get,
    record_error,
    redis_client,
    redis_get,
)

KEY = "bench:key"


def sync_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok")


async def async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok")


async def async_connection_view(request: HttpRequest) -> HttpResponse:
    """An async view that looks up Django's database connection, as ORM code does.

    ``connections`` keeps its connections in a thread-critical asgiref
    ``Local``: in async code, the first lookup on a thread creates a
    ``DatabaseWrapper`` (here of the dummy backend: ``DATABASES`` is empty) and
    stores it in a context variable of that thread. Nothing is queried.
    """
    from django.db import connections

    return HttpResponse(connections["default"].vendor.encode())


def fanout_view(request: HttpRequest) -> HttpResponse:
    """A sync view calling an async client ``k`` times through async_to_sync."""
    for i in range(int(request.GET.get("k", "10"))):
        async_to_sync(fake_get)(f"key-{i}")
    return HttpResponse(b"ok")


def redis_sync_view(request: HttpRequest) -> HttpResponse:
    """``k`` GETs, each through its own ``async_to_sync`` (sync code, async client)."""
    try:
        for _ in range(int(request.GET.get("k", "1"))):
            async_to_sync(redis_get)(KEY)
    except Exception as exc:
        record_error("view", exc)
        return HttpResponse(b"error", status=500)
    return HttpResponse(b"ok")


def redis_fresh_view(request: HttpRequest) -> HttpResponse:
    """``k`` GETs, each through ``async_to_sync`` with a client of its own."""
    try:
        for _ in range(int(request.GET.get("k", "1"))):
            async_to_sync(fresh_client_get)(KEY)
    except Exception as exc:
        record_error("view", exc)
        return HttpResponse(b"error", status=500)
    return HttpResponse(b"ok")


async def redis_async_view(request: HttpRequest) -> HttpResponse:
    """``k`` GETs awaited in one async view."""
    client = redis_client()
    try:
        for _ in range(int(request.GET.get("k", "1"))):
            await client.get(KEY)
    except Exception as exc:
        record_error("view", exc)
        return HttpResponse(b"error", status=500)
    return HttpResponse(b"ok")
