"""The loop-sharing ``AsyncToSync.__call__`` and the executor it stores per context.

`loopshare_call` replaces ``asgiref.sync.AsyncToSync.__call__`` (see
`asgiref_loopshare._patch`) and is the ``__call__`` of the drop-in
`asgiref_loopshare.sync.AsyncToSync`. It takes over exactly one case: a call
inside an ``AsyncSingleThreadContext`` with no outer event loop to run on. Every
other case - outside a context, ``force_new_loop=True``, a genuine outer loop
(``sync_to_async`` -> ``async_to_sync``), a running loop in this thread - is
handed to asgiref's own ``__call__``, unchanged.

In the case it takes, the coroutine runs on the context's `ContextExecutor`
(stored in asgiref's own ``AsyncToSync.context_to_thread_executor``, so
``AsyncSingleThreadContext.__exit__`` shuts it down), with asgiref's machinery
around it: a ``CurrentThreadExecutor`` for thread-sensitive ``sync_to_async``,
``main_wrap`` for contextvars and ``sys.exc_info()``, and
``AsyncToSync.loop_thread_executors`` for tasks that lost their context.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import logging
import signal
import sys
import threading
import warnings
import weakref
from collections.abc import Awaitable, Callable
from types import FrameType, FunctionType
from typing import Any, TypeVar

from asgiref import sync as _asgiref_sync
from asgiref.current_thread_executor import CurrentThreadExecutor
from asgiref.sync import AsyncSingleThreadContext, AsyncToSync, SyncToAsync

from asgiref_loopshare import _current_executor, _handoff, _worker_locals
from asgiref_loopshare._loop import (
    Call,
    LoopExecutor,
    current_pid,
    get_settings,
    is_shared_loop,
)

__all__ = [
    "ContextExecutor",
    "LoopScope",
    "ScopeContext",
    "loopshare_call",
    "loopshare_init",
    "stock_call",
    "stock_init",
]

_R = TypeVar("_R")


def _c_signal_functions() -> Any:
    """CPython's C ``signal``/``getsignal``, without signal.py's enum conversions."""
    try:
        return importlib.import_module("_signal")
    except ImportError:  # pragma: no cover - another implementation
        return signal


_raw_signal: Any = _c_signal_functions()

logger = logging.getLogger("asgiref_loopshare")

#: asgiref's own ``AsyncToSync.__call__``, captured before any patching.
stock_call: Callable[..., Any] = AsyncToSync.__call__
#: asgiref's own ``AsyncToSync.__init__``, captured before any patching.
stock_init: Callable[..., None] = AsyncToSync.__init__
#: asgiref 3.10 / 3.11 also note the running loop, if any, on the instance.
_INIT_NOTES_LOOP = "get_running_loop" in stock_init.__code__.co_names
_CO_COROUTINE = inspect.CO_COROUTINE


def loopshare_init(
    self: AsyncToSync[Any, Any], awaitable: Any, force_new_loop: bool = False
) -> None:
    """``AsyncToSync.__init__``: the same attributes and warning, for less.

    ``async_to_sync(f)(...)`` builds an ``AsyncToSync`` per call. asgiref's
    ``__init__`` raises and catches an AttributeError for every callable
    without ``__self__`` (any plain function) and takes ``inspect``'s general
    path for a plain ``async def`` function too: ~5k instructions more than
    needed, 3 % of an in-context call. Here such a function is recognised by
    its code flags, as ``inspect.iscoroutinefunction`` ends up doing, and
    ``__self__`` is read with a default; anything else goes through asgiref's
    own checks.
    """
    if not (
        type(awaitable) is FunctionType and awaitable.__code__.co_flags & _CO_COROUTINE
    ):
        iscoroutinefunction = _asgiref_sync.iscoroutinefunction
        if not callable(awaitable) or (
            not iscoroutinefunction(awaitable)
            and not iscoroutinefunction(getattr(awaitable, "__call__", awaitable))  # noqa: B004
        ):
            warnings.warn(
                "async_to_sync was passed a non-async-marked callable", stacklevel=2
            )
    self.awaitable = awaitable
    bound_to = getattr(awaitable, "__self__", _MISSING)
    if bound_to is not _MISSING:
        self.__self__ = bound_to
    self.force_new_loop = force_new_loop
    if _INIT_NOTES_LOOP:
        self.main_event_loop = asyncio._get_running_loop()  # type: ignore[attr-defined]


_MISSING = object()

# Contexts whose shared loop has been closed. A call made while such a
# context is still the current one behaves as stock asgiref outside a context.
_closed_contexts: weakref.WeakSet[AsyncSingleThreadContext] = weakref.WeakSet()
_executors_lock = threading.Lock()
_get_ident = threading.get_ident


class ContextExecutor(LoopExecutor):
    """The `LoopExecutor` of one ``AsyncSingleThreadContext``."""

    def __init__(self, context: AsyncSingleThreadContext) -> None:
        super().__init__(default_loop_factory=_handoff.new_event_loop)
        _worker_locals.ensure_hook()
        self._context = weakref.ref(context)
        self.sigint_guard: _SigintGuard | None = None
        #: The last `_SigintGuard.for_call` answer: (thread ident, guard or None).
        self.sigint_lookup: tuple[int, _SigintGuard | None] | None = None
        #: The process that made it, as `forked` compares it, but a plain
        #: attribute for the per-call cache check in `_context_executor`.
        self.pid = current_pid()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        context = self._context()
        if isinstance(context, ScopeContext):
            context.closed = True
        elif context is not None:
            _closed_contexts.add(context)
        if context is not None and getattr(context, _EXECUTOR_ATTR, None) is self:
            setattr(context, _EXECUTOR_ATTR, None)
        super().shutdown(wait, cancel_futures=cancel_futures)
        if self.sigint_guard is not None:
            self.sigint_guard.uninstall()


#: The attribute that caches a context's `ContextExecutor` on the context, next
#: to its entry in ``AsyncToSync.context_to_thread_executor`` (a
#: WeakKeyDictionary, whose lookup builds a weak reference: ~3k instructions
#: per call). The entry is what counts: `ContextExecutor.shutdown`, which
#: follows its removal from the dictionary, clears the cache too.
_EXECUTOR_ATTR = "_loopshare_executor"


def _context_executor(context: AsyncSingleThreadContext) -> ContextExecutor | None:
    """The context's executor, created on first use; ``None`` means "go stock"."""
    if isinstance(context, ScopeContext) and _owned_elsewhere(context):
        return None  # a copy of the owner thread's contextvars: stock here
    cached: ContextExecutor | None = getattr(context, _EXECUTOR_ATTR, None)
    if cached is not None and cached.pid == current_pid():
        return cached
    executors = AsyncToSync.context_to_thread_executor
    executor = executors.get(context)
    if isinstance(executor, ContextExecutor) and not executor.forked:
        return executor
    if executor is not None and not isinstance(executor, ContextExecutor):
        # A stock ThreadPoolExecutor (the context was entered and used before
        # install()): keep asgiref's behaviour for the rest of this context.
        return None
    with _executors_lock:
        executor = executors.get(context)
        if isinstance(executor, ContextExecutor) and not executor.forked:
            return executor
        if _is_closed(context):
            return None
        # None yet, or inherited across fork(): never touch the parent's.
        fresh = ContextExecutor(context)
        if isinstance(context, ScopeContext):
            context.started = True
        # asgiref annotates the values as ThreadPoolExecutor; any Executor works.
        executors[context] = fresh  # type: ignore[assignment]
        setattr(context, _EXECUTOR_ATTR, fresh)
        return fresh


