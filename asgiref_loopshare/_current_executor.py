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

`push_current` / `pop_current` set the executor for the length of one call
and put the previous value back with ``ContextVar.reset`` where that is exactly
what asgiref's ``executors.current = old_executor`` would leave (nothing else
touched the variable meanwhile); otherwise they write it as asgiref does.
`restore_context` is asgiref's ``_restore_context`` for the thread that made
the call: it does not re-home a ``_Storage`` whose data this thread already
holds (the usual case: a call that set no ``Local``), which would build and
set an equal storage per ``Local`` per call.
"""

from __future__ import annotations

import contextvars
import dis
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import asgiref.local
from asgiref import sync as _asgiref_sync
from asgiref.current_thread_executor import CurrentThreadExecutor
from asgiref.sync import AsyncToSync

#: asgiref 3.12.1+ tags the storage with its owner thread; before, a plain dict.
_Storage: Any = getattr(asgiref.local, "_Storage", None)

__all__ = [
    "get_current",
    "pop_current",
    "push_current",
    "restore_context",
    "set_current",
]

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


def _visible(value: Any, ident: int) -> dict[str, Any] | None:
    """The attribute dict *value* gives the thread *ident*, as ``Local`` reads it."""
    if value is None or _Storage is None:
        return value  # type: ignore[no-any-return]
    if value.thread_id != ident:
        return None  # inherited by this thread, not moved here: not visible
    data: dict[str, Any] = value.data
    return data


def _store(
    data: dict[str, Any] | None, executor: CurrentThreadExecutor | None, ident: int
) -> tuple[contextvars.Token[Any], object]:
    """Write *data* with ``current`` = *executor*, as ``Local`` does (a copy)."""
    assert _variable is not None
    new_data = {} if data is None else data.copy()
    new_data["current"] = executor
    value = new_data if _Storage is None else _Storage(ident, new_data)
    return _variable.set(value), value


def _fast_get() -> CurrentThreadExecutor | None:
    assert _variable is not None
    data = _visible(_variable.get(None), _get_ident())
    return None if data is None else data.get("current")


def _fast_set(executor: CurrentThreadExecutor | None) -> None:
    assert _variable is not None
    ident = _get_ident()
    _store(_visible(_variable.get(None), ident), executor, ident)


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


class Pushed(NamedTuple):
    """What `pop_current` needs to undo one `push_current`."""

    old: CurrentThreadExecutor | None
    #: The token and value of the push, if a reset can undo it exactly.
    token: contextvars.Token[Any] | None
    value: object


def push_current(
    make: Callable[[CurrentThreadExecutor | None], CurrentThreadExecutor],
) -> tuple[CurrentThreadExecutor, Pushed]:
    """Make ``make(current executor)`` the current one; return it and the undo."""
    if get_current is _slow_get:  # pragma: no cover - see above
        old = _slow_get()
        executor = make(old)
        _slow_set(executor)
        return executor, Pushed(old, None, None)
    assert _variable is not None
    ident = _get_ident()
    data = _visible(_variable.get(None), ident)
    # asgiref leaves a visible {"current": old} behind; a reset restores it
    # only if the old value was exactly that (a visible value with "current").
    exact = data is not None and "current" in data
    old = data.get("current") if data is not None else None
    executor = make(old)
    token, value = _store(data, executor, ident)
    return executor, Pushed(old, token if exact else None, value)


def pop_current(pushed: Pushed) -> None:
    """Undo `push_current`: the previous executor is current again."""
    if (
        pushed.token is not None
        and _variable is not None
        and _variable.get(None) is pushed.value
    ):
        _variable.reset(pushed.token)
    else:
        set_current(pushed.old)


_asgiref_restore: Callable[[contextvars.Context], None] = _asgiref_sync._restore_context


def _compares_by_identity() -> bool:
    """asgiref 3.13 compares with ``is not``; 3.12 with ``!=``."""
    return any(
        instruction.opname == "IS_OP"
        for instruction in dis.get_instructions(_asgiref_restore)
    )


def _restore_context_here(context: contextvars.Context) -> None:
    ident = _get_ident()
    for variable, value in context.items():
        if isinstance(value, _Storage):
            here = variable.get(None)
            if (
                type(here) is _Storage
                and here.thread_id == ident
                and here.data is value.data
            ):
                continue  # asgiref would set an equal storage: same data, thread
            value = _Storage(ident, value.data)
        try:
            if _by_identity:
                changed = variable.get() is not value
            else:
                changed = variable.get() != value
            if changed:
                variable.set(value)
        except LookupError:
            variable.set(value)


_by_identity = _compares_by_identity()
#: asgiref's ``_restore_context``, for the calling thread after a call.
restore_context: Callable[[contextvars.Context], None] = (
    _restore_context_here
    if _Storage is not None and "_rehome" in _asgiref_restore.__code__.co_names
    else _asgiref_restore
)
