"""Calling WSGI applications as servers do, for tests/test_wsgi.py and tests/flask/.

Every wait here is bounded (a hang guard, not a measurement).
"""

from __future__ import annotations

import queue
import threading
import wsgiref.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

HANG_GUARD = 60.0  # seconds

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass
class Served:
    """What a WSGI server got back for one request (not iterated, not closed)."""

    result: Any
    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: The body, once `serve_fully` has read it.
    content: bytes = b""

    def body(self) -> bytes:
        return b"".join(self.result)

    def close(self) -> None:
        self.result.close()


def make_environ(path: str = "/", file_wrapper: Any = None) -> dict[str, Any]:
    environ: dict[str, Any] = {"PATH_INFO": path}
    wsgiref.util.setup_testing_defaults(environ)
    environ.pop("wsgi.file_wrapper", None)
    if file_wrapper is not None:
        environ["wsgi.file_wrapper"] = file_wrapper
    return environ


def serve(app: WSGIApp, path: str = "/", file_wrapper: Any = None) -> Served:
    """Call *app* as a WSGI server does, without iterating or closing."""
    served = Served(result=None)

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> None:
        served.status, served.headers = status, headers

    served.result = app(make_environ(path, file_wrapper), start_response)
    return served


def serve_fully(app: WSGIApp, path: str = "/", file_wrapper: Any = None) -> Served:
    """One whole request: call, iterate (into ``content``), close."""
    served = serve(app, path, file_wrapper)
    try:
        served.content = served.body()
    finally:
        served.close()
    return served


def on_another_thread(function: Callable[[], _T]) -> _T:
    """Run *function* on a new thread and wait for the thread to exit."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=HANG_GUARD)
    assert not thread.is_alive()
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    result: _T = value
    return result


class ServerThread:
    """One long-lived thread that runs functions one after another, as a
    server's worker thread serves requests."""

    def __init__(self, name: str = "test-server-thread") -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, name=name)
        self.thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job()
            del job

    def __call__(self, function: Callable[[], _T]) -> _T:
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()

        def job() -> None:
            try:
                outcome.append((True, function()))
            except BaseException as exc:
                outcome.append((False, exc))
            finally:
                done.set()

        self._jobs.put(job)
        assert done.wait(HANG_GUARD)
        succeeded, value = outcome[0]
        if not succeeded:
            raise value
        result: _T = value
        return result

    def stop(self) -> None:
        """Let the thread exit (its thread scope is torn down) and join it."""
        self._jobs.put(None)
        self.thread.join(timeout=HANG_GUARD)
        assert not self.thread.is_alive()
