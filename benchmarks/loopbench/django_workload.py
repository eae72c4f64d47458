"""In-process Django WSGI requests: ``handler(environ, start_response)``, close.

Shared by scenarios 3, 4 and 5. ``params``: ``handler`` (``stock`` = Django's
``get_wsgi_application()``, ``loopshare`` = ``asgiref_loopshare.django``'s),
``toggle`` = Django's handler with the adapter switched on and off per batch),
``path`` (default path, ``?query`` allowed) and ``latencies`` (record each
request's wall time). The profile comes from ``BENCH_PROFILE`` in the worker's
environment (see `benchapp`).
"""

from __future__ import annotations

import gc
import io
import os
import sys
import time
import weakref
from typing import Any

from loopbench.worker import BaseWorkload

_ENVIRON = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "HTTP_HOST": "127.0.0.1",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.errors": sys.stderr,
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}


def load_handler(kind: str) -> Any:
    """Django's own ``get_wsgi_application()`` or the adapter's documented one."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchapp.settings")
    if kind == "loopshare":
        import asgiref_loopshare.django

        return asgiref_loopshare.django.get_wsgi_application()
    if kind == "stock":
        import django.core.wsgi

        return django.core.wsgi.get_wsgi_application()
    raise ValueError(f"unknown handler {kind!r}")


#: Batch arguments of the A/A control: both sides are Django's own handler,
#: each batch preceded by an install() / uninstall() cycle.
CYCLED_STOCK = ("stock-a", "stock-b")


class DjangoWorkload(BaseWorkload):
    def __init__(self, params: dict[str, Any]) -> None:
        #: ``handler="toggle"``: Django's handler, the adapter switched on and
        #: off per batch (``run``'s arg names the side) - an A/B in one process.
        self.toggle = params["handler"] == "toggle"
        self.handler = load_handler("stock" if self.toggle else params["handler"])
        self.default_path = params.get("path", "/sync/")
        self.keep_latencies = bool(params.get("latencies"))
        self.requests = 0
        self.failures = 0
        self.statuses: dict[str, int] = {}

    def environ(self, path: str) -> dict[str, Any]:
        path, _, query = path.partition("?")
        return {
            **_ENVIRON,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "wsgi.input": io.BytesIO(b""),
        }

    def request(self, path: str) -> Any:
        """One request; returns the object the handler returned (closed)."""
        status: list[str] = []

        def start_response(
            line: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            status.append(line)
            return None

        result = self.handler(self.environ(path), start_response)
        try:
            for _chunk in result:
                pass
        finally:
            result.close()
        self.requests += 1
        if not status or not status[0].startswith("200"):
            self.failures += 1
            line = status[0] if status else "no status"
            self.statuses[line] = self.statuses.get(line, 0) + 1
        return result

    def prepare(self, arg: Any) -> None:
        if not self.toggle:
            return
        # Same process, same handler object: switch the adapter on or off,
        # then serve one request untimed. Installing costs about 150 µs (0.6 %
        # of a 250-request batch) and re-specializes the bytecode of the
        # patched classes' callers; a server pays both once, at start-up.
        import asgiref_loopshare.django

        if arg == "loopshare":
            asgiref_loopshare.django.install()
        else:
            if arg in CYCLED_STOCK:
                # The A/A control: stock, after an install() and an uninstall(),
                # the class patching that switches the A/B's sides.
                asgiref_loopshare.django.install()
            asgiref_loopshare.django.uninstall()
            _restore_stock_close()
        self.request(self.default_path)

    def run(self, n: int, arg: Any) -> list[float] | None:
        path = self.default_path if self.toggle else arg or self.default_path
        request = self.request
        if not self.keep_latencies:
            for _ in range(n):
                request(path)
            return None
        latencies = []
        clock = time.perf_counter
        for _ in range(n):
            t0 = clock()
            request(path)
            latencies.append(clock() - t0)
        return latencies

    def probe(self) -> dict[str, Any]:
        """Is the response freed by reference counting alone (gc disabled)?"""
        self.request(self.default_path)  # warm
        gc.collect()
        gc.disable()
        try:
            ref = weakref.ref(self.request(self.default_path))
            freed = ref() is None
            gc.collect()
            freed_after_gc = ref() is None
        finally:
            gc.enable()
        return {"freed_by_refcount": freed, "freed_after_gc": freed_after_gc}

    def stats(self) -> dict[str, Any]:
        from benchapp import clients

        errors = dict(clients.errors)
        errors.update({f"HTTP {k}": v for k, v in self.statuses.items()})
        return {
            "n_requests": self.requests,
            "n_failures": self.failures,
            "info_errors": errors,
        }


def _restore_stock_close() -> None:
    """Put Django's own ``HttpResponseBase.close`` back for the stock side.

    ``uninstall()`` keeps the ``close`` wrapper, inert without a scope, for
    responses still in flight; the A/B's stock side must not pay its call.
    The next ``install()`` applies it again.
    """
    from django.http.response import HttpResponseBase

    from asgiref_loopshare.django import _patch

    for patch in list(_patch._patches):
        ours = HttpResponseBase.__dict__["close"] is patch.wrapper
        if patch.name == "close" and ours:
            HttpResponseBase.close = patch.previous
            _patch._patches.remove(patch)


def make(params: dict[str, Any]) -> DjangoWorkload:
    return DjangoWorkload(params)


FACTORY = "loopbench.django_workload:make"
