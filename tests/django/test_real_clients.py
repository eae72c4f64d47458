"""Issue #21: loop-bound client libraries under WSGI, through a real gunicorn.

The example project ``tests/django_project/clients_example`` (Django 6.1) behind
gunicorn gthread, 1 worker with 1 and with 4 request threads: a sync middleware
and an async view send values through one client per event loop (a
module-level registry keyed by the running loop), and an async
``request_finished`` receiver closes the running loop's clients. One case per
library:

- ``psycopg_pool``: psycopg_pool ``AsyncConnectionPool`` (``open()`` starts
  worker tasks that live as long as the pool) and ``asyncpg``: an asyncpg pool,
  both on a PostgreSQL server this module starts (``servers.PostgresServer``,
  with ``log_connections`` on so that its log counts the connections opened);
- ``redis``: ``redis.asyncio`` on a redis-server (``servers.RedisServer``;
  ``INFO stats`` counts the connections);
- ``httpx`` and ``aiohttp``: against a small threaded HTTP/1.1 server on
  127.0.0.1 in this process (`servers.EchoServer`), which counts the connections it
  accepts and those still open.

Each case runs with stock Django and with the adapter in ``INSTALLED_APPS``.
Measured: errors (a response that is not 200 with the expected body), server
connections opened per request, server connections still open after the run,
clients created and closed (the project counts them; ``/stats/``), the server
log's tracebacks, and the median time per request (printed only: no test
asserts a duration).

With the adapter a request has one loop: the middleware and the view share one
client, which opens one connection, and the receiver closes it on that loop:
1 connection per request, none left open, every client closed. Under stock
Django each ``async_to_sync`` call has a loop of its own: the middleware and the
view each create a client (2 connections per request), the receiver's loop has
none, and nothing is ever closed: every connection stays open, held by the
registry (an open connection refers to its loop, so the loop never leaves the
weak-keyed registry).

Runs in the Django 6.1 cells of ``tests/run.py`` (which install psycopg-pool,
asyncpg, httpx, aiohttp, redis-py, redis-server and PostgreSQL); skipped
elsewhere.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import django
import pytest

if django.VERSION[:2] < (6, 1):
    pytest.skip(
        f"the real-client cases run on Django 6.1 (this is {django.__version__})",
        allow_module_level=True,
    )
pytest.importorskip("psycopg", reason="needs psycopg 3 (Django 6.1 cells)")
pytest.importorskip("psycopg_pool", reason="needs psycopg-pool (Django 6.1 cells)")
pytest.importorskip("asyncpg", reason="needs asyncpg (Django 6.1 cells)")
pytest.importorskip("redis", reason="needs redis-py (Django cells)")
pytest.importorskip("httpx", reason="needs httpx (Django 6.1 cells)")
pytest.importorskip("aiohttp", reason="needs aiohttp (Django 6.1 cells)")

from servers import (
    REQUEST_TIMEOUT,
    START_TIMEOUT,
    EchoServer,
    PostgresServer,
    ProjectServer,
    RedisServer,
    postgres_missing,
    redis_server_binary,
    run_clients,
    wait_until,
)

pytestmark = [
    # In CI, tests/run.py installs PostgreSQL and redis-server: missing there
    # is a failure (see the fixtures).
    pytest.mark.skipif(
        postgres_missing() is not None and not os.environ.get("CI"),
        reason=str(postgres_missing()),
    ),
    pytest.mark.skipif(
        redis_server_binary() is None and not os.environ.get("CI"),
        reason="needs redis-server",
    ),
    pytest.mark.timeout(180),
]

KINDS = ("psycopg_pool", "asyncpg", "redis", "httpx", "aiohttp")
POSTGRES_KINDS = ("psycopg_pool", "asyncpg")
THREADS = (1, 4)
#: Requests per case. Stock Django leaves two PostgreSQL connections open per
#: request (one per loop) until its server stops: 2 kinds x 2 x REQUESTS stays
#: below MAX_CONNECTIONS.
REQUESTS = 40
MAX_CONNECTIONS = 300
#: How long the adapter's closed connections may take to show as closed on the
#: servers' side.
CLOSE_WAIT = 5.0
APP = "clients_example.wsgi:application"
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception): .*$", re.M)
_AUTHORIZED = re.compile(r"connection authorized: user=\S+ database=(\S+)")

_groups = itertools.count()


# ------------------------------------------------------------------- servers


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    missing = postgres_missing()
    if missing is not None:
        pytest.fail(f"CI is set and PostgreSQL cannot start: {missing}")
    server = PostgresServer(max_connections=MAX_CONNECTIONS)
    try:
        # Log every connection: the log counts the connections opened per
        # database (for new sessions once the server has reloaded).
        server.admin.execute("ALTER SYSTEM SET log_connections = on")
        server.admin.execute("SELECT pg_reload_conf()")
        marker = f"loopshare_log_check_{os.getpid()}"
        server.create_database(marker)

        def logs_connections() -> bool:
            import psycopg

            psycopg.connect(server.dsn(marker), connect_timeout=5).close()
            return marker in _AUTHORIZED.findall(server.log())

        wait_until(logs_connections, START_TIMEOUT, "log_connections to apply")
        yield server
    finally:
        server.stop()


class Backends:
    """The servers one gunicorn's clients talk to: two PostgreSQL databases,
    a redis-server and an `EchoServer`, each counting connections."""

    def __init__(self, postgres: PostgresServer, tag: str) -> None:
        self.postgres = postgres
        self.databases = {kind: f"clients_{tag}_{kind}" for kind in POSTGRES_KINDS}
        for database in self.databases.values():
            postgres.create_database(database)
        self.redis = RedisServer()
        try:
            self.http = EchoServer()
        except BaseException:
            self.redis.stop()
            raise

    def env(self) -> dict[str, str]:
        port = self.postgres.port
        return {
            "LOOPSHARE_PSYCOPG_DSN": self.postgres.dsn(self.databases["psycopg_pool"]),
            "LOOPSHARE_ASYNCPG_DSN": (
                f"postgresql://postgres@127.0.0.1:{port}/{self.databases['asyncpg']}"
            ),
            "LOOPSHARE_REDIS_URL": self.redis.url,
            "LOOPSHARE_HTTP_URL": self.http.url,
        }

    def opened(self, kind: str) -> int:
        """Connections the *kind*'s server has accepted so far."""
        if kind in POSTGRES_KINDS:
            found = _AUTHORIZED.findall(self.postgres.log())
            return found.count(self.databases[kind])
        if kind == "redis":
            return self.redis.connections_received()
        with self.http.lock:
            return self.http.accepted

    def open_now(self, kind: str) -> int:
        """Client connections open to the *kind*'s server now."""
        if kind in POSTGRES_KINDS:
            return self.postgres.client_connections(self.databases[kind])
        if kind == "redis":
            return self.redis.connected_clients()
        with self.http.lock:
            return self.http.open

    def stop(self) -> None:
        try:
            self.http.stop()
        finally:
            self.redis.stop()


