"""A sync-only middleware that uses the request's client before the view."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync

from clients_example import clients


class EchoMiddleware:
    """Sends the URL's number through the running loop's client of the URL's
    kind (one ``async_to_sync`` call); the view reads the answer as
    ``request.middleware_echo``."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_view(
        self,
        request: Any,
        view_func: Any,
        view_args: Any,
        view_kwargs: dict[str, Any],
    ) -> None:
        if "kind" in view_kwargs:
            request.middleware_echo = async_to_sync(clients.echo)(
                view_kwargs["kind"], view_kwargs["number"]
            )