class ScopeContext(AsyncSingleThreadContext):
    """The context of a scope that is activated and closed, not entered and exited.

    What `LoopScope` and the framework adapters set for a request: creating
    one creates nothing else, and it knows whether it started and closed.
    """

    closed = False
    #: Set once an executor is stored for it (then `close` pops it).
    started = False
    #: The thread whose calls it takes (``threading.get_ident()``), or ``None``
    #: for any thread. Another thread that carries it in a copy of the owner's
    #: contextvars gets stock asgiref, as outside a context.
    owner: int | None = None

    def close(self) -> None:
        """Tear the loop down on its own thread, if one started; idempotent."""
        self.closed = True
        if not self.started:
            return  # no executor was ever stored for it: nothing to pop
        executor = AsyncToSync.context_to_thread_executor.pop(self, None)
        if executor is not None:
            executor.shutdown()


def _owned_elsewhere(context: ScopeContext) -> bool:
    """Whether *context* takes only another thread's calls (`ScopeContext.owner`)."""
    owner = context.owner
    return owner is not None and owner != _get_ident()


def _is_closed(context: AsyncSingleThreadContext) -> bool:
    """Whether calls in this thread must treat *context* as not set."""
    if isinstance(context, ScopeContext):
        return context.closed or _owned_elsewhere(context)
    return context in _closed_contexts


