"""The example project behind real servers: runserver, gunicorn gthread, waitress.

Each server runs in its own process with its own redis-server, started once per
session on first use and stopped at the end (see ``servers.py``). The Redis
figures (stock vs adapter) are printed in pytest's terminal summary.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator

import pytest
from servers import (
    KINDS,
    DjangoServer,
    RedisFigures,
    measure_redis,
    redis_server_binary,
)

pytestmark = [
    pytest.mark.skipif(
        redis_server_binary() is None,
        reason="needs redis-server (Debian package redis-server)",
    ),
    pytest.mark.timeout(300),
]

REQUESTS = 20
_probe_ids = itertools.count()

GetServer = Callable[[str, bool], DjangoServer]


@pytest.fixture(scope="session")
def servers() -> Iterator[GetServer]:
    """Start each (kind, adapter) server once, on first use; stop all at the end."""
    started: dict[tuple[str, bool], DjangoServer] = {}

    def get(kind: str, adapter: bool) -> DjangoServer:
        if (kind, adapter) not in started:
            started[kind, adapter] = DjangoServer(kind, adapter)
        return started[kind, adapter]

    yield get
    for server in started.values():
        server.stop()


@pytest.fixture(params=KINDS)
def adapter_server(request: pytest.FixtureRequest, servers: GetServer) -> DjangoServer:
    return servers(request.param, True)


@pytest.fixture(params=KINDS)
def stock_server(request: pytest.FixtureRequest, servers: GetServer) -> DjangoServer:
    return servers(request.param, False)


def new_probe() -> str:
    return f"probe{next(_probe_ids)}"


def loops(events: list[dict[str, object]]) -> set[object]:
    return {event["loop"] for event in events}


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize(
    "path",
    ["/sync/", "/async/", "/orm/", "/stream/sync/", "/stream/async/", "/file/"],
)
def test_every_example_view_answers_through_the_server(
    adapter_server: DjangoServer, path: str
) -> None:
    tracebacks = adapter_server.tracebacks()
    status, body = adapter_server.get(path)
    assert status == 200
    assert body
    assert adapter_server.tracebacks() == tracebacks


@pytest.mark.parametrize("path", ["/async/", "/orm/", "/stream/async/"])
def test_a_request_runs_on_one_loop_until_request_finished(
    adapter_server: DjangoServer, path: str
) -> None:
    probe_id = new_probe()
    assert adapter_server.get(path, probe_id)[0] == 200
    events = adapter_server.events(probe_id)
    assert {"request_started", "middleware", "request_finished"} <= {
        event["where"] for event in events
    }
    assert len(loops(events)) == 1


def test_a_4mib_file_response_runs_request_finished_on_the_request_loop(
    adapter_server: DjangoServer,
) -> None:
    """waitress closes such a response from its main thread, not the task's."""
    probe_id = new_probe()
    status, body = adapter_server.get("/file/", probe_id)
    assert (status, len(body)) == (200, 4 * 1024 * 1024)
    events = adapter_server.events(probe_id)
    assert len(loops(events)) == 1


def test_stock_django_runs_one_request_on_several_loops(
    stock_server: DjangoServer,
) -> None:
    probe_id = new_probe()
    assert stock_server.get("/async/", probe_id)[0] == 200
    events = stock_server.events(probe_id)
    assert len(loops(events)) >= 3


def test_redis_with_the_adapter_one_connection_per_request_closed_at_the_end(
    adapter_server: DjangoServer, figures: list[RedisFigures]
) -> None:
    result = measure_redis(adapter_server, "/redis/", REQUESTS)
    figures.append(result)
    assert result.ok == REQUESTS
    assert result.connections_opened <= REQUESTS
    assert result.connections_left_open == 0
    assert result.server_tracebacks == 0


def test_redis_under_stock_django_fails_and_leaks_connections(
    stock_server: DjangoServer, figures: list[RedisFigures]
) -> None:
    result = measure_redis(stock_server, "/redis/", REQUESTS)
    figures.append(result)
    assert result.failed > 0
    assert result.connections_left_open > 0


@pytest.mark.parametrize("kind", ["gunicorn", "waitress"])
def test_a_client_per_request_loop_serves_overlapping_requests(
    servers: GetServer, kind: str, figures: list[RedisFigures]
) -> None:
    result = measure_redis(servers(kind, True), "/redis/per-loop/", REQUESTS * 2, 4)
    figures.append(result)
    assert result.ok == REQUESTS * 2
    assert result.connections_opened <= REQUESTS * 2
    assert result.connections_left_open == 0
    assert result.server_tracebacks == 0


def test_the_probe_endpoint_is_json(adapter_server: DjangoServer) -> None:
    assert json.loads(adapter_server.get("/probe/none/")[1]) == {"events": []}
