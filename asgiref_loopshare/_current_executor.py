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

`LeanCurrentThreadExecutor` is the ``CurrentThreadExecutor`` a call on a
shared loop waits in: asgiref's class, with its queue guarded by `_WorkReady`
instead of a ``threading.Condition`` around a plain ``Lock``.
"""

from __future__ import annotations

import contextvars
import dis
import threading
from _thread import allocate_lock
from collections import deque
from collections.abc import Callable
from typing import Any, Optional

import asgiref.local
from asgiref import sync as _asgiref_sync
from asgiref.current_thread_executor import CurrentThreadExecutor
from asgiref.sync import AsyncToSync

#: asgiref 3.12.1+ tags the storage with its owner thread; before, a plain dict.
_Storage: Any = getattr(asgiref.local, "_Storage", None)

__all__ = [
    "LeanCurrentThreadExecutor",
    "get_current",
    "pop_current",
    "push_current",
    "rehome_context",
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


#: What `pop_current` needs to undo one `push_current`: the previous executor,
#: the token of the push if a reset undoes it exactly, and the value it set.
#: A plain tuple: built once per call, where a NamedTuple costs ~2k instructions.
Pushed = tuple[
    Optional[CurrentThreadExecutor], Optional["contextvars.Token[Any]"], object
]

_MISSING: Any = object()


def push_current(
    make: Callable[[CurrentThreadExecutor | None], CurrentThreadExecutor],
) -> tuple[CurrentThreadExecutor, Pushed]:
    """Make ``make(current executor)`` the current one; return it and the undo."""
    if get_current is _slow_get or _variable is None:  # pragma: no cover - see above
        old = _slow_get()
        executor = make(old)
        _slow_set(executor)
        return executor, (old, None, None)
    # `_fast_get` and `_store`, inlined: this runs once per call.
    ident = _get_ident()
    data = _variable.get(None)
    if data is not None and _Storage is not None:
        data = data.data if data.thread_id == ident else None
    if data is None:
        old, exact, new_data = None, False, {}
    else:
        # asgiref leaves a visible {"current": old} behind; a reset restores
        # it only if the old value was exactly that (visible, with "current").
        old = data.get("current", _MISSING)
        exact = old is not _MISSING
        if not exact:
            old = None
        new_data = data.copy()
    executor = make(old)
    new_data["current"] = executor
    value = new_data if _Storage is None else _Storage(ident, new_data)
    token = _variable.set(value)
    return executor, (old, token if exact else None, value)


def pop_current(pushed: Pushed) -> None:
    """Undo `push_current`: the previous executor is current again."""
    old, token, value = pushed
    if token is not None and _variable is not None and _variable.get(None) is value:
        _variable.reset(token)
    else:
        set_current(old)


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


def rehome_context(context: contextvars.Context) -> None:
    """What asgiref's ``_restore_context(context)`` does in a task that runs in
    a copy of *context*, on another thread: every variable already has its
    value there, so only the ``Local`` storages change, re-homed to this thread.
    Before asgiref 3.12.1 (no ``_Storage``) there is nothing to do.
    """
    if _Storage is None:
        return
    ident = _get_ident()
    for variable, value in context.items():
        if isinstance(value, _Storage):
            variable.set(_Storage(ident, value.data))


_by_identity = _compares_by_identity()
#: asgiref's ``_restore_context``, for the calling thread after a call.
restore_context: Callable[[contextvars.Context], None] = (
    _restore_context_here
    if _Storage is not None and "_rehome" in _asgiref_restore.__code__.co_names
    else _asgiref_restore
)


class _WorkReady:
    """The ``threading.Condition`` of a CurrentThreadExecutor, for its one waiter.

    asgiref uses ``with``, ``wait()`` and ``notify()`` on it, and only the
    thread that made the executor ever waits (``run_until_future`` checks).
    A ``threading.Condition`` around a plain ``Lock`` raises and catches three
    AttributeErrors when built and allocates a waiter lock per ``wait``: with
    the Condition's other work, about 8 % of an in-context call. Here one lock
    guards the queue and the waiter blocks on a second one, held while nobody
    is to wake it. As with a Condition, a wake-up may be spurious: callers
    re-check their predicate.
    """

    __slots__ = ("_lock", "_sleeping", "_wake")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._wake = wake = allocate_lock()
        wake.acquire()
        self._sleeping = False

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        """Release the lock until notified (or *timeout*), then take it again."""
        self._sleeping = True
        self._lock.release()
        woken = False
        try:
            woken = self._wake.acquire(True, -1 if timeout is None else timeout)
        finally:
            self._lock.acquire()
            if self._sleeping:  # not notified: timed out, or interrupted
                self._sleeping = False
            elif not woken:  # notified after the timeout: take that wake-up
                woken = self._wake.acquire(False)
        return woken

    def notify(self, n: int = 1) -> None:
        """Wake the waiter, if it waits (call with the lock held)."""
        if self._sleeping and n > 0:
            self._sleeping = False
            self._wake.release()

    def notify_all(self) -> None:
        self.notify()


class LeanCurrentThreadExecutor(CurrentThreadExecutor):
    """asgiref's ``CurrentThreadExecutor``, built and waited on for less.

    The same attributes, the same ``submit`` (asgiref's, unchanged) and the
    same ``run_until_future`` loop; only ``_work_ready`` is a `_WorkReady`.
    Stock executors built on top of it walk to it through ``_old_executor``
    as they would to a stock one.
    """

    def __init__(self, old_executor: CurrentThreadExecutor | None) -> None:
        # Not super().__init__(): that builds the Condition this class avoids.
        self._work_thread = threading.current_thread()
        self._work_ident = _get_ident()
        self._work_ready = _WorkReady()  # type: ignore[assignment]
        self._work_items = deque()
        self._broken = False
        self._old_executor = old_executor

    def run_until_future(self, future: Any) -> None:
        """Run work items in this thread until *future* is done and none is left."""
        if _get_ident() != self._work_ident:
            raise RuntimeError(
                "You cannot run CurrentThreadExecutor from a different thread"
            )
        future.add_done_callback(self._done)
        ready = self._work_ready
        items = self._work_items
        while True:
            with ready:
                while not items and not self._broken:
                    ready.wait()
                if not items:
                    break
                work_item = items.popleft()
            work_item.run()
            del work_item

    def _done(self, future: Any) -> None:
        with self._work_ready:
            self._broken = True
            self._work_ready.notify()
