"""A module-level ``redis.asyncio`` client across a Flask request's async hooks,
against a real redis-server."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from asgiref.sync import async_to_sync

from asgiref_loopshare._thread_scope import thread_scope
from asgiref_loopshare.flask import LoopShare
from tests.flask.conftest import RedisApp, RedisServer
from tests.wsgi_helpers import ServerThread, serve_fully

REQUESTS = 10


def serve_requests(app: RedisApp, count: int = REQUESTS) -> list[str]:
    statuses = []
    for _ in range(count):
        try:
            statuses.append(serve_fully(app.app).status)
        except Exception as exc:  # stock: teardown's aclose() may raise
            statuses.append(repr(exc))
    return statuses


# -- request scope


@pytest.fixture
def request_scoped(redis_app: Callable[..., RedisApp]) -> RedisApp:
    app = redis_app(close_at_teardown=True)
    LoopShare(app.app)
    return app


def test_request_scope_every_hook_succeeds(request_scoped: RedisApp) -> None:
    statuses = serve_requests(request_scoped)
    assert statuses == ["200 OK"] * REQUESTS
    assert request_scoped.errors == []


def test_request_scope_opens_one_connection_per_request(
    request_scoped: RedisApp, redis_server: RedisServer
) -> None:
    before = redis_server.connections_received()
    serve_requests(request_scoped)
    assert redis_server.connections_received() - before == REQUESTS


def test_request_scope_leaves_no_connection_open(
    request_scoped: RedisApp, redis_server: RedisServer
) -> None:
    serve_requests(request_scoped)
    assert redis_server.connected_clients() == 0


# -- thread scope


@pytest.fixture
def thread_scoped(
    redis_app: Callable[..., RedisApp], server_thread: ServerThread
) -> Iterator[RedisApp]:
    app = redis_app(close_at_teardown=False)
    LoopShare(app.app, scope="thread")
    yield app

    def close_client() -> None:
        # On the thread's loop, where the connection lives, before it ends.
        scope = thread_scope()
        token = scope.activate()
        try:
            async_to_sync(app.client.aclose)()
        finally:
            scope.deactivate(token)

    server_thread(close_client)


def test_thread_scope_every_hook_succeeds(
    thread_scoped: RedisApp, server_thread: ServerThread
) -> None:
    statuses = server_thread(lambda: serve_requests(thread_scoped))
    assert statuses == ["200 OK"] * REQUESTS
    assert thread_scoped.errors == []


def test_thread_scope_opens_one_connection_for_all_requests_of_a_thread(
    thread_scoped: RedisApp, server_thread: ServerThread, redis_server: RedisServer
) -> None:
    before = redis_server.connections_received()
    server_thread(lambda: serve_requests(thread_scoped))
    assert redis_server.connections_received() - before == 1


# -- stock Flask, for contrast


def test_stock_flask_cannot_share_the_client_between_hooks(
    redis_app: Callable[..., RedisApp],
) -> None:
    # Each hook runs on a loop of its own, closed when the hook returns: the
    # connection the first hook opened belongs to a closed loop.
    app = redis_app(close_at_teardown=True)
    statuses = serve_requests(app, 3)
    assert "200 OK" not in statuses
