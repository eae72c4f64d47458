"""``redis.asyncio`` clients, as applications hold them.

A client's connections belong to the event loop that opened them.

- `client`: one module-level client, as most applications write it. Under stock
  Django's WSGI handler every ``async_to_sync`` call has its own loop, so the
  pieces of one request fight over it ("attached to a different loop", "Event
  loop is closed") and its connections are never closed. With the adapter a
  request has one loop, and the async ``request_finished`` receiver closes what
  the request opened. Requests that *overlap* still share this one pool across
  their loops, which a loop-bound pool cannot survive: use `loop_client` then.
- `loop_client`: a client per event loop, from a module-level registry. With
  the adapter that is a client per request, closed (`close_loop_client`) by the
  ``request_finished`` receiver on the request's loop.

``/redis/`` uses `client`, ``/redis/per-loop/`` uses `loop_client`.
"""

from __future__ import annotations

import asyncio
import weakref

from django.conf import settings
from redis.asyncio import Redis

client: Redis = Redis.from_url(settings.REDIS_URL)

_loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Redis] = (
    weakref.WeakKeyDictionary()
)


def loop_client() -> Redis:
    """The running loop's client (created on first use in this loop)."""
    loop = asyncio.get_running_loop()
    found = _loop_clients.get(loop)
    if found is None:
        found = _loop_clients[loop] = Redis.from_url(settings.REDIS_URL)
    return found


def for_path(path: str) -> Redis:
    return loop_client() if path.startswith("/redis/per-loop/") else client


async def close_connections(path: str) -> None:
    """Close what the request at *path* opened."""
    if path.startswith("/redis/per-loop/"):
        await close_loop_client()
    elif path.startswith("/redis/"):
        await client.aclose()  # the pool reconnects on next use


async def close_loop_client() -> None:
    found = _loop_clients.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.aclose()
