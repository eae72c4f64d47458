"""A worker's thread-critical ``Local`` values travel in one variable, not one each.

asgiref's ``Local(thread_critical=True)`` (Django's ``connections``,
django-async-backend's ``async_connections``) keeps, in async code, one
``ContextVar`` per *thread*, created at the first access on that thread. A
call's context carries its value back to the caller, and stock asgiref leaves
it there for good: every new thread that touches such a ``Local`` adds a
variable to the calling thread's context, which `_restore_context` walks on
every call (Django under stock WSGI: 3 per request; an empty call took 0.57 ms,
12.9 ms after 3,000 variables). With one worker thread per context, it would
be one variable per context.

Here the variables that thread-critical ``Local``\\ s create on a loop worker
are noted as they are made (`_note_variable`, around ``asgiref.local._CVar``'s
``__init__``; nothing else about them changes). After a call, their values go
back to the caller inside *one* variable of this module, a `_Stash` owned by the
context's runner, and the next call of that context from that caller context
gets them back on the worker before its coroutine starts. So the values flow as
stock's do - from a call to its caller's context, from there to the next call -
and only code on that worker can read them, as before; but the caller's context
holds one variable however many contexts it ran, and the values are dropped when
the context ends (the loop's teardown empties its stashes).
"""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Mapping
from typing import Any

import asgiref.local

from asgiref_loopshare import _current_executor
from asgiref_loopshare._loop import LoopExecutor, current_runner

__all__ = ["ensure_hook", "remove_hook", "restore", "task_context"]

_Variable = contextvars.ContextVar[Any]

#: The asgiref functions that create a thread-critical ``Local``'s per-thread
#: ``_CVar``: ``_ThreadCriticalLocal._get_storage`` (3.13), ``Local._lock_storage``
#: (3.10 - 3.12). A ``_CVar`` made anywhere else is a plain ``Local``'s storage.
_THREAD_CRITICAL_CREATORS = frozenset({"_get_storage", "_lock_storage"})

_CVar: Any = asgiref.local._CVar
_stock_cvar_init: Callable[..., None] = _CVar.__init__


def _note_variable(self: Any, *args: Any, **kwargs: Any) -> None:
    """``_CVar.__init__``, noting the variable if a loop worker's thread-critical
    ``Local`` creates it."""
    _stock_cvar_init(self, *args, **kwargs)
    runner = current_runner()
    if (
        runner is not None
        and sys._getframe(1).f_code.co_name in _THREAD_CRITICAL_CREATORS
    ):
        runner.thread_variables.add(object.__getattribute__(self, "_data"))


_hooked = False


def ensure_hook() -> None:
    """Wrap ``asgiref.local._CVar.__init__`` (once; `remove_hook` undoes it)."""
    global _hooked
    if not _hooked:
        _hooked = True
        if _CVar.__dict__.get("__init__") is _stock_cvar_init:
            _CVar.__init__ = _note_variable


def remove_hook() -> None:
    """Give ``_CVar`` its own ``__init__`` back; the next context wraps it again."""
    global _hooked
    _hooked = False
    if _CVar.__dict__.get("__init__") is _note_variable:
        _CVar.__init__ = _stock_cvar_init


class _Stash:
    """One call's values of its worker's thread-critical variables.

    ``owner`` is the runner's key: a stash of another context (an earlier
    request's, left in the caller's context) is ignored. ``values`` becomes
    ``None`` when that context's loop is torn down.
    """

    __slots__ = ("owner", "values")

    def __init__(self, owner: object, values: dict[_Variable, Any]) -> None:
        self.owner = owner
        self.values: dict[_Variable, Any] | None = values


_thread_values: contextvars.ContextVar[_Stash | None] = contextvars.ContextVar(
    "asgiref_loopshare.thread_values"
)


def _apply(values: Mapping[_Variable, Any]) -> None:
    for variable, value in values.items():
        variable.set(value)


def task_context(
    caller: contextvars.Context, executor: LoopExecutor
) -> contextvars.Context:
    """The context a call's task starts in: a copy of *caller*'s, with the
    worker's thread-critical values the caller's context carries."""
    context = caller.copy()
    stash = caller.get(_thread_values)
    if stash is not None and stash.values and stash.owner is executor.stash_key:
        context.run(_apply, stash.values)
    return context


def restore(context: contextvars.Context, executor: LoopExecutor) -> None:
    """Copy a finished call's *context* back into the caller's, as asgiref's
    ``_restore_context`` does, except the worker's thread-critical variables:
    their values go into the one `_thread_values` variable."""
    variables = executor.thread_variables
    if not variables:
        _current_executor.restore_context(context)
        return
    values: dict[_Variable, Any] = {}
    rest: dict[_Variable, Any] = {}
    for variable, value in context.items():
        if variable in variables:
            values[variable] = value
        else:
            rest[variable] = value
    # asgiref's _restore_context only iterates and reads: a dict serves.
    _current_executor.restore_context(rest)  # type: ignore[arg-type]
    key = executor.stash_key
    stash = _thread_values.get(None)
    if stash is not None and stash.owner is key and _same(stash.values, values):
        return
    stash = _Stash(key, values)
    executor.stashes.append(stash)
    _thread_values.set(stash)


def _same(old: dict[_Variable, Any] | None, new: dict[_Variable, Any]) -> bool:
    if old is None or len(old) != len(new):
        return False
    missing = _MISSING
    return all(old.get(variable, missing) is value for variable, value in new.items())


_MISSING: Any = object()
