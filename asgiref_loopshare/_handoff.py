"""`SharedEventLoop`: asyncio's selector loop, minus two costs per call.

The hand-off to asgiref's ``CurrentThreadExecutor``
---------------------------------------------------

A thread-sensitive ``sync_to_async`` awaited inside a call runs its function
back on the calling thread: ``loop.run_in_executor(current_thread_executor,
...)``. asyncio builds that from ``executor.submit``, which returns a
``concurrent.futures.Future`` (a Condition, taken three times per hand-off),
and ``wrap_future``, which chains a second, asyncio future to it in both
directions. Django pays it twice per request for every ``MiddlewareMixin``
running in async mode.

`SharedEventLoop`, the loop a context gets unless ``Settings.loop_factory``
says otherwise, keeps asyncio's loop as it is except for that case: its
``run_in_executor`` queues asgiref's own work item on the executor, as
``CurrentThreadExecutor.submit`` does (same checks, same walk to an older
executor, same errors), and the work item resolves one asyncio future through
``call_soon_threadsafe``, as the chained callbacks would. Every other executor,
and debug mode, take asyncio's own path.

Polls that cannot find anything
-------------------------------
Every iteration of the loop polls its selector, with a zero timeout while
callbacks are ready: a system call each time, three per call of a coroutine
that awaits once. While the only file descriptor registered is the loop's own
self-pipe (no sockets: the common case between calls), such a poll can only
report bytes written by ``call_soon_threadsafe``, whose callbacks are already
in the ready queue; `_Selector` answers it with no events instead. A poll
that may wait, or any poll once something else is registered, is made as
usual; unread self-pipe bytes are drained by the next one.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import collections
import concurrent.futures
import selectors
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from asgiref import current_thread_executor as _cte_module
from asgiref.current_thread_executor import CurrentThreadExecutor

from asgiref_loopshare._current_executor import LeanCurrentThreadExecutor

__all__ = ["SharedEventLoop", "new_event_loop"]

_T = TypeVar("_T")

_monotonic = time.monotonic
#: How many recent reply waits `_Selector.reply_window` looks at.
_REPLY_SAMPLES = 32
#: "Clearly longer than the replies": this many times the longest recent one.
_REPLY_FACTOR = 4.0


def _convert_exception(exc: BaseException) -> BaseException:
    """What asyncio's ``wrap_future`` turns a concurrent.futures error into."""
    exc_class = type(exc)
    if exc_class is concurrent.futures.CancelledError:
        return asyncio.CancelledError(*exc.args)
    if exc_class is concurrent.futures.TimeoutError:
        return asyncio.TimeoutError(*exc.args)
    if exc_class is concurrent.futures.InvalidStateError:
        return asyncio.InvalidStateError(*exc.args)
    return exc


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.cancelled():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.cancelled():
        future.set_exception(_convert_exception(exc))


class _LoopFutureSetter:
    """The part of a ``concurrent.futures.Future`` that asgiref's work item uses.

    Called on the executor's thread. A cancelled asyncio future means the
    work item does not run, as when asyncio cancels the chained future; a
    result for a loop closed meanwhile is dropped, as asyncio does.
    """

    __slots__ = ("future", "loop")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any]
    ) -> None:
        self.loop = loop
        self.future = future

    def set_running_or_notify_cancel(self) -> bool:
        return not self.future.cancelled()

    def set_result(self, result: object) -> None:
        self._deliver(_set_result, result)

    def set_exception(self, exc: BaseException) -> None:
        self._deliver(_set_exception, exc)

    def _deliver(
        self, setter: Callable[[asyncio.Future[Any], Any], None], value: Any
    ) -> None:
        loop = self.loop
        if loop.is_closed():
            return
        try:  # noqa: SIM105 - contextlib.suppress() costs more, per hand-off
            loop.call_soon_threadsafe(setter, self.future, value)
        except RuntimeError:  # closed meanwhile
            pass


