"""The views: one async view on the request's connection, one sync view."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django_async_backend.db import async_connections


async def query_view(request: Any, number: int) -> HttpResponse:
    """Three queries on ``async_connections["default"]``; the body names their
    results and the middleware's, e.g. ``/query/7/ 7 8 9``."""
    connection = async_connections["default"]
    results = []
    for offset in range(3):
        async with await connection.cursor() as cursor:
            await cursor.execute("SELECT %s::int + %s::int", [number, offset])
            results.append((await cursor.fetchone())[0])
    text = " ".join([request.middleware_query, *map(str, results)])
    return HttpResponse(text.encode(), content_type="text/plain")


def ping_view(request: Any) -> HttpResponse:
    """Answers once the server is up (the middleware still runs its query)."""
    return HttpResponse(b"pong", content_type="text/plain")
