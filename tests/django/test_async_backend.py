"""Issue #20: django-async-backend on a real PostgreSQL, under WSGI.

The example project ``tests/django_project/async_backend_example`` (Django 6.1,
django-async-backend, psycopg 3) behind gunicorn gthread with 1 and with 4
request threads: an async-only middleware runs one query inside
``async with async_new_connection()``, an async view runs three queries on
``async_connections["default"]``, and django-async-backend's async
``request_finished`` receiver closes that connection. The PostgreSQL server is
started by this module (``servers.PostgresServer``), one database per server.

Measured on the same project with stock Django and with the adapter in
``INSTALLED_APPS``: errors, and PostgreSQL client connections still open after
the run. Stock Django answers every request but leaves the view's connection
open, one per request: its ``request_finished`` receiver runs on another loop,
in another thread, and never sees it. With the adapter, every request answers
and nothing is left open. The figures are printed in pytest's terminal summary.

Runs in the Django 6.1 cells of ``tests/run.py`` (which install
django-async-backend, psycopg and Debian's postgresql); skipped elsewhere.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import django
import pytest

if django.VERSION[:2] < (6, 1):
    pytest.skip(
        f"django-async-backend 6.1 needs Django 6.1 (this is {django.__version__})",
        allow_module_level=True,
    )
pytest.importorskip(
    "django_async_backend", reason="needs django-async-backend (Django 6.1 cells)"
)
pytest.importorskip("psycopg", reason="needs psycopg 3 (psycopg[binary])")

from servers import (
    REQUEST_TIMEOUT,
    PostgresServer,
    ProjectServer,
    postgres_missing,
    run_clients,
)

pytestmark = [
    # In CI, tests/run.py installs PostgreSQL: missing there is a failure.
    pytest.mark.skipif(
        postgres_missing() is not None and not os.environ.get("CI"),
        reason=str(postgres_missing()),
    ),
    pytest.mark.timeout(120),
]

#: Requests per server; PostgreSQL's max_connections stays above what stock
#: Django leaves open (one per request), so the leak does not cause errors.
REQUESTS = 80
MAX_CONNECTIONS = 300
#: How long the last requests' request_finished may take to close connections.
CLOSE_WAIT = 5.0
APP = "async_backend_example.wsgi:application"
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception): .*$", re.M)

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    missing = postgres_missing()
    if missing is not None:
        pytest.fail(f"CI is set and PostgreSQL cannot start: {missing}")
    server = PostgresServer(max_connections=MAX_CONNECTIONS)
    try:
        yield server
    finally:
        server.stop()


class Server(ProjectServer):
    """The example project behind gunicorn gthread, on a database of its own."""

    def __init__(self, postgres: PostgresServer, adapter: bool, threads: int) -> None:
        mode = "adapter" if adapter else "stock"
        self.database = f"loopshare_{mode}_{threads}_{next(_databases)}"
        postgres.create_database(self.database)
        super().__init__(
            APP,
            "async_backend_example.settings",
            adapter=adapter,
            threads=threads,
            label=f"gunicorn gthread --threads {threads} {mode}",
            env={
                "LOOPSHARE_PG_HOST": "127.0.0.1",
                "LOOPSHARE_PG_PORT": str(postgres.port),
                "LOOPSHARE_PG_NAME": self.database,
                "LOOPSHARE_PG_USER": "postgres",
            },
            workdir_prefix="loopshare-async-backend-",
        )


@dataclass
class Figures:
    """What *requests* requests to ``/query/<n>/`` did."""

    label: str
    requests: int
    errors: int
    left_open: int
    tracebacks: int
    seconds: float
    error_samples: list[str] = field(default_factory=list)
    #: The server log's exception lines, most frequent first, with their counts.
    exceptions: list[tuple[str, int]] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.label:<44} postgres: errors={self.errors:>3}/{self.requests:<3} "
            f"connections left open={self.left_open:>3} "
            f"server tracebacks={self.tracebacks} ({self.seconds:.1f}s)"
        )


def measure(postgres: PostgresServer, adapter: bool, threads: int) -> Figures:
    """REQUESTS requests: one after another with one server thread, from as many
    clients at once as there are server threads otherwise. An error is a
    response that is not 200 with the body the request's queries make."""
    with Server(postgres, adapter, threads) as server:
        started = time.monotonic()
        errors: list[str] = []
        lock = threading.Lock()

        def client(numbers: range) -> None:
            for number in numbers:
                path = f"/query/{number}/"
                expected = f"{path} {number} {number + 1} {number + 2}".encode()
                try:
                    status, body = server.get(path)
                except OSError as exc:
                    status, body = 0, repr(exc).encode()
                if (status, body) != (200, expected):
                    with lock:
                        errors.append(f"{path}: {status} {body[:200]!r}")

        run_clients(client, REQUESTS, threads, REQUEST_TIMEOUT * REQUESTS)
        seconds = time.monotonic() - started

        # The last requests' request_finished runs after their response was sent.
        def left_open() -> int:
            return postgres.client_connections(server.database)

        deadline = time.monotonic() + CLOSE_WAIT
        while left_open() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = server.log()
        return Figures(
            label=server.label,
            requests=REQUESTS,
            errors=len(errors),
            left_open=left_open(),
            tracebacks=log.count("Traceback (most recent call last)"),
            seconds=seconds,
            error_samples=errors[:3],
            exceptions=Counter(_EXCEPTION_LINE.findall(log)).most_common(3),
        )


@pytest.fixture
def run(
    postgres: PostgresServer, threads: int, figures: list[Figures]
) -> Callable[[bool], Figures]:
    """``run(adapter)``: the figures of `measure` with *threads* server threads,
    also shown in the terminal summary."""

    def measured(adapter: bool) -> Figures:
        result = measure(postgres, adapter=adapter, threads=threads)
        figures.append(result)
        return result

    return measured


@pytest.mark.parametrize("threads", [1, 4])
def test_adapter_answers_every_request_and_leaves_no_connection_open(
    run: Callable[[bool], Figures],
) -> None:
    result = run(True)
    assert result.errors == 0, (result.exceptions, result.error_samples)
    assert result.left_open == 0
    assert result.tracebacks == 0


@pytest.mark.parametrize("threads", [1, 4])
def test_stock_django_leaves_one_connection_open_per_request(
    run: Callable[[bool], Figures],
) -> None:
    result = run(False)
    assert result.errors == 0, (result.exceptions, result.error_samples)
    # Still open after gc.collect() in the server too: a leak, not garbage.
    assert result.left_open == REQUESTS
