"""A closed response is freed by reference counting: the adapter adds no cycle.

Each test disables the cyclic GC, serves a request, closes it as a server does,
drops the server's reference and checks a weakref to the response (reached
through the file wrapper when one is used).

On Python 3.10 stock Django already leaves *every* response to the cyclic GC:
``asgiref.local`` raises ``AttributeError`` inside ``except KeyError`` when
Django looks a connection up in ``request_finished``, and on 3.10 that
exception's traceback keeps the frames of ``close()`` - and so the response -
alive. There the adapter is held to "no worse than stock"; the absolute checks
run on 3.11+.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any
from wsgiref.util import FileWrapper

import pytest
from conftest import Serve

import asgiref_loopshare.django as loopshare_django

pytestmark = [
    pytest.mark.usefixtures("gc_disabled"),
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume"),
]
needs_refcount_freeing_stock = pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="on Python < 3.11 stock Django leaves every response to the cyclic GC "
    "(a traceback kept alive inside asgiref.local.Local)",
)

WRAPPERS = pytest.mark.parametrize(
    "file_wrapper", [None, FileWrapper], ids=["plain", "file_wrapper"]
)


def response_of(result: Any) -> Any:
    """The HttpResponse behind what the application returned."""
    if isinstance(result, FileWrapper):
        close: Any = result.filelike.close  # Django's response.close, bound
        return close.__self__
    return result


def freed_after_close(serve: Serve, path: str, file_wrapper: Any = None) -> bool:
    served = serve(path, file_wrapper=file_wrapper)
    ref = weakref.ref(response_of(served.result))
    served.body()
    served.close()
    del served
    return ref() is None


@needs_refcount_freeing_stock
@pytest.mark.usefixtures("adapter")
@WRAPPERS
@pytest.mark.parametrize(
    "path", ["/sync/", "/stream/sync/", "/file/"], ids=["plain", "streaming", "file"]
)
def test_a_request_that_awaits_nothing_leaves_no_cycle(
    serve: Serve, path: str, file_wrapper: Any
) -> None:
    assert freed_after_close(serve, path, file_wrapper)


@needs_refcount_freeing_stock
@pytest.mark.usefixtures("adapter", "probes")
@WRAPPERS
@pytest.mark.parametrize(
    "path",
    ["/async/", "/stream/sync/", "/file/"],
    ids=["async-view", "streaming", "file"],
)
def test_a_request_that_ran_on_its_loop_leaves_no_cycle(
    serve: Serve, path: str, file_wrapper: Any
) -> None:
    assert freed_after_close(serve, path, file_wrapper)


@needs_refcount_freeing_stock
@pytest.mark.usefixtures("adapter")
def test_a_file_response_closed_mid_stream_leaves_no_cycle(serve: Serve) -> None:
    """FileResponse iterates through a lambda that refers to the response."""
    served = serve("/file/")
    ref = weakref.ref(served.result)
    served.body(limit=1)
    served.close()
    del served
    assert ref() is None


@needs_refcount_freeing_stock
def test_stock_django_leaves_a_file_wrapper_response_to_the_cyclic_gc(
    serve: Serve,
) -> None:
    """file_to_stream.close = response.close: the cycle the adapter breaks."""
    assert not freed_after_close(serve, "/file/", FileWrapper)


@pytest.mark.usefixtures("probes")
@WRAPPERS
@pytest.mark.parametrize(
    "path",
    ["/sync/", "/async/", "/stream/sync/", "/stream/async/", "/file/"],
)
def test_the_adapter_frees_every_response_stock_frees(
    serve: Serve, path: str, file_wrapper: Any
) -> None:
    """Everywhere, including Python 3.10 and the async streaming body (stock:
    asgiref's main_wrap re-raises the caller's in-flight TypeError from
    StreamingHttpResponse.__iter__ in its own frame, which keeps it)."""
    stock = freed_after_close(serve, path, file_wrapper)
    loopshare_django.install()
    adapter = freed_after_close(serve, path, file_wrapper)
    assert adapter or not stock
