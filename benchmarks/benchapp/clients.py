"""The async "clients" the views and middleware call."""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings


async def fake_get(key: str) -> str:
    """A stand-in for an async client call: yields to the loop once."""
    await asyncio.sleep(0)
    return key


_redis: Any = None


def redis_client() -> Any:
    """The module-level ``redis.asyncio`` client, shared by every request."""
    global _redis
    if _redis is None:
        import redis.asyncio

        _redis = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    return _redis


async def redis_get(key: str) -> Any:
    """One GET through the module-level client."""
    return await redis_client().get(key)


async def fresh_client_get(key: str) -> Any:
    """One GET through a client made for this call: what works under stock."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    try:
        return await client.get(key)
    finally:
        await client.aclose()


#: Errors seen by the views and receivers, by kind (read by the benchmark).
errors: dict[str, int] = {}


def record_error(where: str, exc: BaseException) -> None:
    kind = f"{where}: {type(exc).__name__}: {str(exc)[:70]}"
    errors[kind] = errors.get(kind, 0) + 1