class Gunicorn(ProjectServer):
    """The example project behind gunicorn gthread (1 worker, *threads*)."""

    def __init__(self, backends: Backends, adapter: bool, threads: int) -> None:
        super().__init__(
            APP,
            "clients_example.settings",
            adapter=adapter,
            threads=threads,
            label="gunicorn",
            env=backends.env(),
            workdir_prefix="loopshare-clients-",
        )

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/stats/")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result


# ------------------------------------------------------------------- figures


@dataclass
class Figures:
    """What REQUESTS requests to ``/use/<kind>/<n>/`` did."""

    kind: str
    mode: str
    threads: int
    requests: int
    errors: int
    #: Requests whose request_finished receiver ran.
    finished: int
    opened: int
    left_open: int
    created: int
    closed: int
    tracebacks: int
    median_ms: float
    close_errors: list[str] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    #: The server log's exception lines, most frequent first, with their counts.
    exceptions: list[tuple[str, int]] = field(default_factory=list)

    @property
    def label(self) -> str:
        threads = f"{self.threads} thread{'s' if self.threads > 1 else ''}"
        return f"clients/{self.kind:<12} gunicorn gthread {threads:<9} {self.mode:<7}"

    def line(self) -> str:
        return (
            f"{self.label} errors={self.errors}/{self.requests} "
            f"connections opened={self.opened:>2} "
            f"({self.opened / self.requests:.2f}/request) "
            f"left open={self.left_open:>2} "
            f"clients closed={self.closed:>2}/{self.created:<2} "
            f"median {self.median_ms:5.1f} ms/request "
            f"tracebacks={self.tracebacks}"
        )


