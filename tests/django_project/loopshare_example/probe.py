"""Records which event loop (and thread) each piece of a request ran on.

A request carries a probe id in its ``X-Probe`` header. A sync ``request_started``
receiver puts the id in `current_probe`; code that runs later in the request
records events under it. ``close()`` may run in another thread and contextvars
context (waitress closes file responses from its main thread), so a loop that
has recorded for a probe also remembers it: a ``request_finished`` receiver on the
request's loop finds the probe through the loop.

Loops are numbered (`loop_serial`) because ``id()`` of a closed loop is reused.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import threading
import weakref
from typing import Any

current_probe: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "loopshare_probe", default=None
)

#: The request's path, for code that has no request (request_finished).
current_path: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "loopshare_path", default=None
)

_lock = threading.Lock()
_serials = itertools.count(1)
_loop_serials: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = (
    weakref.WeakKeyDictionary()
)
_loop_probes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, str] = (
    weakref.WeakKeyDictionary()
)
# probe id -> events, oldest probes dropped first (bounded memory on servers).
_events: collections.OrderedDict[str, list[dict[str, Any]]] = collections.OrderedDict()
_MAX_PROBES = 2000


def loop_serial(loop: asyncio.AbstractEventLoop) -> int:
    with _lock:
        serial = _loop_serials.get(loop)
        if serial is None:
            serial = _loop_serials[loop] = next(_serials)
        return serial


def record(where: str) -> dict[str, Any]:
    """Record *where* for the current probe; call from a coroutine."""
    loop = asyncio.get_running_loop()
    serial = loop_serial(loop)
    probe = current_probe.get()
    with _lock:
        if probe is None:
            probe = _loop_probes.get(loop)
        elif loop not in _loop_probes:
            _loop_probes[loop] = probe
        event = {
            "where": where,
            "loop": serial,
            "thread": threading.current_thread().name,
        }
        if probe is not None:
            _events.setdefault(probe, []).append(event)
            while len(_events) > _MAX_PROBES:
                _events.popitem(last=False)
    return event


def events(probe: str) -> list[dict[str, Any]]:
    with _lock:
        return list(_events.get(probe, ()))


def clear() -> None:
    with _lock:
        _events.clear()