def _supported() -> bool:
    """Whether asgiref's CurrentThreadExecutor has the shape this module uses.

    Identical in asgiref 3.10 - 3.13; anything else takes asyncio's path.
    """
    if sys.platform == "win32" or not hasattr(_cte_module, "_WorkItem"):
        return False
    executor = CurrentThreadExecutor(None)
    return (
        isinstance(getattr(executor, "_work_thread", None), threading.Thread)
        and hasattr(getattr(executor, "_work_ready", None), "notify")
        and hasattr(getattr(executor, "_work_items", None), "append")
        and getattr(executor, "_broken", None) is False
        and hasattr(executor, "_old_executor")
    )


_SUPPORTED = _supported()
#: asgiref's class and the package's own (`_current_executor`), exactly: a
#: subclass of either may override ``submit``.
_CURRENT_THREAD_EXECUTORS = (CurrentThreadExecutor, LeanCurrentThreadExecutor)


def _submit(
    loop: asyncio.AbstractEventLoop,
    executor: CurrentThreadExecutor,
    func: Callable[..., Any],
    args: tuple[Any, ...],
) -> asyncio.Future[Any]:
    """``CurrentThreadExecutor.submit``, resolving an asyncio future instead."""
    if threading.current_thread() == executor._work_thread:
        raise RuntimeError(
            "You cannot submit onto CurrentThreadExecutor from its own thread"
        )
    future = loop.create_future()
    work_item = _cte_module._WorkItem(
        _LoopFutureSetter(loop, future),  # type: ignore[arg-type]
        func,
        *args,
    )
    target = executor
    while True:
        with target._work_ready:
            if not target._broken:
                target._work_items.append(work_item)
                target._work_ready.notify()
                return future
        if target._old_executor is None:
            raise RuntimeError("CurrentThreadExecutor already quit or is broken")
        target = target._old_executor