#: asgiref's own ``AsyncSingleThreadContext.__enter__``, captured before patching.
stock_enter: Callable[..., Any] = AsyncSingleThreadContext.__enter__


def loopshare_enter(self: AsyncSingleThreadContext) -> AsyncSingleThreadContext:
    """``AsyncSingleThreadContext.__enter__`` that sees through a closed scope.

    asgiref's ``__enter__`` takes over only when no context is set. A request
    scope closed on another thread (waitress closes file responses from its
    main thread) stays set in the request thread's contextvars; it must not
    turn a later ``with AsyncSingleThreadContext()`` there into a no-op.
    """
    current = AsyncToSync.async_single_thread_context.get(None)
    if current is not None and _is_closed(current):
        self.token = AsyncToSync.async_single_thread_context.set(self)
        return self
    entered: AsyncSingleThreadContext = stock_enter(self)
    return entered


def _outer_loop(self: AsyncToSync[Any, Any]) -> asyncio.AbstractEventLoop | None:
    """The loop asgiref would schedule this call on, if it is a live one.

    ``SyncToAsync.threadlocal.main_event_loop`` is set by ``thread_handler`` and
    never cleared; `loopshare_call` restores it after each call, so a shared
    loop found there is a genuine outer loop. asgiref 3.10/3.11 also keep it on
    the instance (sticky across calls); a shared loop found there is stale.
    """
    loop: asyncio.AbstractEventLoop | None = None
    if _INIT_NOTES_LOOP:
        loop = self.__dict__.get("main_event_loop")
        if loop is not None and is_shared_loop(loop):
            loop = None
    if loop is None:
        # The thread's own dict of the threading.local: a missing name costs
        # no AttributeError (getattr with a default still builds one).
        threadlocal = SyncToAsync.threadlocal.__dict__
        pid = threadlocal.get("main_event_loop_pid")
        if pid and pid == current_pid():
            loop = threadlocal.get("main_event_loop")
    if loop is None or loop.is_closed() or not loop.is_running():
        # A genuine outer loop is running: it awaits the sync_to_async future
        # of the code calling us. An idle one is stale (left by a loop that a
        # thread_handler once ran here); asgiref would schedule onto it and
        # wait forever.
        return None
    return loop


def _forget_stale_instance_loop(self: AsyncToSync[Any, Any]) -> None:
    # asgiref 3.10/3.11 prefer self.main_event_loop over the threadlocal.
    loop = self.__dict__.get("main_event_loop")
    if loop is not None and is_shared_loop(loop):
        self.main_event_loop = None  # type: ignore[attr-defined]


def loopshare_call(self: AsyncToSync[Any, _R], *args: Any, **kwargs: Any) -> _R:
    """``AsyncToSync.__call__`` that shares the context's loop (see module doc)."""
    __traceback_hide__ = True

    context = AsyncToSync.async_single_thread_context.get(None)
    if context is None:
        result: _R = stock_call(self, *args, **kwargs)
        return result
    if self.force_new_loop:
        # Stock runs asyncio.run on the context's executor thread; make that
        # executor ours first, or stock would store a ThreadPoolExecutor for
        # the context and sharing would stop for the rest of it.
        if _context_executor(context) is None:
            result = _call_without_context(self, *args, **kwargs)
        else:
            result = stock_call(self, *args, **kwargs)
        return result
    if _INIT_NOTES_LOOP:
        _forget_stale_instance_loop(self)
    if _outer_loop(self) is not None or _running_loop() is not None:
        # Nested in an outer loop: asgiref schedules it there. A running loop
        # in this thread: asgiref raises its usual RuntimeError. Should that
        # outer loop close meanwhile, asgiref falls back to the context's
        # executor: make sure it is ours, as for force_new_loop.
        if _context_executor(context) is None:
            result = _call_without_context(self, *args, **kwargs)
        else:
            result = stock_call(self, *args, **kwargs)
        return result
    executor = _context_executor(context)
    if executor is None:
        result = _call_without_context(self, *args, **kwargs)
        return result
    return _call_on_shared_loop(self, executor, args, kwargs)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    # asyncio's own None-returning lookup: get_running_loop() would raise and
    # catch a RuntimeError on every call made from sync code.
    return asyncio._get_running_loop()


