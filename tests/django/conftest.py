"""Django settings for the adapter tests: the example project in tests/django_project.

The project is configured with the adapter *off* (``LOOPSHARE_ADAPTER=0``) and its
probes off (``LOOPSHARE_PROBES=0``); tests turn each on through fixtures, so a
test of stock behaviour and a test of the adapter see the same project.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import itertools
import os
import sys
import tempfile
import threading
import wsgiref.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent / "django_project"
_DB_DIR = tempfile.mkdtemp(prefix="loopshare-django-tests-")

os.environ["LOOPSHARE_ADAPTER"] = "0"
os.environ["LOOPSHARE_PROBES"] = "0"
os.environ.setdefault("LOOPSHARE_DB", str(Path(_DB_DIR) / "db.sqlite3"))
os.environ.setdefault("LOOPSHARE_FILES", _DB_DIR)
os.environ["DJANGO_SETTINGS_MODULE"] = "loopshare_example.settings"
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.handlers.wsgi import WSGIHandler  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.signals import request_finished, request_started  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from loopshare_example import probe, receivers  # noqa: E402

import asgiref_loopshare  # noqa: E402
import asgiref_loopshare.django as loopshare_django  # noqa: E402

PROBE_MIDDLEWARE = "loopshare_example.middleware.ProbeMiddleware"


@pytest.fixture(scope="session", autouse=True)
def _database() -> None:
    call_command("migrate", verbosity=0)


@pytest.fixture(autouse=True)
def _nothing_left_installed() -> Iterator[None]:
    """Every test starts and ends with stock asgiref and stock Django."""
    assert not loopshare_django.is_installed()
    assert not asgiref_loopshare.is_installed()
    yield
    loopshare_django.uninstall()
    if asgiref_loopshare.is_installed():
        asgiref_loopshare.uninstall()
        pytest.fail("the test left the asgiref patch installed")


@pytest.fixture
def adapter() -> Iterator[None]:
    """The Django adapter (and so the asgiref patch) installed for the test."""
    loopshare_django.install()
    yield
    loopshare_django.uninstall()


@pytest.fixture(params=["stock", "adapter"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test run twice: stock Django, then with the adapter."""
    if request.param == "adapter":
        loopshare_django.install()
    yield str(request.param)
    loopshare_django.uninstall()


@pytest.fixture
def probes() -> Iterator[None]:
    """The example project's async receivers and async middleware, for the test."""
    probe.clear()
    receivers.connect()
    middleware = [PROBE_MIDDLEWARE, *settings.MIDDLEWARE]
    middleware.append("loopshare_example.middleware.RedisCountingMiddleware")
    try:
        with override_settings(MIDDLEWARE=middleware):
            yield
    finally:
        receivers.disconnect()


@dataclass
class Served:
    """What a WSGI server saw for one request."""

    result: Any  # what the application returned (the response or a file wrapper)
    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def body(self, limit: int | None = None) -> bytes:
        return b"".join(itertools.islice(self.result, limit))

    def close(self) -> None:
        self.result.close()


def make_environ(
    path: str,
    method: str = "GET",
    probe_id: str | None = None,
    file_wrapper: Any = None,
) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "SERVER_NAME": "testserver",
        "HTTP_HOST": "testserver",
    }
    wsgiref.util.setup_testing_defaults(environ)
    if file_wrapper is None:
        environ.pop("wsgi.file_wrapper", None)
    else:
        environ["wsgi.file_wrapper"] = file_wrapper
    if probe_id is not None:
        environ["HTTP_X_PROBE"] = probe_id
    return environ


Serve = Callable[..., Served]


@pytest.fixture
def app() -> WSGIHandler:
    """A fresh WSGIHandler (middleware loaded under the test's settings)."""
    return WSGIHandler()


@pytest.fixture
def serve(app: WSGIHandler) -> Serve:
    """Call the application as a WSGI server would, without iterating or closing."""

    def serve(path: str, **environ_args: Any) -> Served:
        served = Served(result=None)

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            served.status, served.headers = status, headers

        served.result = app(make_environ(path, **environ_args), start_response)
        return served

    return serve


@pytest.fixture
def loops_seen() -> Iterator[list[asyncio.AbstractEventLoop]]:
    """Async request_started / request_finished receivers appending their loop."""
    seen: list[asyncio.AbstractEventLoop] = []

    async def record(sender: Any, **kwargs: Any) -> None:
        seen.append(asyncio.get_running_loop())

    receiver = receivers.as_receiver(record)
    request_started.connect(receiver, dispatch_uid="loops-seen-started", weak=False)
    request_finished.connect(receiver, dispatch_uid="loops-seen-finished", weak=False)
    yield seen
    request_started.disconnect(dispatch_uid="loops-seen-started")
    request_finished.disconnect(dispatch_uid="loops-seen-finished")


@pytest.fixture
def gc_disabled() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


_FIGURES: list[Any] = []


@pytest.fixture
def figures() -> list[Any]:
    """Figures a test wants shown in the terminal summary (``RedisFigures``)."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("asgiref-loopshare: stock vs adapter")
        for figure in sorted(_FIGURES, key=lambda f: f.label):
            terminalreporter.write_line(figure.line())


def loopshare_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("asgiref-loopshare")}


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run each (sync) test body in a copy of the contextvars context.

    A Django test-client request that is never closed leaves its request scope
    set in this thread's context; without a copy it would leak into every
    later test run in the same process.
    """
    function = pyfuncitem.obj
    if inspect.iscoroutinefunction(function):
        return None  # pytest-asyncio runs those
    arguments = {
        name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames
    }
    contextvars.copy_context().run(function, **arguments)
    return True
