"""Middleware of the profiles: sync-only, async-only, sync calling async."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import async_to_sync
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import async_only_middleware, sync_only_middleware

from benchapp.clients import fake_get

#: Async client calls made by `sync_calls_async` (K10 = these + the view).
SYNC_MIDDLEWARE_CALLS = 9


@sync_only_middleware  # type: ignore[untyped-decorator]
def sync_only(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        request.META["bench.sync_middleware"] = True
        return get_response(request)

    return middleware


@async_only_middleware  # type: ignore[untyped-decorator]
def async_only(
    get_response: Callable[[HttpRequest], Awaitable[HttpResponse]],
) -> Callable[[HttpRequest], Awaitable[HttpResponse]]:
    async def middleware(request: HttpRequest) -> HttpResponse:
        request.META["bench.async_middleware"] = True
        return await get_response(request)

    return middleware


@sync_only_middleware  # type: ignore[untyped-decorator]
def sync_calls_async(
    get_response: Callable[[HttpRequest], HttpResponse],
) -> Callable[[HttpRequest], HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        for i in range(SYNC_MIDDLEWARE_CALLS):
            async_to_sync(fake_get)(f"key-{i}")
        return get_response(request)

    return middleware
