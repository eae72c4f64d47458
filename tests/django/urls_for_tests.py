"""A URLconf and middleware for the tests only: the example project's, and more."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from asgiref.sync import markcoroutinefunction
from django.http import HttpResponse
from django.urls import include, path


async def raising_view(request: Any) -> HttpResponse:
    raise ValueError("view failed")


#: The view served at ``/swap/``; tests set it (see `swap_view`).
_swapped: list[Callable[[Any], Any]] = []


def swap_view(view: Callable[[Any], Any]) -> None:
    _swapped[:] = [view]


def swapped_view(request: Any) -> Any:
    return _swapped[0](request)


class ShortCircuitMiddleware:
    """Async-only middleware answering every request without calling the view."""

    sync_capable = False
    async_capable = True
    #: The loop each call ran on.
    loops: ClassVar[list[asyncio.AbstractEventLoop]] = []

    def __init__(self, get_response: Callable[[Any], Awaitable[Any]]) -> None:
        self.get_response = get_response
        markcoroutinefunction(self)

    async def __call__(self, request: Any) -> HttpResponse:
        self.loops.append(asyncio.get_running_loop())
        return HttpResponse(b"short-circuited")


urlpatterns = [
    path("raise/", raising_view),
    path("swap/", swapped_view),
    path("", include("loopshare_example.urls")),
]
