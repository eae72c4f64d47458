"""Loop-bound clients, one per event loop and kind, as README recommends.

A client's connections (and a pool's worker tasks) belong to the event loop
that opened them, so each loop gets its own client, from a module-level
registry keyed by the running loop. `close_loop_clients` closes the running
loop's clients; the async ``request_finished`` receiver calls it.

With the adapter a request has one loop: the middleware and the view share one
client, and the receiver, running on that loop, closes it. Under stock Django
every ``async_to_sync`` call has a loop of its own: the middleware and the view
each create a client, and the receiver's loop has none to close.

The counters (`stats`) let the test check that every client created was closed.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings


async def _open_psycopg_pool() -> Any:
    from psycopg_pool import AsyncConnectionPool

    # One connection: min_size=1 with max_size=2 would open a second one when
    # the first request waits for the pool's first connection.
    pool = AsyncConnectionPool(
        settings.PSYCOPG_DSN, min_size=1, max_size=1, open=False, timeout=10
    )
    await pool.open()  # starts the pool's worker tasks, alive until close()
    return pool


async def _echo_psycopg_pool(pool: Any, value: int) -> int:
    async with pool.connection() as connection:
        cursor = await connection.execute("SELECT %s::int", [value])
        row = await cursor.fetchone()
    return int(row[0])


async def _close_psycopg_pool(pool: Any) -> None:
    await pool.close()


async def _open_asyncpg() -> Any:
    import asyncpg

    return await asyncpg.create_pool(settings.ASYNCPG_DSN, min_size=1, max_size=1)


async def _echo_asyncpg(pool: Any, value: int) -> int:
    return int(await pool.fetchval("SELECT $1::int", value))


async def _close_asyncpg(pool: Any) -> None:
    await pool.close()


async def _open_redis() -> Any:
    from redis.asyncio import Redis

    return Redis.from_url(settings.REDIS_URL, socket_timeout=10)


async def _echo_redis(client: Any, value: int) -> int:
    return int(await client.echo(str(value)))


async def _close_redis(client: Any) -> None:
    await client.aclose()


async def _open_httpx() -> Any:
    import httpx

    return httpx.AsyncClient(base_url=settings.HTTP_URL, timeout=10)


async def _echo_httpx(client: Any, value: int) -> int:
    response = await client.get(f"/echo/{value}")
    response.raise_for_status()
    return int(response.text)


async def _close_httpx(client: Any) -> None:
    await client.aclose()


async def _open_aiohttp() -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        base_url=settings.HTTP_URL, timeout=aiohttp.ClientTimeout(total=10)
    )


async def _echo_aiohttp(session: Any, value: int) -> int:
    async with session.get(f"/echo/{value}") as response:
        response.raise_for_status()
        return int(await response.text())


async def _close_aiohttp(session: Any) -> None:
    await session.close()


@dataclass(frozen=True)
class Kind:
    open: Callable[[], Awaitable[Any]]
    echo: Callable[[Any, int], Awaitable[int]]
    close: Callable[[Any], Awaitable[None]]


KINDS = {
    "psycopg_pool": Kind(_open_psycopg_pool, _echo_psycopg_pool, _close_psycopg_pool),
    "asyncpg": Kind(_open_asyncpg, _echo_asyncpg, _close_asyncpg),
    "redis": Kind(_open_redis, _echo_redis, _close_redis),
    "httpx": Kind(_open_httpx, _echo_httpx, _close_httpx),
    "aiohttp": Kind(_open_aiohttp, _echo_aiohttp, _close_aiohttp),
}


class _LoopClients:
    """One loop's clients, by kind."""

    def __init__(self) -> None:
        self.clients: dict[str, Any] = {}
        self.lock = asyncio.Lock()  # one opening per kind, even if tasks race


#: loop -> its clients. Entries are removed by `close_loop_clients`; an entry
#: whose clients refer to their loop (open connections do) keeps the loop alive.
_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = (
    weakref.WeakKeyDictionary()
)
#: Loops' threads touch the registry and the counters: guard them.
_lock = threading.Lock()
created: Counter[str] = Counter()
closed: Counter[str] = Counter()
#: /use/ requests whose request_finished receiver ran, by kind.
finished: Counter[str] = Counter()
close_errors: list[str] = []


async def client(kind: str) -> Any:
    """The running loop's client of *kind* (opened on first use in this loop)."""
    loop = asyncio.get_running_loop()
    with _lock:
        held = _registry.get(loop)
        if held is None:
            held = _registry[loop] = _LoopClients()
    async with held.lock:
        found = held.clients.get(kind)
        if found is None:
            found = held.clients[kind] = await KINDS[kind].open()
            with _lock:
                created[kind] += 1
    return found


async def echo(kind: str, value: int) -> int:
    """*value*, sent through the running loop's client of *kind* and back."""
    return await KINDS[kind].echo(await client(kind), value)


async def close_loop_clients() -> None:
    """Close the running loop's clients, if it has any."""
    with _lock:
        held = _registry.pop(asyncio.get_running_loop(), None)
    if held is None:
        return
    for kind, found in held.clients.items():
        try:
            await KINDS[kind].close(found)
        except Exception as exc:
            with _lock:
                close_errors.append(f"{kind}: {exc!r}")
        else:
            with _lock:
                closed[kind] += 1


def stats() -> dict[str, Any]:
    with _lock:
        return {
            "created": dict(created),
            "closed": dict(closed),
            "finished": dict(finished),
            "close_errors": list(close_errors),
            "loops_holding_clients": len(_registry),
        }
