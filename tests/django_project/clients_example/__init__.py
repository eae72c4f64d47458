"""A third example project: loop-bound client libraries under WSGI (issue #21).

A sync middleware and an async view use one client per event loop, from a
module-level registry keyed by the running loop (``clients.py``), and an async
``request_finished`` receiver closes the clients of its loop (``receivers.py``),
as README describes the pattern. Each request picks one kind of client,
``/use/<kind>/<number>/``:

- ``psycopg_pool``: a psycopg_pool ``AsyncConnectionPool`` (its ``open()`` starts
  worker tasks that live as long as the pool);
- ``asyncpg``: an asyncpg pool;
- ``redis``: a ``redis.asyncio`` client;
- ``httpx``: an ``httpx.AsyncClient``;
- ``aiohttp``: an ``aiohttp.ClientSession``.

The middleware sends ``number`` through the client (one ``async_to_sync``
call); the view sends ``number + 1`` to ``number + 3``; the body names what came
back, e.g. ``redis 7 8 9 10``. ``/stats/`` (a sync view) answers, as JSON, how
many clients each kind created and closed, how many ``/use/`` requests have
finished (their ``request_finished`` receiver ran) and how many loops still hold
clients.

Environment variables:

- ``LOOPSHARE_ADAPTER``: ``"1"`` (default) adds ``"asgiref_loopshare.django"`` to
  ``INSTALLED_APPS``; ``"0"`` serves the same project with stock Django.
- ``LOOPSHARE_PSYCOPG_DSN``, ``LOOPSHARE_ASYNCPG_DSN``: PostgreSQL databases;
  ``LOOPSHARE_REDIS_URL``: a Redis server; ``LOOPSHARE_HTTP_URL``: an HTTP server
  answering ``GET /echo/<text>`` with ``<text>``. A kind needs only its own.

Needs Django 5.0+ (async receivers) and the kind's library: psycopg_pool,
asyncpg, redis, httpx or aiohttp (the Django 6.1 cells of ``tests/run.py``);
``tests/django/test_real_clients.py`` serves it.
"""
