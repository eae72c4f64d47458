"""`asgiref_loopshare.wsgi.LoopShareMiddleware`: one loop per request, any WSGI app."""

from __future__ import annotations

import asyncio
import gc
import http.client
import io
import re
import threading
import weakref
import wsgiref.simple_server
import wsgiref.util
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import AsyncSingleThreadContext, AsyncToSync, async_to_sync

import asgiref_loopshare
from asgiref_loopshare.wsgi import LoopShareMiddleware
from tests.wsgi_helpers import (
    ServerThread,
    StartResponse,
    WSGIApp,
    on_another_thread,
    serve,
    serve_fully,
)


async def running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


class Probe:
    """Where async code ran: ``record(label)`` calls ``async_to_sync`` once."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, asyncio.AbstractEventLoop]] = []
        self.contexts: list[AsyncSingleThreadContext | None] = []

    def record(self, label: str) -> None:
        self.seen.append((label, async_to_sync(running_loop)()))

    def note_context(self) -> None:
        self.contexts.append(AsyncToSync.async_single_thread_context.get(None))

    def loop(self, label: str) -> asyncio.AbstractEventLoop:
        found = [loop for seen, loop in self.seen if seen == label]
        assert len(found) == 1, self.seen
        return found[0]

    def loops(self) -> set[asyncio.AbstractEventLoop]:
        return {loop for _, loop in self.seen}


Wrap = Callable[..., LoopShareMiddleware]


@pytest.fixture
def wrap() -> Iterator[Wrap]:
    """``LoopShareMiddleware(app, scope=...)``; the asgiref patch undone after."""
    was_installed = asgiref_loopshare.is_installed()
    yield LoopShareMiddleware
    if not was_installed:
        asgiref_loopshare.uninstall()


@pytest.fixture
def probe() -> Probe:
    return Probe()


def active_context() -> AsyncSingleThreadContext | None:
    return AsyncToSync.async_single_thread_context.get(None)


def ok(start_response: StartResponse) -> None:
    start_response("200 OK", [("Content-Type", "text/plain")])


# -- applications


class BodyWithClose:
    """An iterable response body (a framework's response object) with close()."""

    def __init__(self, probe: Probe, chunks: list[bytes], close_error: bool = False):
        self.probe = probe
        self.chunks = chunks
        self.close_error = close_error
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.probe.record("body")
            yield chunk

    def close(self) -> None:
        self.closed += 1
        self.probe.record("close")
        if self.close_error:
            raise RuntimeError("close failed")


@pytest.fixture
def calling_app(probe: Probe) -> WSGIApp:
    """Calls async code twice, returns a body that calls it while iterated and
    when closed."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        probe.note_context()
        probe.record("app-1")
        probe.record("app-2")
        ok(start_response)
        return BodyWithClose(probe, [b"a", b"b"])

    return app


@pytest.fixture
def generator_app(probe: Probe) -> WSGIApp:
    """A generator body: async code while iterated and in its finally block."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        ok(start_response)

        def body() -> Iterator[bytes]:
            try:
                probe.record("body")
                yield b"a"
                yield b"b"
            finally:
                probe.record("close")

        return body()

    return app


@pytest.fixture
def sync_app(probe: Probe) -> WSGIApp:
    """Never calls async code."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        probe.note_context()
        ok(start_response)
        return [b"sync"]

    return app


# -- one loop per request


def test_calls_made_by_the_app_share_one_loop(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    serve_fully(wrap(calling_app))
    assert probe.loop("app-1") is probe.loop("app-2")


def test_body_iterated_by_the_server_runs_on_the_request_loop(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    serve_fully(wrap(calling_app))
    body_loops = {loop for label, loop in probe.seen if label == "body"}
    assert body_loops == {probe.loop("app-1")}


def test_close_runs_on_the_request_loop(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    serve_fully(wrap(calling_app))
    assert probe.loop("close") is probe.loop("app-1")


def test_generator_body_and_its_finally_share_one_loop(
    wrap: Wrap, generator_app: WSGIApp, probe: Probe
) -> None:
    served = serve(wrap(generator_app))
    next(iter(served.result))  # the server stops early: close() runs finally
    served.close()
    assert probe.loop("body") is probe.loop("close")


def test_requests_get_different_loops(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    app = wrap(calling_app)
    serve_fully(app)
    first = probe.loop("app-1")
    probe.seen.clear()
    serve_fully(app)
    assert probe.loop("app-1") is not first


def test_loop_stays_open_until_the_response_is_closed(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    served = serve(wrap(calling_app))
    served.body()
    assert not probe.loop("app-1").is_closed()
    served.close()


def test_loop_is_closed_once_the_response_is_closed(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    serve_fully(wrap(calling_app))
    assert probe.loop("app-1").is_closed()


def test_nothing_is_left_active_once_the_app_has_returned(
    wrap: Wrap, calling_app: WSGIApp
) -> None:
    served = serve(wrap(calling_app))
    assert active_context() is None
    served.close()


def test_server_iterating_on_another_thread_runs_the_body_on_the_request_loop(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    served = serve(wrap(calling_app))
    on_another_thread(served.body)
    served.close()
    body_loops = {loop for label, loop in probe.seen if label == "body"}
    assert body_loops == {probe.loop("app-1")}


def test_close_on_another_thread_runs_on_the_request_loop(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    served = serve(wrap(calling_app))
    served.body()
    on_another_thread(served.close)
    assert probe.loop("close") is probe.loop("app-1")


def test_close_on_another_thread_ends_the_request_loop(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    served = serve(wrap(calling_app))
    served.body()
    on_another_thread(served.close)
    assert probe.loop("app-1").is_closed()


def test_close_on_another_thread_leaves_nothing_active_anywhere(
    wrap: Wrap, calling_app: WSGIApp
) -> None:
    served = serve(wrap(calling_app))
    seen_there: list[AsyncSingleThreadContext | None] = []

    def close_then_look() -> None:
        served.close()
        seen_there.append(active_context())

    on_another_thread(close_then_look)
    assert seen_there == [None]
    assert active_context() is None


def test_request_without_async_code_creates_no_loop(
    wrap: Wrap, sync_app: WSGIApp, probe: Probe
) -> None:
    served = serve(wrap(sync_app))
    assert served.body() == b"sync"
    context = probe.contexts[0]
    assert context is not None
    assert context not in AsyncToSync.context_to_thread_executor
    served.close()


# -- the application raises


class AppError(Exception):
    pass


@pytest.fixture
def raising_app(probe: Probe) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        probe.record("app")
        raise AppError

    return app


def test_exception_from_the_app_propagates(wrap: Wrap, raising_app: WSGIApp) -> None:
    with pytest.raises(AppError):
        serve(wrap(raising_app))


def test_exception_from_the_app_ends_the_loop_at_once(
    wrap: Wrap, raising_app: WSGIApp, probe: Probe
) -> None:
    with pytest.raises(AppError):
        serve(wrap(raising_app))
    assert probe.loop("app").is_closed()


def test_exception_from_the_app_leaves_no_scope_active(
    wrap: Wrap, raising_app: WSGIApp
) -> None:
    with pytest.raises(AppError):
        serve(wrap(raising_app))
    assert active_context() is None


# -- close() semantics (PEP 3333)


@pytest.fixture
def body() -> list[BodyWithClose]:
    """The bodies `body_app` returned."""
    return []


@pytest.fixture
def body_app(probe: Probe, body: list[BodyWithClose]) -> Callable[..., WSGIApp]:
    def make(close_error: bool = False) -> WSGIApp:
        def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
            probe.record("app")
            ok(start_response)
            body.append(BodyWithClose(probe, [b"x"], close_error))
            return body[-1]

        return app

    return make


def test_close_is_called_once_when_the_server_closes_twice(
    wrap: Wrap, body_app: Callable[..., WSGIApp], body: list[BodyWithClose]
) -> None:
    served = serve(wrap(body_app()))
    served.close()
    served.close()
    assert body[0].closed == 1


def test_exception_from_close_propagates(
    wrap: Wrap, body_app: Callable[..., WSGIApp]
) -> None:
    served = serve(wrap(body_app(close_error=True)))
    with pytest.raises(RuntimeError, match="close failed"):
        served.close()


def test_exception_from_close_still_ends_the_loop(
    wrap: Wrap, body_app: Callable[..., WSGIApp], probe: Probe
) -> None:
    served = serve(wrap(body_app(close_error=True)))
    with pytest.raises(RuntimeError):
        served.close()
    assert probe.loop("app").is_closed()


def test_iterable_without_close_still_ends_the_loop(wrap: Wrap, probe: Probe) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        probe.record("app")
        ok(start_response)
        return [b"list"]

    assert serve_fully(wrap(app)).content == b"list"
    assert probe.loop("app").is_closed()


def test_sized_iterable_keeps_its_length(wrap: Wrap) -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        ok(start_response)
        return [b"one"]

    served = serve(wrap(app))
    assert len(served.result) == 1  # servers derive Content-Length from this
    served.close()


def test_unsized_iterable_gets_no_length(wrap: Wrap, generator_app: WSGIApp) -> None:
    served = serve(wrap(generator_app))
    assert not hasattr(served.result, "__len__")
    served.close()


def test_iteration_after_close_stops(wrap: Wrap, calling_app: WSGIApp) -> None:
    served = serve(wrap(calling_app))
    served.close()
    assert list(served.result) == []


# -- wsgi.file_wrapper


class InstanceCloseFileWrapper:
    """gunicorn's FileWrapper, verbatim in shape: close copied when built."""

    def __init__(self, filelike: Any, blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data: bytes = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


class ClassCloseFileWrapper:
    """waitress's ReadOnlyFileBasedBuffer in shape: close defined on the class."""

    def __init__(self, file: Any, block_size: int = 32768) -> None:
        self.file = file
        self.block_size = block_size

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        data: bytes = self.file.read(self.block_size)
        if not data:
            raise StopIteration
        return data

    def close(self) -> None:
        if hasattr(self.file, "close"):
            self.file.close()


class SlottedFileWrapper:
    """A file wrapper whose close cannot be hooked (no instance dict)."""

    __slots__ = ("file",)

    def __init__(self, file: Any, block_size: int = 8192) -> None:
        self.file = file

    def __iter__(self) -> Iterator[bytes]:
        return iter([self.file.read()])

    def close(self) -> None:
        self.file.close()


def _real_file_wrappers() -> list[Any]:
    found: list[Any] = []
    try:
        from gunicorn.http.wsgi import FileWrapper as GunicornFileWrapper
    except ImportError:
        pass
    else:
        found.append(pytest.param(GunicornFileWrapper, id="gunicorn"))
    try:
        from waitress.buffers import ReadOnlyFileBasedBuffer
    except ImportError:
        pass
    else:
        found.append(pytest.param(ReadOnlyFileBasedBuffer, id="waitress"))
    return found


FILE_WRAPPERS = [
    pytest.param(wsgiref.util.FileWrapper, id="wsgiref"),
    pytest.param(InstanceCloseFileWrapper, id="instance-close"),
    pytest.param(ClassCloseFileWrapper, id="class-close"),
    *_real_file_wrappers(),
]


class AsyncClosingFile(io.BytesIO):
    """A file whose close() runs async code (a stand-in for a response's close)."""

    def __init__(self, probe: Probe, data: bytes) -> None:
        super().__init__(data)
        self.probe = probe
        self.close_calls = 0

    def close(self) -> None:
        if not self.closed:
            self.close_calls += 1
            self.probe.record("close")
        super().close()


@pytest.fixture
def files() -> list[AsyncClosingFile]:
    """The files `file_app` served."""
    return []


@pytest.fixture
def file_app(probe: Probe, files: list[AsyncClosingFile]) -> WSGIApp:
    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        probe.record("app")
        ok(start_response)
        files.append(AsyncClosingFile(probe, b"file body"))
        return environ["wsgi.file_wrapper"](files[-1], 4)

    return app


@pytest.mark.parametrize("file_wrapper", FILE_WRAPPERS)
def test_file_wrapper_is_returned_as_it_is(
    wrap: Wrap, file_app: WSGIApp, file_wrapper: type
) -> None:
    served = serve(wrap(file_app), file_wrapper=file_wrapper)
    assert type(served.result) is file_wrapper  # servers check it for sendfile
    served.close()


@pytest.mark.parametrize("file_wrapper", FILE_WRAPPERS)
def test_file_wrapper_close_runs_on_the_request_loop(
    wrap: Wrap, file_app: WSGIApp, file_wrapper: type, probe: Probe
) -> None:
    assert (
        serve_fully(wrap(file_app), file_wrapper=file_wrapper).content == b"file body"
    )
    assert probe.loop("close") is probe.loop("app")


@pytest.mark.parametrize("file_wrapper", FILE_WRAPPERS)
def test_file_wrapper_close_ends_the_request_loop(
    wrap: Wrap, file_app: WSGIApp, file_wrapper: type, probe: Probe
) -> None:
    serve_fully(wrap(file_app), file_wrapper=file_wrapper)
    assert probe.loop("app").is_closed()


@pytest.mark.parametrize("file_wrapper", FILE_WRAPPERS)
def test_file_wrapper_closed_on_another_thread_ends_the_request_loop(
    wrap: Wrap, file_app: WSGIApp, file_wrapper: type, probe: Probe
) -> None:
    # waitress closes file responses from its main thread.
    served = serve(wrap(file_app), file_wrapper=file_wrapper)
    served.body()
    on_another_thread(served.close)
    assert probe.loop("close") is probe.loop("app")
    assert probe.loop("app").is_closed()


@pytest.mark.parametrize("file_wrapper", FILE_WRAPPERS)
def test_file_wrapper_gets_its_own_close_back_after_close(
    wrap: Wrap, file_app: WSGIApp, file_wrapper: type, files: list[AsyncClosingFile]
) -> None:
    served = serve(wrap(file_app), file_wrapper=file_wrapper)
    own_close = "close" in vars(file_wrapper(io.BytesIO()))
    served.close()
    if own_close:
        assert vars(served.result)["close"] == files[0].close
    else:
        assert "close" not in vars(served.result)


@pytest.mark.parametrize("file_wrapper", FILE_WRAPPERS)
def test_file_wrapper_closed_twice_closes_the_file_once(
    wrap: Wrap, file_app: WSGIApp, file_wrapper: type, files: list[AsyncClosingFile]
) -> None:
    served = serve(wrap(file_app), file_wrapper=file_wrapper)
    served.close()
    served.close()
    assert files[0].close_calls == 1


def test_file_wrapper_of_a_file_without_close_still_ends_the_loop(
    wrap: Wrap, probe: Probe
) -> None:
    class NoClose:
        def __init__(self) -> None:
            self.data = [b"raw"]

        def read(self, size: int = -1) -> bytes:
            return self.data.pop() if self.data else b""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        probe.record("app")
        ok(start_response)
        return environ["wsgi.file_wrapper"](NoClose())

    served = serve(wrap(app), file_wrapper=wsgiref.util.FileWrapper)
    assert hasattr(served.result, "close")  # servers call it when present
    assert served.body() == b"raw"
    served.close()
    assert probe.loop("app").is_closed()


def test_file_wrapper_that_cannot_be_hooked_is_wrapped(
    wrap: Wrap, file_app: WSGIApp, probe: Probe
) -> None:
    served = serve(wrap(file_app), file_wrapper=SlottedFileWrapper)
    assert not isinstance(served.result, SlottedFileWrapper)
    assert served.body() == b"file body"
    served.close()
    assert probe.loop("close") is probe.loop("app")
    assert probe.loop("app").is_closed()


# -- no reference cycle


@pytest.fixture
def gc_disabled() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class Body:
    """A weak-referenceable response body (lists are not)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe

    def __iter__(self) -> Iterator[bytes]:
        self.probe.record("body")
        yield b"body"

    def close(self) -> None:
        self.probe.record("close")


RESULT_KINDS = ["body", "generator", *(f"file:{i}" for i in range(len(FILE_WRAPPERS)))]


@pytest.fixture(params=RESULT_KINDS)
def weak_result_app(
    request: pytest.FixtureRequest, probe: Probe
) -> tuple[WSGIApp, Any, list[weakref.ref[Any]]]:
    """An app that keeps only weak references to what it returns."""
    kind: str = request.param
    refs: list[weakref.ref[Any]] = []
    file_wrapper = None
    if kind.startswith("file:"):
        file_wrapper = FILE_WRAPPERS[int(kind[5:])].values[0]

    def app(environ: dict[str, Any], start_response: StartResponse) -> Any:
        probe.note_context()
        probe.record("app")
        ok(start_response)
        result: Any
        if kind == "body":
            result = Body(probe)
        elif kind == "generator":
            result = iter(Body(probe))
        else:
            result = environ["wsgi.file_wrapper"](AsyncClosingFile(probe, b"f"))
        refs.append(weakref.ref(result))
        return result

    return app, file_wrapper, refs


def test_returned_iterable_is_freed_by_refcount_after_close(
    wrap: Wrap,
    weak_result_app: tuple[WSGIApp, Any, list[weakref.ref[Any]]],
    gc_disabled: None,
) -> None:
    app, file_wrapper, refs = weak_result_app
    served = serve(wrap(app), file_wrapper=file_wrapper)
    served.body()
    served.close()
    del served
    assert refs[0]() is None


def test_request_scope_is_freed_by_refcount_after_close(
    wrap: Wrap,
    weak_result_app: tuple[WSGIApp, Any, list[weakref.ref[Any]]],
    probe: Probe,
    gc_disabled: None,
) -> None:
    app, file_wrapper, _ = weak_result_app
    served = serve(wrap(app), file_wrapper=file_wrapper)
    context = weakref.ref(probe.contexts.pop())
    served.body()
    served.close()
    del served
    assert context() is None


# -- per-thread scope


@pytest.fixture
def threaded_server() -> Iterator[ServerThread]:
    """One long-lived server thread."""
    server = ServerThread()
    yield server
    server.stop()


def test_thread_scope_requests_on_one_thread_share_a_loop(
    wrap: Wrap,
    calling_app: WSGIApp,
    probe: Probe,
    threaded_server: ServerThread,
) -> None:
    app = wrap(calling_app, scope="thread")
    threaded_server(lambda: serve_fully(app))
    threaded_server(lambda: serve_fully(app))
    assert len(probe.loops()) == 1


def test_thread_scope_loop_stays_open_after_the_response_is_closed(
    wrap: Wrap,
    calling_app: WSGIApp,
    probe: Probe,
    threaded_server: ServerThread,
) -> None:
    app = wrap(calling_app, scope="thread")
    threaded_server(lambda: serve_fully(app))
    assert not probe.loop("app-1").is_closed()


def test_thread_scope_requests_on_different_threads_get_different_loops(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    app = wrap(calling_app, scope="thread")
    on_another_thread(lambda: serve_fully(app))
    on_another_thread(lambda: serve_fully(app))
    assert len({loop for label, loop in probe.seen if label == "app-1"}) == 2


def test_thread_scope_loop_is_closed_when_the_server_thread_exits(
    wrap: Wrap, calling_app: WSGIApp, probe: Probe
) -> None:
    app = wrap(calling_app, scope="thread")
    on_another_thread(lambda: serve_fully(app))
    assert probe.loop("app-1").is_closed()


def test_thread_scope_is_not_left_active_after_the_request(
    wrap: Wrap,
    calling_app: WSGIApp,
    threaded_server: ServerThread,
) -> None:
    app = wrap(calling_app, scope="thread")

    def request_then_look() -> Any:
        serve_fully(app)
        return active_context()

    assert threaded_server(request_then_look) is None


def test_thread_scope_exception_from_the_app_keeps_the_loop(
    wrap: Wrap,
    raising_app: WSGIApp,
    probe: Probe,
    threaded_server: ServerThread,
) -> None:
    app = wrap(raising_app, scope="thread")
    with pytest.raises(AppError):
        threaded_server(lambda: serve(app))
    assert not probe.loop("app").is_closed()


# -- construction


def test_constructing_the_middleware_installs_the_asgiref_patch(
    wrap: Wrap, sync_app: WSGIApp
) -> None:
    asgiref_loopshare.uninstall()
    wrap(sync_app)
    assert asgiref_loopshare.is_installed()


def test_unknown_scope_is_rejected(wrap: Wrap, sync_app: WSGIApp) -> None:
    with pytest.raises(ValueError, match="scope"):
        wrap(sync_app, scope="process")


def test_repr_names_the_app_and_the_scope(wrap: Wrap, sync_app: WSGIApp) -> None:
    assert re.search(r"scope='thread'", repr(wrap(sync_app, scope="thread")))


# -- a real server: wsgiref's


@pytest.fixture
def wsgiref_server(
    wrap: Wrap, calling_app: WSGIApp
) -> Iterator[Callable[[], tuple[int, bytes]]]:
    """The calling app behind wsgiref's WSGIServer on 127.0.0.1 (one thread)."""

    class QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = wsgiref.simple_server.make_server(
        "127.0.0.1", 0, wrap(calling_app), handler_class=QuietHandler
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}
    )
    thread.start()

    def get() -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(
            "127.0.0.1", server.server_port, timeout=30
        )
        try:
            connection.request("GET", "/")
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    try:
        yield get
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=60)


def test_wsgiref_server_request_runs_on_one_loop(
    wsgiref_server: Callable[[], tuple[int, bytes]], probe: Probe
) -> None:
    assert wsgiref_server() == (200, b"ab")
    assert len(probe.loops()) == 1


def test_wsgiref_server_request_loop_is_closed_after_the_response(
    wsgiref_server: Callable[[], tuple[int, bytes]], probe: Probe
) -> None:
    wsgiref_server()
    wsgiref_server()  # wsgiref closes the first response before serving this
    first = probe.seen[0][1]
    assert first.is_closed()
    assert len(probe.loops()) == 2
