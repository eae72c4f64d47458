"""Async ``request_finished`` receivers of the k3 and redis profiles."""

from __future__ import annotations

import asyncio
from typing import Any

from benchapp.clients import record_error, redis_client


async def async_finished(sender: Any, **kwargs: Any) -> None:
    await asyncio.sleep(0)


async def close_redis(sender: Any, **kwargs: Any) -> None:
    """Close the request's redis connections, as one does under ASGI."""
    try:
        await redis_client().connection_pool.disconnect()
    except Exception as exc:
        record_error("request_finished receiver", exc)
