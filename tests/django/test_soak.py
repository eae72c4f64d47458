"""Short soak (CI): gunicorn gthread and waitress serving the example project with
the adapter on, a bounded mix of requests over keep-alive connections (see
``soak.py``). Nothing served may fail, and nothing may grow with the number of
requests served: threads, open fds, Redis connections. No wall-clock thresholds.

The full run (10 000 requests per server) is ``benchmarks/soak.py``.
"""

from __future__ import annotations

import pytest
from servers import redis_server_binary
from soak import SERVER_THREADS, SOAK_KINDS, soak

pytestmark = [
    pytest.mark.skipif(
        redis_server_binary() is None,
        reason="needs redis-server (Debian package redis-server)",
    ),
    pytest.mark.timeout(150),
]

REQUESTS = 400
CLIENTS = 6  # more clients than server threads: connections queue, as in production
TIME_CAP = 100.0  # a bound on the run, not a threshold: hitting it is reported


@pytest.mark.parametrize("kind", SOAK_KINDS)
def test_soak(kind: str) -> None:
    result = soak(kind, REQUESTS, CLIENTS, TIME_CAP)
    print(result.summary())
    assert result.start is not None
    assert result.end is not None
    assert result.completed > 0
    assert result.errors == 0, result.error_samples
    assert result.tracebacks == 0
    # asgiref-loopshare keeps a worker thread per context that was ever running
    # at once (README "Threads"), started lazily, so the count may still grow
    # after the warm-up, up to the server's concurrency: 4 request threads, and
    # under waitress also the file responses whose close (which ends their
    # context) is still pending on its main thread, at most one per client
    # connection. Never with the number of requests served (400 here).
    assert result.end.threads <= result.start.threads + SERVER_THREADS + CLIENTS
    assert abs(result.delta("fds")) <= 4
    assert result.end.redis_clients <= result.start.redis_clients
    assert result.end.gc_garbage == result.start.gc_garbage
    assert result.end.pid == result.start.pid  # gunicorn did not replace its worker