class _Selector(selectors.DefaultSelector):
    """The default selector, skipping zero-timeout polls with only the self-pipe.

    It also serves the wait for the tasks a call spawned
    (`asgiref_loopshare._loop`): it resolves ``waiter`` at its next readiness
    event (anything a task may wake on: a reply, a thread's
    ``call_soon_threadsafe``), and notes how long its recent blocking polls
    waited for a reply on a descriptor other than the loop's self-pipe, from
    which `reply_window` derives how long "silent" is on this loop.
    """

    def __init__(self) -> None:
        super().__init__()
        self._registered = 0
        #: The loop's self-pipe descriptor (set by `SharedEventLoop`).
        self.self_pipe = -1
        #: Seconds the recent blocking polls that ended with a reply waited.
        self.reply_waits: collections.deque[float] = collections.deque(
            maxlen=_REPLY_SAMPLES
        )
        #: A future of the loop to resolve at the next readiness event.
        self.waiter: asyncio.Future[None] | None = None

    def reply_window(self) -> float:
        """How long a task may stay silent before it counts as waiting for
        something that will not come soon: several times the longest recent
        reply wait, and never less than the interpreter's thread switch
        interval (a reply is read only once this thread gets the GIL)."""
        waits = self.reply_waits
        longest = max(waits) if waits else 0.0
        return max(_REPLY_FACTOR * longest, sys.getswitchinterval())

    def register(
        self, fileobj: Any, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        key: selectors.SelectorKey = super().register(fileobj, events, data)
        self._registered += 1
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key: selectors.SelectorKey = super().unregister(fileobj)
        self._registered -= 1
        return key

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            if self._registered <= 1:
                return []
            events: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        else:
            start = _monotonic()
            events = super().select(timeout)
            if events and (len(events) > 1 or events[0][0].fd != self.self_pipe):
                self.reply_waits.append(_monotonic() - start)
        waiter = self.waiter
        if events and waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return events


class _ReplyTransport(asyncio.selector_events._SelectorSocketTransport):  # type: ignore[name-defined,misc]
    """asyncio's socket transport, knowing whether it awaits a reply.

    ``awaiting_reply`` names the task that wrote (weakly) and is cleared when
    data arrives: a connection waiting for a reply to what a task sent (a
    command, a query) is not the same as one waiting for whatever the peer may
    push (a subscriber's connection, an idle pooled one).
    """

    #: The task that wrote since data last arrived (weakly), if any.
    awaiting_reply: weakref.ref[asyncio.Task[Any]] | None = None

    def write(self, data: Any) -> None:
        super().write(data)
        if data:
            self._note_writer()

    def writelines(self, list_of_data: Any) -> None:
        super().writelines(list_of_data)
        self._note_writer()

    def _note_writer(self) -> None:
        task = asyncio.current_task(self._loop)
        self.awaiting_reply = None if task is None else weakref.ref(task)

    def _read_ready(self) -> None:
        self.awaiting_reply = None
        super()._read_ready()


#: Python 3.12+ checks that a socket has no transport yet when making one.
_ENSURES_NO_TRANSPORT = "_ensure_fd_no_transport" in (
    asyncio.selector_events.BaseSelectorEventLoop._make_socket_transport.__code__.co_names  # type: ignore[attr-defined]
)


class SharedEventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop, with the economies described above."""

    def __init__(self) -> None:
        selector = _Selector()
        super().__init__(selector)
        selector.self_pipe = self._ssock.fileno()  # type: ignore[attr-defined]

    def _make_socket_transport(
        self,
        sock: Any,
        protocol: Any,
        waiter: Any = None,
        *,
        extra: Any = None,
        server: Any = None,
    ) -> Any:
        if _ENSURES_NO_TRANSPORT:
            self._ensure_fd_no_transport(sock)  # type: ignore[attr-defined]
        return _ReplyTransport(self, sock, protocol, waiter, extra, server)

    def has_ready_callbacks(self) -> bool:
        """Whether callbacks are ready to run (the loop would not block now)."""
        return bool(self._ready)  # type: ignore[attr-defined]

    def awaits_reply(self, tasks: Collection[asyncio.Task[Any]]) -> bool:
        """Whether a reply that one of *tasks* asked for may be on its way:
        a connection that one of them wrote to has heard nothing since, a
        write is pending, or a reader is registered that this loop cannot see
        into (``add_reader``, ``sock_recv``, a listening socket). A reply to
        what other code sent (a call's own ``UNSUBSCRIBE``, read later by a
        subscriber's reader) is not waited for, nor what a peer may push some
        time; timers (a poll, a keep-alive) are not replies."""
        selector = self._selector  # type: ignore[attr-defined]
        for key in selector.get_map().values():
            if key.fd == selector.self_pipe:
                continue
            reader, writer = key.data
            if writer is not None:
                return True
            callback = getattr(reader, "_callback", None)
            transport = getattr(callback, "__self__", None)
            if not isinstance(transport, _ReplyTransport):
                return True
            writer = transport.awaiting_reply
            if writer is not None and writer() in tasks:
                return True
        return False

    def run_in_executor(  # type: ignore[override]
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[..., _T],
        *args: Any,
    ) -> asyncio.Future[_T]:
        if type(executor) in _CURRENT_THREAD_EXECUTORS and not self.get_debug():
            if self.is_closed():
                raise RuntimeError("Event loop is closed")
            return _submit(self, executor, func, args)  # type: ignore[arg-type]
        return super().run_in_executor(executor, func, *args)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A `SharedEventLoop` where asyncio would make its default loop.

    An event loop policy other than asyncio's default (uvloop's, say) is
    respected: its loop is returned unchanged.
    """
    policy = asyncio.get_event_loop_policy()
    if _SUPPORTED and type(policy) is asyncio.DefaultEventLoopPolicy:
        return SharedEventLoop()
    return policy.new_event_loop()
