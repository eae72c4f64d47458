"""Async-only middleware: under WSGI, Django runs each through ``async_to_sync``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import markcoroutinefunction

from loopshare_example import probe


class ProbeMiddleware:
    """Outermost: records the loop it runs on before and after the view."""

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Awaitable[Any]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: Any) -> Any:
        probe.record("middleware")
        response = await self.get_response(request)
        probe.record("middleware_after")
        return response


class RedisCountingMiddleware:
    """Innermost: counts ``/redis/`` requests in Redis with the shared client.

    Sync middleware sits between this and `ProbeMiddleware`, so this is a
    separate ``async_to_sync`` call from the outer middleware's.
    """

    sync_capable = False
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Awaitable[Any]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: Any) -> Any:
        if request.path.startswith("/redis/"):
            from loopshare_example import redis_client

            await redis_client.for_path(request.path).incr("loopshare:middleware")
            probe.record("redis_middleware")
        return await self.get_response(request)
