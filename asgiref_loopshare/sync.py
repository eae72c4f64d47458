"""Drop-in for ``asgiref.sync`` that shares one loop per context, patching none of it.

``from asgiref_loopshare.sync import async_to_sync, sync_to_async`` in place of
``from asgiref.sync import ...``. Only ``AsyncToSync`` differs: it is a subclass
of asgiref's whose ``__call__`` shares the context's loop. Every other name *is*
asgiref's object, and the subclass inherits asgiref's class-level state
(``executors``, ``context_to_thread_executor``, ``loop_thread_executors``, ...),
so mixing this module with ``asgiref.sync`` - as Django does - keeps
thread-sensitive routing, contextvars and deadlock detection intact.

Nothing in ``asgiref.sync`` is patched. One thing outside it is observed: the
first context wraps ``asgiref.local._CVar.__init__`` to note which variables
thread-critical ``Local``s create on a loop worker, so that their values do
not pile up in the calling thread's context (`asgiref_loopshare._worker_locals`);
what those objects do is unchanged.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, Callable, TypeVar, Union, overload

from asgiref import sync as _asgiref_sync
from asgiref.sync import (
    AsyncSingleThreadContext,
    SyncToAsync,
    ThreadSensitiveContext,
    iscoroutinefunction,
    markcoroutinefunction,
    sync_to_async,
)

from asgiref_loopshare._core import loopshare_call, loopshare_init

if sys.version_info >= (3, 10):
    from typing import ParamSpec
else:  # pragma: no cover - Python 3.9
    from typing_extensions import ParamSpec

__all__ = [
    "AsyncSingleThreadContext",
    "AsyncToSync",
    "SyncToAsync",
    "ThreadSensitiveContext",
    "async_to_sync",
    "iscoroutinefunction",
    "markcoroutinefunction",
    "sync_to_async",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_AsyncCallable = Union[
    Callable[_P, Coroutine[Any, Any, _R]], Callable[_P, Awaitable[_R]]
]


class AsyncToSync(_asgiref_sync.AsyncToSync[_P, _R]):
    """asgiref's ``AsyncToSync``, sharing one loop per ``AsyncSingleThreadContext``."""

    if TYPE_CHECKING:  # asgiref's signature; at run time, the same code path

        def __init__(
            self, awaitable: _AsyncCallable[_P, _R], force_new_loop: bool = False
        ) -> None: ...

    else:
        __init__ = loopshare_init
    __call__ = loopshare_call


@overload
def async_to_sync(
    *, force_new_loop: bool = False
) -> Callable[[_AsyncCallable[_P, _R]], Callable[_P, _R]]: ...


@overload
def async_to_sync(
    awaitable: _AsyncCallable[_P, _R], *, force_new_loop: bool = False
) -> Callable[_P, _R]: ...


def async_to_sync(
    awaitable: _AsyncCallable[_P, _R] | None = None, *, force_new_loop: bool = False
) -> Callable[[_AsyncCallable[_P, _R]], Callable[_P, _R]] | Callable[_P, _R]:
    """``asgiref.sync.async_to_sync`` returning this module's `AsyncToSync`."""
    if awaitable is None:
        return lambda f: AsyncToSync(f, force_new_loop=force_new_loop)
    return AsyncToSync(awaitable, force_new_loop=force_new_loop)


def __getattr__(name: str) -> Any:
    # Everything else asgiref.sync has (CurrentThreadExecutor, Local,
    # _restore_context, ...) is asgiref's own object.
    return getattr(_asgiref_sync, name)
