"""The request's receivers: where the loop's clients are closed.

``request_started`` (sync) notes which kind of client a ``/use/`` request uses;
``request_finished`` (async) closes the running loop's clients and counts the
request as finished. Under WSGI Django runs the async receiver through
``async_to_sync``: with the adapter on the request's loop, under stock Django
on a loop of its own, which holds no client.
"""

from __future__ import annotations

import contextvars
from typing import Any

from django.core.signals import request_finished, request_started

from clients_example import clients

#: The kind of client the current request uses ("" if not a /use/ request).
current_kind: contextvars.ContextVar[str] = contextvars.ContextVar(
    "clients_example_kind", default=""
)


def note_kind(sender: Any, environ: Any = None, **kwargs: Any) -> None:
    parts = (environ or {}).get("PATH_INFO", "").strip("/").split("/")
    current_kind.set(parts[1] if len(parts) == 3 and parts[0] == "use" else "")


async def close_clients(sender: Any, **kwargs: Any) -> None:
    await clients.close_loop_clients()
    kind = current_kind.get()
    if kind:
        with clients._lock:
            clients.finished[kind] += 1


def connect() -> None:
    request_started.connect(note_kind, dispatch_uid="clients-note-kind")
    request_finished.connect(close_clients, dispatch_uid="clients-close")
