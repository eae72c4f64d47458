"""An async-only middleware: one query on a connection of its own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import markcoroutinefunction
from django_async_backend.db import async_connections, async_new_connection


class QueryMiddleware:
    """Runs ``SELECT <path>`` inside ``async with async_new_connection()``, which
    opens a connection for the block and closes it at its end; the view reads
    the result as ``request.middleware_query``."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Awaitable[Any]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: Any) -> Any:
        async with async_new_connection():
            connection = async_connections["default"]
            async with await connection.cursor() as cursor:
                await cursor.execute("SELECT %s::text", [request.path])
                request.middleware_query = (await cursor.fetchone())[0]
        return await self.get_response(request)
