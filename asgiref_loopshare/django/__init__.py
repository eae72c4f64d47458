"""One shared event loop per Django WSGI request.

Under WSGI, Django runs async code - async middleware, async views, async signal
receivers, async streaming bodies - through ``async_to_sync``, and stock asgiref
gives every such call its own thread and event loop. With this adapter every
call made while a request is handled runs on one loop that lives from before
``request_started`` is sent until after ``request_finished`` has been sent, so
loop-bound clients (``redis.asyncio``, async database connections, HTTP
clients) can be shared within the request and closed by an async
``request_finished`` receiver.

The one-line way in: add ``"asgiref_loopshare.django"`` to ``INSTALLED_APPS``.
Or call `install` yourself, or serve `get_wsgi_application()`.

A request that never calls async code creates no thread and no loop, and its
response is freed by reference counting as with stock Django.
"""

from __future__ import annotations

from typing import Any

import django

from asgiref_loopshare._compat import DJANGO_RANGE, check_tested

# The adapter patches Django's handler and response internals: a Django it
# was not tested with may have moved them.
check_tested("Django", django.__version__, DJANGO_RANGE)

from asgiref_loopshare.django._patch import disable as _disable  # noqa: E402
from asgiref_loopshare.django._patch import enable as _enable  # noqa: E402
from asgiref_loopshare.django._patch import is_enabled as _is_enabled  # noqa: E402

__all__ = ["get_wsgi_application", "install", "is_installed", "uninstall"]


def install() -> None:
    """Share one loop per request in every Django WSGI handler. Idempotent.

    Installs the asgiref patch (`asgiref_loopshare.install`) and patches, in
    place and for instances that already exist, Django's ``WSGIHandler`` (so
    ``runserver``, ``get_internal_wsgi_application`` and ``LiveServerTestCase``
    get it), the test client's ``ClientHandler`` and ``HttpResponseBase.close``.
    Django must be importable; settings need not be configured yet.
    """
    _enable()


def uninstall() -> None:
    """Undo `install`. Idempotent.

    Removes the asgiref patch too if `install` was what installed it. Requests
    already in flight still end their loop when their response is closed.
    """
    _disable()


def is_installed() -> bool:
    """Whether `install` is in effect."""
    return _is_enabled()


def get_wsgi_application() -> Any:
    """Django's ``get_wsgi_application()``, after `install`.

    Returns Django's own ``WSGIHandler``: the patch is process-wide, so the
    test client and any other ``WSGIHandler`` in the process share it.
    """
    install()
    from django.core.wsgi import get_wsgi_application as django_get_wsgi_application

    return django_get_wsgi_application()
