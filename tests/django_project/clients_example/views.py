"""The views: one async view using a loop-bound client, two sync views."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse, JsonResponse

from clients_example import clients


async def use_view(request: Any, kind: str, number: int) -> HttpResponse:
    """Three more values through the same kind of client; the body names the
    middleware's answer and the view's, e.g. ``/use/redis/7/`` -> ``redis 7 8 9 10``."""
    values = [request.middleware_echo]
    for offset in (1, 2, 3):
        values.append(await clients.echo(kind, number + offset))
    text = " ".join([kind, *map(str, values)])
    return HttpResponse(text.encode(), content_type="text/plain")


def stats_view(request: Any) -> JsonResponse:
    """The clients' counters (`clients.stats`); runs no async code."""
    return JsonResponse(clients.stats())


def ping_view(request: Any) -> HttpResponse:
    """Answers once the server is up."""
    return HttpResponse(b"pong", content_type="text/plain")
