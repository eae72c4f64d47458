"""Flask apps for the `asgiref_loopshare.flask` tests (skipped without Flask >= 2.2).

Flask runs every ``async def`` view, hook and error handler through
``app.ensure_sync`` -> ``app.async_to_sync`` -> ``asgiref.sync.async_to_sync``;
the probe app records the running loop in each of them.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("flask")
if tuple(int(p) for p in importlib.metadata.version("flask").split(".")[:2]) < (2, 2):
    pytest.skip("needs Flask >= 2.2", allow_module_level=True)

from flask import Flask, Response

import asgiref_loopshare
from tests.django.servers import RedisServer, redis_server_binary
from tests.wsgi_helpers import ServerThread


@pytest.fixture(autouse=True)
def _asgiref_patch_restored() -> Iterator[None]:
    """LoopShare installs the asgiref patch; undo it after each test."""
    was_installed = asgiref_loopshare.is_installed()
    yield
    if not was_installed:
        asgiref_loopshare.uninstall()


class Probe:
    """Where each async hook of each request ran: (request, hook) -> loop."""

    def __init__(self) -> None:
        self.loops: dict[tuple[int, str], asyncio.AbstractEventLoop] = {}
        self.request = 0

    def next_request(self) -> None:
        self.request += 1

    def record(self, hook: str) -> None:
        self.loops[self.request, hook] = asyncio.get_running_loop()

    def of(self, request: int) -> dict[str, asyncio.AbstractEventLoop]:
        return {hook: loop for (r, hook), loop in self.loops.items() if r == request}

    def loop(self, request: int, hook: str = "view") -> asyncio.AbstractEventLoop:
        return self.loops[request, hook]


@pytest.fixture
def probe() -> Probe:
    return Probe()


@pytest.fixture
def probe_app(probe: Probe) -> Flask:
    """A Flask app whose hooks, views and error handler are all ``async def``."""
    app = Flask(__name__)

    @app.before_request
    async def before() -> None:
        probe.next_request()
        probe.record("before_request")

    @app.route("/")
    async def view() -> str:
        probe.record("view")
        return "ok"

    @app.route("/stream")
    def stream() -> Response:
        async def chunk() -> bytes:
            probe.record("stream")
            return b"chunk"

        def generate() -> Iterator[bytes]:
            # Consumed by the server after the view has returned.
            yield app.ensure_sync(chunk)()

        return Response(generate())

    @app.route("/fail")
    async def fail() -> str:
        probe.record("view")
        raise LookupError("nothing here")

    @app.errorhandler(LookupError)
    async def not_found(error: LookupError) -> tuple[str, int]:
        probe.record("errorhandler")
        return "not found", 404

    @app.after_request
    async def after(response: Response) -> Response:
        probe.record("after_request")
        return response

    @app.teardown_request
    async def teardown(exc: BaseException | None) -> None:
        probe.record("teardown_request")

    return app


@pytest.fixture
def server_thread() -> Iterator[ServerThread]:
    """One long-lived server thread (a gthread or waitress worker thread)."""
    server = ServerThread()
    yield server
    server.stop()


# -- redis (the Django tests' redis-server helper)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    pytest.importorskip("redis", minversion="5")
    if redis_server_binary() is None:
        pytest.skip("needs redis-server (Debian package redis-server)")
    server = RedisServer()
    yield server
    server.stop()


MakeRedisApp = Callable[..., Any]


class RedisApp:
    """A Flask app with one ``redis.asyncio`` client, as a module would hold it,
    used by an async ``before_request``, view and ``after_request``.

    With *close_at_teardown*, an async ``teardown_request`` closes the client's
    connections at the end of each request (the right thing when the request's
    loop ends with it); the pool reconnects on next use.
    """

    def __init__(self, url: str, close_at_teardown: bool) -> None:
        from redis.asyncio import Redis

        self.client = Redis.from_url(url)
        self.errors: list[str] = []
        app = self.app = Flask(__name__)
        client = self.client

        @app.before_request
        async def before() -> None:
            await client.incr("loopshare:before")

        @app.route("/")
        async def view() -> str:
            return str(await client.incr("loopshare:view"))

        @app.after_request
        async def after(response: Response) -> Response:
            await client.incr("loopshare:after")
            return response

        @app.teardown_request
        async def teardown(exc: BaseException | None) -> None:
            if exc is not None:
                self.errors.append(repr(exc))
            if close_at_teardown:
                await client.aclose()


@pytest.fixture
def redis_app(redis_server: RedisServer) -> Callable[..., RedisApp]:
    def make(close_at_teardown: bool = True) -> RedisApp:
        return RedisApp(redis_server.url, close_at_teardown)

    return make
