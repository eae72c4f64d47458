"""A module-level ``redis.asyncio`` client, as applications usually hold one.

Its connections belong to the event loop that opened them. Under stock Django's
WSGI handler every ``async_to_sync`` call has its own loop; with the adapter a
request has one, and the async ``request_finished`` receiver in `receivers`
closes the connections it opened (`close_connections`).
"""

from __future__ import annotations

from django.conf import settings
from redis.asyncio import Redis

client: Redis = Redis.from_url(settings.REDIS_URL)


async def close_connections() -> None:
    """Disconnect every pooled connection (the pool reconnects on next use)."""
    await client.aclose()
