"""``AsyncToSync.executors.current``, read and written without ``Local``'s overhead.

asgiref's ``AsyncToSync.__call__`` reads ``AsyncToSync.executors.current`` and
sets it twice per call. ``executors`` is an ``asgiref.local.Local``: each access
takes its RLock and goes through two Python-level ``__getattr__`` /
``__setattr__`` layers - about a tenth of an in-context call. Underneath, the
value lives in one ``ContextVar`` (``Local._storage._data``) holding the
attribute dict: a plain ``dict`` in asgiref 3.10 - 3.12.0, a thread-tagged
``asgiref.local._Storage`` from 3.12.1. `get_current` and `set_current` do what
``Local`` does to that variable, directly - the same variable and the same
values, so asgiref and this package keep seeing each other's writes.

The shape is checked once, by writing through one side and reading through the
other in a scratch context; an asgiref whose ``Local`` looks different gets
the plain attribute access.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any

import asgiref.local
from asgiref.current_thread_executor import CurrentThreadExecutor
from asgiref.sync import AsyncToSync

#: asgiref 3.12.1+ tags the storage with its owner thread; before, a plain dict.
_Storage: Any = getattr(asgiref.local, "_Storage", None)

__all__ = ["get_current", "set_current"]

_get_ident = threading.get_ident


def _slow_get() -> CurrentThreadExecutor | None:
    executor: CurrentThreadExecutor | None = getattr(
        AsyncToSync.executors, "current", None
    )
    return executor


def _slow_set(executor: CurrentThreadExecutor | None) -> None:
    AsyncToSync.executors.current = executor


def _find_variable() -> contextvars.ContextVar[Any] | None:
    storage = vars(AsyncToSync.executors).get("_storage")
    variable = vars(storage).get("_data") if hasattr(storage, "__dict__") else None
    if isinstance(variable, contextvars.ContextVar):
        return variable
    return None


_variable = _find_variable()


def _fast_get() -> CurrentThreadExecutor | None:
    assert _variable is not None
    value = _variable.get(None)
    if value is None:
        return None
    if _Storage is not None:
        if value.thread_id != _get_ident():
            return None  # inherited by this thread, not moved here: not visible
        value = value.data
    executor: CurrentThreadExecutor | None = value.get("current")
    return executor


def _fast_set(executor: CurrentThreadExecutor | None) -> None:
    assert _variable is not None
    value = _variable.get(None)
    if _Storage is None:
        data = {} if value is None else value.copy()
        data["current"] = executor
        _variable.set(data)
        return
    ident = _get_ident()
    # Storage tagged with another thread is invisible here: start afresh.
    owned = value is not None and value.thread_id == ident
    data = value.data.copy() if owned else {}
    data["current"] = executor
    _variable.set(_Storage(ident, data))


def _agrees() -> bool:
    """Whether the fast path and ``Local`` read each other's writes."""
    marker: Any = object()

    def probe() -> bool:
        _slow_set(marker)
        seen_fast = _fast_get() is marker
        _fast_set(None)
        seen_slow = _slow_get() is None
        _fast_set(marker)
        return seen_fast and seen_slow and _slow_get() is marker

    try:
        return contextvars.Context().run(probe)
    except Exception:
        return False


if _variable is not None and _agrees():
    get_current, set_current = _fast_get, _fast_set
else:  # pragma: no cover - an asgiref whose Local is built differently
    get_current, set_current = _slow_get, _slow_set
