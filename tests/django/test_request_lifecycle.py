"""One loop per request, from before request_started to after request_finished.

These tests call the WSGI application in-process, as a server would: call,
iterate, close - with the probes of the example project (async middleware,
async receivers) switched on where a test needs them.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import threading
from collections.abc import Awaitable, Callable
from typing import Any
from wsgiref.util import FileWrapper

import pytest
import urls_for_tests
from asgiref.sync import AsyncToSync, async_to_sync
from conftest import Serve, Served, loopshare_threads, make_environ
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_started
from django.http import FileResponse, HttpResponse
from django.test import Client
from django.test.utils import override_settings
from loopshare_example import probe
from loopshare_example.receivers import as_receiver

import asgiref_loopshare.django as loopshare_django
from asgiref_loopshare.django._patch import scope_of

pytestmark = pytest.mark.usefixtures("adapter")


def loops_of(probe_id: str) -> dict[str, int]:
    return {event["where"]: event["loop"] for event in probe.events(probe_id)}


# -- one loop for everything a request runs --------------------------------


@pytest.mark.usefixtures("probes")
def test_middleware_view_and_both_signals_run_on_one_loop(serve: Serve) -> None:
    served = serve("/async/", probe_id="p1")
    served.body()
    served.close()
    loops = loops_of("p1")
    assert set(loops) == {
        "request_started",
        "middleware",
        "view",
        "middleware_after",
        "request_finished",
    }
    assert len(set(loops.values())) == 1


@pytest.mark.usefixtures("probes")
def test_two_requests_get_two_loops(serve: Serve) -> None:
    for probe_id in ("a", "b"):
        served = serve("/async/", probe_id=probe_id)
        served.body()
        served.close()
    assert set(loops_of("a").values()).isdisjoint(loops_of("b").values())


def test_the_loop_is_closed_once_close_returns(
    serve: Serve, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    served = serve("/async/")
    served.body()
    assert not loops_seen[0].is_closed()
    served.close()
    assert loops_seen[0] is loops_seen[1]  # request_finished ran on the loop...
    assert loops_seen[0].is_closed()  # ...which was closed after it


def test_a_request_that_awaits_nothing_starts_no_loop_and_no_thread(
    serve: Serve,
) -> None:
    threads = loopshare_threads()
    served = serve("/sync/")
    scope = scope_of(served.result)
    assert scope is not None
    assert served.body() == b"sync"
    served.close()
    assert not scope.started
    assert loopshare_threads() == threads


# -- edge cases ------------------------------------------------------------


def test_a_view_that_raises_gets_a_500_and_the_loop_still_ends_after_close(
    serve: Serve, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    with override_settings(ROOT_URLCONF="urls_for_tests"):
        served = serve("/raise/")
    assert served.status.startswith("500")
    served.close()
    assert loops_seen[0] is loops_seen[1]
    assert loops_seen[0].is_closed()


def test_a_request_started_receiver_that_raises_ends_the_loop_at_once(
    app: Any, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    async def explode(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver failed")

    request_started.connect(as_receiver(explode), dispatch_uid="explode", weak=False)
    try:
        with pytest.raises(RuntimeError, match="receiver failed"):
            app(make_environ("/async/"), lambda status, headers: None)
    finally:
        request_started.disconnect(dispatch_uid="explode")
    # The async receiver connected before it ran on the request's loop, which
    # was closed when __call__ raised.
    assert len(loops_seen) == 1
    assert loops_seen[0].is_closed()


def test_a_middleware_that_short_circuits_still_gets_one_loop(
    loops_seen: list[asyncio.AbstractEventLoop],
) -> None:
    middleware = urls_for_tests.ShortCircuitMiddleware
    middleware.loops.clear()
    with override_settings(MIDDLEWARE=["urls_for_tests.ShortCircuitMiddleware"]):
        response = WSGIHandler()(make_environ("/async/"), lambda s, h: None)
    assert response.content == b"short-circuited"
    response.close()
    assert loops_seen[0] is middleware.loops[0] is loops_seen[1]
    assert loops_seen[0].is_closed()


@pytest.mark.usefixtures("probes")
def test_a_head_request_runs_on_one_loop_and_ends_it(serve: Serve) -> None:
    served = serve("/async/", method="HEAD", probe_id="head")
    served.close()
    loops = loops_of("head")
    assert "view" in loops
    assert len(set(loops.values())) == 1


@pytest.mark.usefixtures("probes")
def test_a_client_that_disconnects_mid_stream_still_ends_the_loop(
    serve: Serve, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    served = serve("/stream/sync/", probe_id="gone")
    assert served.body(limit=1) == b"chunk-0\n"
    served.close()  # the server gives up after one chunk
    loops = loops_of("gone")
    assert "sync_stream_1" not in loops
    assert loops["sync_stream_0"] == loops["request_finished"]
    assert loops_seen[-1].is_closed()


@pytest.mark.usefixtures("probes")
def test_a_sync_streaming_body_calling_async_code_runs_on_the_request_loop(
    serve: Serve,
) -> None:
    served = serve("/stream/sync/", probe_id="sync-stream")
    assert served.body() == b"chunk-0\nchunk-1\nchunk-2\n"
    served.close()
    loops = loops_of("sync-stream")
    assert {"sync_stream_0", "sync_stream_2", "request_finished"} <= set(loops)
    assert len(set(loops.values())) == 1


@pytest.mark.usefixtures("probes")
@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume")
def test_an_async_streaming_body_is_consumed_on_the_request_loop(
    serve: Serve,
) -> None:
    served = serve("/stream/async/", probe_id="async-stream")
    assert served.body() == b"chunk-0\nchunk-1\nchunk-2\n"
    served.close()
    loops = loops_of("async-stream")
    assert {"async_stream_0", "async_stream_2", "request_finished"} <= set(loops)
    assert len(set(loops.values())) == 1


@pytest.mark.usefixtures("probes")
def test_a_file_response_without_file_wrapper_ends_the_loop_on_close(
    serve: Serve, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    served = serve("/file/", probe_id="file")
    assert len(served.body()) == 4 * 1024 * 1024
    served.close()
    assert len(set(loops_of("file").values())) == 1
    assert loops_seen[-1].is_closed()


@pytest.mark.usefixtures("probes")
def test_a_file_response_with_file_wrapper_returns_the_servers_wrapper(
    serve: Serve,
) -> None:
    served = serve("/file/", file_wrapper=FileWrapper, probe_id="wrapped")
    assert type(served.result) is FileWrapper
    assert len(served.body()) == 4 * 1024 * 1024
    loops = loops_of("wrapped")
    assert "request_finished" not in loops  # the wrapper is not closed yet
    served.close()
    loops = loops_of("wrapped")
    assert "request_finished" in loops
    assert len(set(loops.values())) == 1


def test_a_file_response_made_before_another_one_ends_the_loop_on_close(
    serve: Serve, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    def view(request: Any) -> FileResponse:
        returned = FileResponse(io.BytesIO(b"returned"))
        FileResponse(io.BytesIO(b"discarded"))  # made last, never served
        return returned

    urls_for_tests.swap_view(view)
    with override_settings(ROOT_URLCONF="urls_for_tests"):
        served = serve("/swap/", file_wrapper=FileWrapper)
    assert type(served.result) is FileWrapper
    assert served.body() == b"returned"
    [started_loop] = loops_seen
    assert not started_loop.is_closed()  # the context lasts until close()
    served.close()
    assert loops_seen == [started_loop, started_loop]  # request_finished too
    assert started_loop.is_closed()


def run_in_thread(function: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            function()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert errors == []


@pytest.mark.usefixtures("probes")
def test_close_on_another_thread_runs_request_finished_on_the_request_loop(
    serve: Serve,
) -> None:
    """Waitress closes a file_wrapper response from its main thread."""
    served = serve("/file/", file_wrapper=FileWrapper, probe_id="elsewhere")
    served.body()
    run_in_thread(served.close)
    loops = loops_of("elsewhere")
    assert "request_finished" in loops
    assert len(set(loops.values())) == 1


@pytest.mark.usefixtures("probes")
def test_close_in_a_copy_of_the_request_context_on_another_thread_uses_the_request_loop(
    serve: Serve,
) -> None:
    served = serve("/sync/", probe_id="copied")
    copy = contextvars.copy_context()  # the request thread's, request context set
    run_in_thread(lambda: copy.run(served.close))
    loops = loops_of("copied")
    assert "request_finished" in loops
    assert len(set(loops.values())) == 1


def test_close_leaves_the_closing_threads_context_as_it_found_it(
    serve: Serve,
) -> None:
    served = serve("/async/")
    served.body()
    seen: list[Any] = []

    def close_in_fresh_context() -> None:
        var = AsyncToSync.async_single_thread_context
        seen.append(var.get(None))
        served.close()
        seen.append(var.get(None))

    contextvars.Context().run(close_in_fresh_context)
    assert seen == [None, None]


def test_the_request_thread_keeps_nothing_but_a_closed_scope_afterwards(
    serve: Serve,
) -> None:
    served = serve("/async/")
    served.body()
    served.close()
    # The scope stays set in this thread's context until the next request;
    # a call made now behaves as stock asgiref: a loop of its own.
    loops: list[asyncio.AbstractEventLoop] = []

    async def keep() -> None:
        loops.append(asyncio.get_running_loop())

    async_to_sync(keep)()
    async_to_sync(keep)()
    assert loops[0] is not loops[1]
    assert loops[0].is_closed()


# -- the request thread's context, reopened by its next request ---------------


@pytest.fixture
def loops() -> list[asyncio.AbstractEventLoop]:
    """The loops `keep` ran on, in order."""
    return []


@pytest.fixture
def threads() -> list[int]:
    """The threads `keep` ran in, in order."""
    return []


@pytest.fixture
def keep(
    loops: list[asyncio.AbstractEventLoop], threads: list[int]
) -> Callable[[], Awaitable[None]]:
    async def keep() -> None:
        loops.append(asyncio.get_running_loop())
        threads.append(threading.get_ident())

    return keep


def serve_view(serve: Serve, view: Callable[[Any], HttpResponse]) -> Served:
    urls_for_tests.swap_view(view)
    with override_settings(ROOT_URLCONF="urls_for_tests"):
        served = serve("/swap/")
    served.body()
    served.close()
    return served


def test_the_next_request_on_a_thread_reopens_its_context_with_a_new_loop(
    serve: Serve,
    keep: Callable[[], Awaitable[None]],
    loops: list[asyncio.AbstractEventLoop],
) -> None:
    contexts = []

    def view(request: Any) -> HttpResponse:
        contexts.append(AsyncToSync.async_single_thread_context.get())
        async_to_sync(keep)()
        async_to_sync(keep)()
        return HttpResponse(b"")

    serve_view(serve, view)
    serve_view(serve, view)
    assert contexts[0] is contexts[1]  # no context variable set per request
    assert loops[0] is loops[1]
    assert loops[2] is loops[3]
    assert loops[1] is not loops[2]
    assert all(loop.is_closed() for loop in loops)


def test_another_thread_with_a_copy_of_the_request_context_runs_as_stock(
    serve: Serve,
    keep: Callable[[], Awaitable[None]],
    loops: list[asyncio.AbstractEventLoop],
    threads: list[int],
) -> None:
    def view(request: Any) -> HttpResponse:
        async_to_sync(keep)()
        copy = contextvars.copy_context()
        run_in_thread(lambda: copy.run(async_to_sync(keep)))
        run_in_thread(lambda: copy.run(async_to_sync(keep)))
        return HttpResponse(b"")

    serve_view(serve, view)
    request_loop, *elsewhere = loops
    assert len({request_loop, *elsewhere}) == 3  # a loop per call, as stock...
    assert threads[0] not in threads[1:]  # ...not on the request's loop thread


def test_a_copy_of_a_finished_requests_context_never_reaches_the_next_request(
    serve: Serve,
    keep: Callable[[], Awaitable[None]],
    loops: list[asyncio.AbstractEventLoop],
) -> None:
    copies: list[contextvars.Context] = []

    def first(request: Any) -> HttpResponse:
        copies.append(contextvars.copy_context())
        return HttpResponse(b"")

    def second(request: Any) -> HttpResponse:
        async_to_sync(keep)()
        run_in_thread(lambda: copies[0].run(async_to_sync(keep)))
        async_to_sync(keep)()
        return HttpResponse(b"")

    serve_view(serve, first)
    serve_view(serve, second)
    assert loops[0] is loops[2]
    assert loops[1] is not loops[0]


def test_a_context_closed_on_another_thread_is_not_reopened(
    serve: Serve, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    served = serve("/file/", file_wrapper=FileWrapper)
    served.body()
    run_in_thread(served.close)
    closed_elsewhere = AsyncToSync.async_single_thread_context.get()
    assert closed_elsewhere.closed
    served = serve("/async/")
    assert scope_of(served.result) is not closed_elsewhere
    served.body()
    served.close()
    assert len(loops_seen) == 4
    assert loops_seen[0] is loops_seen[1]
    assert loops_seen[2] is loops_seen[3]
    assert loops_seen[1] is not loops_seen[2]


def test_uninstall_unsets_the_calling_threads_idle_context(serve: Serve) -> None:
    serve("/sync/").close()
    assert AsyncToSync.async_single_thread_context.get(None) is not None
    loopshare_django.uninstall()
    assert AsyncToSync.async_single_thread_context.get(None) is None


def test_the_orm_through_sync_to_async_then_async_code_again_does_not_hang(
    serve: Serve, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    """The stale-loop trap: sync_to_async runs in the request thread, then a
    later top-level async_to_sync (request_finished) must not wait forever."""
    outcome: dict[str, Any] = {}

    def request() -> None:
        served = serve("/orm/")
        outcome["body"] = served.body()
        served.close()
        outcome["done"] = True

    worker = threading.Thread(target=request, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert outcome.get("done"), "the request hung on a stale event loop"
    assert b'"visits"' in outcome["body"]
    assert loops_seen[0] is loops_seen[-1]


# -- the test client -------------------------------------------------------


@pytest.mark.usefixtures("probes")
def test_the_test_client_runs_a_request_on_one_loop() -> None:
    response = Client().get("/async/", headers={"X-Probe": "client"})
    assert response.status_code == 200
    loops = loops_of("client")
    assert "request_finished" in loops
    assert len(set(loops.values())) == 1


@pytest.mark.usefixtures("probes")
def test_the_test_client_ends_a_streaming_request_after_the_body_is_read() -> None:
    response = Client().get("/stream/sync/", headers={"X-Probe": "client-stream"})
    assert "request_finished" not in loops_of("client-stream")
    assert b"".join(response.streaming_content) == b"chunk-0\nchunk-1\nchunk-2\n"
    loops = loops_of("client-stream")
    assert "request_finished" in loops
    assert len(set(loops.values())) == 1


def test_a_request_made_inside_a_request_gives_the_outer_one_its_loop_back(
    serve: Serve,
) -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    async def keep() -> None:
        loops.append(asyncio.get_running_loop())

    def outer_view(request: Any) -> HttpResponse:
        async_to_sync(keep)()
        assert Client().get("/sync/").content == b"sync"  # a whole request, closed
        async_to_sync(keep)()
        return HttpResponse(b"outer")

    urls_for_tests.swap_view(outer_view)
    with override_settings(ROOT_URLCONF="urls_for_tests"):
        served = serve("/swap/")
    served.close()
    assert loops[0] is loops[1]
    assert loops[0].is_closed()


def test_a_view_returning_a_nested_requests_open_response_ends_both_loops(
    serve: Serve, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    def outer_view(request: Any) -> Any:
        # Streaming: the test client leaves it open, its request's loop too.
        return Client().get("/stream/sync/")

    served = serve_view(serve, outer_view)
    assert served.status.startswith("200")
    outer_loop, inner_loop = loops_seen[:2]  # the two request_started receivers
    assert outer_loop is not inner_loop
    assert outer_loop.is_closed()
    assert inner_loop.is_closed()


def test_a_request_inside_a_request_that_raises_gives_the_outer_one_its_loop_back(
    serve: Serve,
    keep: Callable[[], Awaitable[None]],
    loops: list[asyncio.AbstractEventLoop],
) -> None:
    def explode(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("receiver failed")

    def outer_view(request: Any) -> HttpResponse:
        async_to_sync(keep)()
        request_started.connect(explode, dispatch_uid="explode-inner", weak=False)
        try:
            with pytest.raises(RuntimeError, match="receiver failed"):
                Client().get("/sync/")
        finally:
            request_started.disconnect(dispatch_uid="explode-inner")
        async_to_sync(keep)()
        return HttpResponse(b"outer")

    serve_view(serve, outer_view)
    assert loops[0] is loops[1]
    assert loops[0].is_closed()


def test_uninstall_during_a_request_still_closes_its_loop(
    serve: Serve, loops_seen: list[asyncio.AbstractEventLoop]
) -> None:
    served = serve("/async/")
    served.body()
    loopshare_django.uninstall()
    served.close()
    # request_finished ran as stock asgiref does now (a loop per call), and the
    # request's own loop was closed all the same.
    assert len(loops_seen) == 2
    assert loops_seen[0].is_closed()


class _ForgivingHandler(WSGIHandler):  # type: ignore[misc]
    """A handler subclass that answers when Django's get_response raises."""

    def get_response(self, request: Any) -> HttpResponse:
        try:
            return super().get_response(request)
        except ValueError:
            return HttpResponse(b"fallback")


def test_a_handler_that_answers_after_get_response_raised_still_ends_the_loop(
    loops_seen: list[asyncio.AbstractEventLoop],
) -> None:
    with override_settings(
        ROOT_URLCONF="urls_for_tests", DEBUG_PROPAGATE_EXCEPTIONS=True
    ):
        response = _ForgivingHandler()(make_environ("/raise/"), lambda s, h: None)
    assert response.content == b"fallback"
    assert scope_of(response) is not None
    response.close()
    assert loops_seen[0] is loops_seen[1]
    assert loops_seen[0].is_closed()