def measure_kind(
    server: Gunicorn, backends: Backends, kind: str, threads: int
) -> Figures:
    """REQUESTS requests to ``/use/<kind>/<n>/``: one after another with one
    server thread, from as many clients at once as there are server threads
    otherwise; then the counters, once every request_finished receiver ran."""
    opened_before = backends.opened(kind)
    open_before = backends.open_now(kind)
    log_before = len(server.log())
    errors: list[str] = []
    durations: list[float] = []
    lock = threading.Lock()

    def client(numbers: range) -> None:
        for number in numbers:
            path = f"/use/{kind}/{number}/"
            expected = " ".join(map(str, [kind, *range(number, number + 4)])).encode()
            started = time.perf_counter()
            try:
                status, body = server.get(path)
            except OSError as exc:
                status, body = 0, repr(exc).encode()
            elapsed = time.perf_counter() - started
            with lock:
                durations.append(elapsed)
                if (status, body) != (200, expected):
                    errors.append(f"{path}: {status} {body[:200]!r}")

    run_clients(client, REQUESTS, threads, REQUEST_TIMEOUT * REQUESTS)

    # request_finished runs after the response was sent: wait (bounded) for
    # the last requests' receivers, which count a request once they closed
    # its loop's clients.
    deadline = time.monotonic() + REQUEST_TIMEOUT
    while True:
        stats = server.stats()
        finished = int(stats["finished"].get(kind, 0))
        if finished >= REQUESTS or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    created = int(stats["created"].get(kind, 0))
    closed = int(stats["closed"].get(kind, 0))

    def left_open() -> int:
        return max(backends.open_now(kind) - open_before, 0)

    if finished >= REQUESTS and closed == created:
        # Every client was closed: give the servers time to see the closes.
        deadline = time.monotonic() + CLOSE_WAIT
        while left_open() and time.monotonic() < deadline:
            time.sleep(0.05)
    log = server.log()[log_before:]
    return Figures(
        kind=kind,
        mode=server.mode,
        threads=threads,
        requests=REQUESTS,
        errors=len(errors),
        finished=finished,
        opened=backends.opened(kind) - opened_before,
        left_open=left_open(),
        created=created,
        closed=closed,
        tracebacks=log.count("Traceback (most recent call last)"),
        median_ms=statistics.median(durations) * 1000,
        close_errors=[e for e in stats["close_errors"] if e.startswith(f"{kind}:")],
        error_samples=errors[:3],
        exceptions=Counter(_EXCEPTION_LINE.findall(log)).most_common(3),
    )


def measure(
    postgres: PostgresServer, adapter: bool, threads: int
) -> dict[str, Figures]:
    """Every kind's case on one gunicorn (and one set of backends), in turn."""
    tag = f"{'adapter' if adapter else 'stock'}_{threads}_{next(_groups)}"
    backends = Backends(postgres, tag)
    try:
        server = Gunicorn(backends, adapter, threads)
        try:
            return {
                kind: measure_kind(server, backends, kind, threads) for kind in KINDS
            }
        finally:
            server.stop()
    finally:
        backends.stop()


@pytest.fixture(scope="module")
def measured(postgres: PostgresServer) -> Any:
    """``measured(adapter, threads)``: every kind's figures, measured once."""
    if redis_server_binary() is None:
        pytest.fail("CI is set and there is no redis-server")
    results: dict[tuple[bool, int], dict[str, Figures]] = {}

    def get(adapter: bool, threads: int) -> dict[str, Figures]:
        if (adapter, threads) not in results:
            results[adapter, threads] = measure(postgres, adapter, threads)
        return results[adapter, threads]

    return get


# --------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("threads", THREADS)
def test_adapter_one_connection_per_request_every_client_closed(
    measured: Any, threads: int, kind: str, figures: list[Figures]
) -> None:
    result: Figures = measured(True, threads)[kind]
    figures.append(result)
    details = (result.exceptions, result.error_samples, result.close_errors)
    assert result.errors == 0, details
    assert result.tracebacks == 0, details
    assert result.finished == REQUESTS
    # The middleware and the view share the request's client: one connection.
    assert result.opened == REQUESTS, details
    assert result.created == REQUESTS
    assert result.closed == result.created, details
    assert result.close_errors == []
    assert result.left_open == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("threads", THREADS)
def test_stock_django_two_clients_per_request_none_closed(
    measured: Any, threads: int, kind: str, figures: list[Figures]
) -> None:
    result: Figures = measured(False, threads)[kind]
    figures.append(result)
    details = (result.exceptions, result.error_samples, result.close_errors)
    assert result.errors == 0, details
    assert result.tracebacks == 0, details
    assert result.finished == REQUESTS
    # A client per async_to_sync call: the middleware's and the view's.
    assert result.created == 2 * REQUESTS
    assert result.opened == 2 * REQUESTS, details
    # The receiver's loop holds no client: nothing is closed, all stays open.
    assert result.closed == 0
    assert result.left_open == result.opened


def test_echo_server_counts_connections() -> None:
    """`EchoServer` counts a keep-alive connection once, and its close."""
    server = EchoServer()
    try:
        port = int(server.url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        for text in ("a", "b"):
            connection.request("GET", f"/echo/{text}")
            assert connection.getresponse().read() == text.encode()
        assert (server.accepted, server.open) == (1, 1)
        connection.close()
        wait_until(lambda: server.open == 0, 5, "the echo server to see the close")
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        wait_until(lambda: server.accepted == 2, 5, "a second connection")
    finally:
        server.stop()