def _call_without_context(self: AsyncToSync[Any, _R], *args: Any, **kwargs: Any) -> _R:
    """Stock asgiref as if no context were set (the context's loop is closed)."""
    var = AsyncToSync.async_single_thread_context
    context = var.get(None)
    if context is not None and _is_closed(context):
        token = var.set(None)  # type: ignore[arg-type]
        try:
            result: _R = stock_call(self, *args, **kwargs)
        finally:
            var.reset(token)
        return result
    result = stock_call(self, *args, **kwargs)
    return result


#: A call's outcome, written by `_main_wrap` on the loop's thread before the
#: call's completion wakes the caller: ``[value, exception]``.
_Outcome = list[Any]


def _call_on_shared_loop(
    self: AsyncToSync[Any, _R],
    executor: ContextExecutor,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> _R:
    __traceback_hide__ = True

    outcome: _Outcome | None = [_MISSING, None]
    # Idle in this thread for thread-sensitive sync_to_async calls, as stock.
    current_executor, pushed = _current_executor.push_current(
        _current_executor.LeanCurrentThreadExecutor
    )
    context = [contextvars.copy_context()]
    # main_wrap re-raises the caller's exception in the coroutine, which
    # appends main_wrap's frame to its traceback: exception -> traceback ->
    # frame -> exception, a cycle (Django's async streaming hits it). Give the
    # exception its traceback back afterwards.
    exc_info = sys.exc_info()
    handled = exc_info[1]
    handled_traceback = handled.__traceback__ if handled is not None else None
    # This thread's dict of SyncToAsync.threadlocal: no AttributeError raised
    # and caught per missing name, as getattr/hasattr on a threading.local do.
    threadlocal = SyncToAsync.threadlocal.__dict__
    saved_loop = threadlocal.get("main_event_loop", _MISSING)
    saved_pid = threadlocal.get("main_event_loop_pid", _MISSING)
    saved_task_context = threadlocal.get("task_context", _MISSING)
    task_context = None if saved_task_context is _MISSING else saved_task_context
    try:
        coroutine = self.awaitable(*args, **kwargs)
        awaitable = _main_wrap(
            outcome, exc_info, task_context, context, coroutine, current_executor
        )
        # The task starts from a copy of this context: restoring it there
        # re-homes the Local storages only. A fresh context (what stock's new
        # thread gives) ends up with the same values, after a LookupError
        # raised and caught per variable. The worker's thread-critical Local
        # values come back from the one variable they travel in.
        call = executor.start_call(
            awaitable, _worker_locals.task_context(context[0], executor)
        )
        guard = _SigintGuard.for_call(executor)
        if guard is not None:
            outer_wait, guard.waiting = guard.waiting, (call, executor)
        try:
            # run_until_future only needs add_done_callback (asgiref 3.10-3.13).
            current_executor.run_until_future(call.done)  # type: ignore[arg-type]
        except BaseException:
            # An exception raised in this thread by a signal handler (SystemExit,
            # or KeyboardInterrupt off the main thread's guard). It may have
            # landed inside the CurrentThreadExecutor's lock handling, so do
            # not wait on it again: cancel and wait, bounded, on the call.
            executor.cancel_call(call)
            call.done.wait(get_settings().cancel_timeout)
            raise
        finally:
            if guard is not None:
                guard.waiting = outer_wait
        if guard is not None and guard.interrupted:
            guard.interrupted = False
            # Ctrl-C: the coroutine was cancelled and has finished (its
            # finally blocks ran); now raise it, as asyncio.Runner does.
            raise KeyboardInterrupt
        # Resolved: run_until_future returns only after its done callback.
        error = call.done.error
        if error is not None:
            # The loop could not run the call: close what never started so
            # it is not reported as "never awaited".
            for unstarted in (awaitable, coroutine):
                if inspect.iscoroutine(unstarted):
                    unstarted.close()
            raise error
    finally:
        _worker_locals.restore(context[0], executor)
        _current_executor.pop_current(pushed)
        if handled is not None:
            handled.__traceback__ = handled_traceback
        # thread_handler, run in this thread by the CurrentThreadExecutor,
        # pointed the threadlocal at the shared loop; that loop is idle once
        # this call returns, so a later call scheduled there would wait forever.
        if (
            threadlocal.get("main_event_loop", _MISSING) is not saved_loop
            or threadlocal.get("task_context", _MISSING) is not saved_task_context
        ):
            _put_back(threadlocal, "main_event_loop", saved_loop)
            _put_back(threadlocal, "main_event_loop_pid", saved_pid)
            _put_back(threadlocal, "task_context", saved_task_context)
    assert outcome is not None
    error = outcome[1]
    if error is not None:
        # Raised with no local of this frame (which its traceback keeps)
        # referring to it: no cycle for the cyclic GC to find.
        outcome = None
        try:
            raise error
        finally:
            error = None
    value: _R = outcome[0]
    if value is _MISSING:
        raise RuntimeError("asgiref-loopshare: the call finished without a result")
    return value


def _put_back(namespace: dict[str, Any], name: str, value: object) -> None:
    if value is _MISSING:
        namespace.pop(name, None)
    else:
        namespace[name] = value


class _SigintGuard:
    """Ctrl-C while the main thread waits for a call: cancel the call first.

    Python raises KeyboardInterrupt between any two bytecodes, including inside
    ``threading.Condition`` - which can leave asgiref's CurrentThreadExecutor
    lock broken. Like ``asyncio.Runner``, take SIGINT over while a call waits:
    the first cancels the coroutine, a second one raises at once. With no call
    waiting it raises KeyboardInterrupt, as the default handler does.

    Installed at a context's first call on the main thread (``signal.signal``
    costs microseconds) and removed when the context ends, if still in place.
    Through ``_signal``, the C functions behind ``signal.signal`` and
    ``signal.getsignal``: their Python wrappers convert handlers to and from
    ``signal.Handlers`` by raising and catching a ValueError for every
    function handler, ~11 µs per context on the main thread against ~0.5 µs.
    """

    __slots__ = ("__weakref__", "interrupted", "waiting")

    def __init__(self) -> None:
        # The call waiting and its executor, only while it waits: a lasting
        # reference to the executor would make a cycle with its sigint_guard.
        self.waiting: tuple[Call, ContextExecutor] | None = None
        self.interrupted = False

    @classmethod
    def for_call(cls, executor: ContextExecutor) -> _SigintGuard | None:
        """The guard for a call made now by this thread, if it is the main one."""
        ident = _get_ident()
        looked_up = executor.sigint_lookup
        if looked_up is not None and looked_up[0] == ident:
            return looked_up[1]  # this thread's answer for the context's last call
        guard = cls._look_up(executor)
        executor.sigint_lookup = (ident, guard)
        return guard

    @classmethod
    def _look_up(cls, executor: ContextExecutor) -> _SigintGuard | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        guard = executor.sigint_guard
        if guard is None:
            current = _raw_signal.getsignal(signal.SIGINT)
            if current is not signal.default_int_handler and not (
                isinstance(getattr(current, "__self__", None), _SigintGuard)
            ):
                return None  # the application has its own handler
            guard = executor.sigint_guard = cls()
            _raw_signal.signal(signal.SIGINT, guard.on_sigint)
        return guard

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        waiting = self.waiting
        if waiting is None or self.interrupted or waiting[0].done.done():
            raise KeyboardInterrupt
        self.interrupted = True
        call, executor = waiting
        executor.cancel_call(call)

    def uninstall(self) -> None:
        """Give SIGINT back to the default handler (main thread only)."""
        if (
            threading.current_thread() is threading.main_thread()
            and _raw_signal.getsignal(signal.SIGINT) == self.on_sigint
        ):
            _raw_signal.signal(signal.SIGINT, signal.default_int_handler)


# Per shared loop, the CurrentThreadExecutors of the calls in flight; the
# newest is published in AsyncToSync.loop_thread_executors, as stock's
# new_loop_wrap does for its one call. Touched on the loop's thread only.
_loop_callers: dict[asyncio.AbstractEventLoop, list[CurrentThreadExecutor]] = {}


async def _main_wrap(
    outcome: _Outcome | None,
    exc_info: Any,
    task_context: list[asyncio.Task[Any]] | None,
    context: list[contextvars.Context],
    awaitable: Awaitable[Any],
    executor: CurrentThreadExecutor,
) -> None:
    """asgiref's ``new_loop_wrap`` around its ``main_wrap``, as one coroutine.

    The same steps, in the same order, for a task that starts in a copy of
    ``context[0]`` on the shared loop: publish *executor* for the loop, restore
    the context (only ``Local`` storages differ: `rehome_context`), register
    the task for ``sync_to_async``'s cancellation, await under the caller's
    exception, put the outcome in *outcome*, copy the context back.
    """
    __traceback_hide__ = True
    loop = _running_loop()
    assert loop is not None
    callers = _loop_callers.get(loop)
    if callers is None:
        callers = _loop_callers[loop] = [executor]
    else:
        callers.append(executor)
    AsyncToSync.loop_thread_executors[loop] = executor
    try:
        _current_executor.rehome_context(context[0])
        current_task = asyncio.current_task() if task_context is not None else None
        if current_task is not None:
            task_context.append(current_task)  # type: ignore[union-attr]
        try:
            # Under the caller's exception, so exc_info is populated.
            if exc_info[1]:
                try:
                    raise exc_info[1]
                except BaseException:
                    result = await awaitable
            else:
                result = await awaitable
        except BaseException as e:
            outcome[1] = e  # type: ignore[index]
        else:
            outcome[0] = result  # type: ignore[index]
        finally:
            # A raised exception's traceback keeps this frame: drop the
            # reference to what holds the exception.
            outcome = None
            if current_task is not None:
                task_context.remove(current_task)  # type: ignore[union-attr]
            context[0] = contextvars.copy_context()
    finally:
        callers.remove(executor)
        if callers:
            AsyncToSync.loop_thread_executors[loop] = callers[-1]
        else:
            del _loop_callers[loop]
            AsyncToSync.loop_thread_executors.pop(loop, None)


class LoopScope:
    """A loop-sharing context whose lifetime is not one ``with`` block or thread.

    For a WSGI request, which starts in ``__call__`` and ends in ``close()``,
    possibly on another thread. `activate` makes this scope's
    ``AsyncSingleThreadContext`` the current one in the current contextvars
    context; `close` ends it from any thread. Creating a scope creates no
    thread and no loop.
    """

    __slots__ = ("__weakref__", "_on_close", "context", "token")

    def __init__(self) -> None:
        self.context = ScopeContext()  # type: ignore[no-untyped-call]
        self._on_close: list[Callable[[], Awaitable[object]]] | None = None
        #: For adapters: the token of the activation that began the request,
        #: to `deactivate` where the request ends in that same context (a
        #: closed scope left set would make a later ``with
        #: AsyncSingleThreadContext()`` in that thread a no-op).
        self.token: contextvars.Token[AsyncSingleThreadContext] | None = None

    def on_close(self, callback: Callable[[], Awaitable[object]]) -> None:
        """Await ``callback()`` on this scope's loop when the scope closes.

        The place to ``aclose()`` loop-bound clients of a scope with no
        ``request_finished`` (a thread scope, a plain WSGI app). Callbacks run
        last registered first, before the loop's teardown, and only if a call
        started the loop. An exception is logged; the rest still run.
        """
        if self._on_close is None:
            self._on_close = []
        self._on_close.append(callback)

    def activate(self) -> contextvars.Token[AsyncSingleThreadContext]:
        """Make this scope current here, even inside another context."""
        return AsyncToSync.async_single_thread_context.set(self.context)

    def deactivate(self, token: contextvars.Token[AsyncSingleThreadContext]) -> None:
        """Undo `activate`; does nothing where *token* belongs to another context."""
        try:  # noqa: SIM105 - contextlib.suppress() costs more, once per request
            AsyncToSync.async_single_thread_context.reset(token)
        except ValueError:  # created in another thread's or task's context
            pass

    @property
    def started(self) -> bool:
        """Whether a call has started this scope's loop."""
        executor = AsyncToSync.context_to_thread_executor.get(self.context)
        return executor is not None and (
            not isinstance(executor, LoopExecutor) or executor.started
        )

    def close(self) -> None:
        """Tear the loop down on its own thread and return; idempotent."""
        callbacks, self._on_close = self._on_close, None
        if callbacks and not self.context.closed:
            executor = AsyncToSync.context_to_thread_executor.get(self.context)
            if isinstance(executor, ContextExecutor) and executor.started:
                _run_close_callbacks(executor, callbacks)
        self.context.close()


def _run_close_callbacks(
    executor: ContextExecutor, callbacks: list[Callable[[], Awaitable[object]]]
) -> None:
    if _running_loop() is not None:
        logger.error(
            "asgiref-loopshare: LoopScope.close() called from a running event loop; "
            "its on_close callbacks were not run"
        )
        return
    for callback in reversed(callbacks):
        try:
            # Straight onto this scope's loop, whatever loop the closing
            # thread may be nested in.
            _call_on_shared_loop(AsyncToSync(callback), executor, (), {})
        except Exception:
            logger.exception("asgiref-loopshare: on_close callback %r failed", callback)
