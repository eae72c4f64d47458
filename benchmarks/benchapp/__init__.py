"""The Django project of the benchmarks (no database, no templates).

``BENCH_PROFILE`` (environment) picks the middleware and signal receivers:

- ``wsgi``: sync-only middleware, nothing async anywhere (scenario 3);
- ``k1``: one async view, nothing else async;
- ``k3``: an async-only middleware + async view + async ``request_finished``
  receiver;
- ``k10``: a sync middleware calling an async client through ``async_to_sync``
  9 times + an async view;
- ``redis``: views using a module-level ``redis.asyncio`` client, closed by an
  async ``request_finished`` receiver (scenario 5);
- ``mixed``: sync, async and fan-out views behind sync middleware (scenario 6);
- ``project``: the middleware and contrib apps ``django-admin startproject``
  writes, nothing async (scenario 3's second A/B).
"""
