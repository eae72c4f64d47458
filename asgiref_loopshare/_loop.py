"""One event loop on one worker thread, for the lifetime of a context.

This module knows asyncio and threads, not asgiref. `LoopExecutor` is a
`concurrent.futures.Executor` whose worker thread owns one event loop:

- `LoopExecutor.start_call` runs a coroutine on that loop. Calls from several
  threads run concurrently on the one loop; the worker drives the loop with
  ``loop.run_until_complete`` while at least one call is in flight.
- `LoopExecutor.shutdown` tears the loop down *on its own thread* (leftover
  tasks cancelled and awaited, async generators and the default executor shut
  down, loop closed); then the worker thread ends.

A worker thread serves one executor and is never reused: CPython cannot clear
what a thread keeps in ``threading.local``, so only a thread that ran no other
context's code starts clean. The worker that ends a context starts a spare in
its place (`_WorkerPool`), off the caller's path. Each executor runs its jobs
in a fresh `contextvars.Context`.

After a call's coroutine returns, the tasks it spawned are waited for while a
reply they asked for may be on its way (`_Runner.settle_spawned`).
"""

from __future__ import annotations

import _thread
import asyncio
import atexit
import collections
import contextlib
import contextvars
import enum
import functools
import itertools
import logging
import os
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from asgiref_loopshare import _compat, _handoff

__all__ = ["LoopExecutor", "Settings", "configure", "get_settings", "is_shared_loop"]

logger = logging.getLogger("asgiref_loopshare")

_T = TypeVar("_T")


@dataclass(frozen=True)
class Settings:
    """Tunables of the shared loops (see `configure`)."""

    #: The longest a call waits, after its coroutine returned, for the tasks
    #: it spawned (stock ``asyncio.run`` would cancel them). It waits only
    #: while a reply they asked for may be on its way (see
    #: `_Runner.settle_spawned`); tasks still
    #: running then stay on the loop, frozen until the next call in the same
    #: context, and are cancelled when the context ends. 0: no wait at all.
    task_grace: float = 1.0
    #: At context exit, how long to wait for cancelled tasks to finish.
    cancel_timeout: float = 5.0
    #: At context exit, how long to wait for the loop's default executor.
    executor_timeout: float = 30.0
    #: Upper bound on spare worker threads (started ahead, never used) kept
    #: for the next contexts; 0: each context starts its thread itself.
    max_idle_workers: int = 32
    #: Creates each context's loop. ``None``: what ``asyncio.new_event_loop``
    #: makes, as a ``SharedEventLoop`` under asyncio's default policy (see
    #: `asgiref_loopshare._handoff`).
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None


_settings = Settings()


def configure(**changes: Any) -> Settings:
    """Change the `Settings` used by contexts created from now on; return them."""
    global _settings
    _settings = replace(_settings, **changes)
    return _settings


def get_settings() -> Settings:
    return _settings


_shared_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()


def is_shared_loop(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether *loop* belongs to a `LoopExecutor` (open or closed)."""
    return loop in _shared_loops


# --------------------------------------------------------------------------
# Worker threads


_Job = Callable[[], object]
_worker_names = itertools.count(1)


class _JobQueue:
    """A worker's jobs; `put` wakes the worker through a pipe, GIL released.

    A worker woken by a lock or a queue wakes while the thread that put the
    job still holds the GIL: on one CPU it runs, finds the GIL taken and
    sleeps again, about three thread switches per call where one does
    (``getrusage``). ``os.write`` releases the GIL before it wakes the worker,
    as asyncio's ``call_soon_threadsafe`` does with its self-pipe.
    """

    __slots__ = ("_jobs", "_lock", "_reader", "_writer")

    def __init__(self) -> None:
        # One consumer (the worker): deque.append/popleft are thread-safe.
        self._jobs: collections.deque[_Job | None] = collections.deque()
        # Held from a job's append to its wake-up's write: the worker may
        # take the job (through an earlier wake-up), run it and, if it was
        # its last, close the pipe, before the write; `close` waits for it.
        self._lock = _thread.allocate_lock()
        self._reader, self._writer = os.pipe()
        with contextlib.suppress(AttributeError, OSError):  # no set_blocking
            # A full pipe means wake-ups are pending already: never block.
            os.set_blocking(self._writer, False)
        _job_queues.add(self)

    def put(self, job: _Job | None) -> None:
        with self._lock:
            self._jobs.append(job)
            try:  # noqa: SIM105 - contextlib.suppress() costs more, once per call
                os.write(self._writer, b"\0")
            except BlockingIOError:  # a full pipe: wake-ups are pending already
                pass

    def get(self) -> _Job | None:
        """The next job, waiting for one (the worker thread only)."""
        jobs = self._jobs
        while not jobs:
            os.read(self._reader, 4096)  # a byte per put; extra ones are harmless
        return jobs.popleft()

    def close(self, *, forked: bool = False) -> None:
        """Close the pipe (once nothing will put to or get from this queue).

        Idempotent: a descriptor number is closed once, never after the
        system may have given it to another file. *forked*: in a forked
        child, where the thread that held the lock at fork() does not exist.
        """
        _job_queues.discard(self)
        if forked:
            fds, self._reader, self._writer = (self._reader, self._writer), -1, -1
        else:
            with self._lock:
                fds, self._reader, self._writer = (
                    (self._reader, self._writer),
                    -1,
                    -1,
                )
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)


#: Every queue whose pipe is open: a forked child closes the parent's. A plain
#: set (a queue leaves it when its pipe closes): a WeakSet's add and discard
#: cost microseconds, once per context.
_job_queues: set[_JobQueue] = set()


#: What a job returns to end its worker thread: `_Runner.teardown` does.
_RETIRE = object()


class _WorkerState(threading.local):
    #: The runner whose loop this thread runs (loop worker threads only).
    runner: _Runner | None = None


_worker_state = _WorkerState()


def current_runner() -> _Runner | None:
    """The `_Runner` whose loop the calling thread runs, if it is a loop worker."""
    return _worker_state.runner


class _Worker:
    """A daemon thread that runs the jobs of one context, then exits.

    A worker serves exactly one `_Runner`: its last job (the teardown) returns
    `_RETIRE` and the thread ends. It is never handed to another context,
    because CPython cannot clear what a thread keeps in ``threading.local``
    (asgiref ``Local(thread_critical=True)``, asyncio's running loop, any
    library's thread-locals): only a thread that never ran another context's
    code starts with none of it, as stock asgiref's new thread per call does.
    """

    __slots__ = ("jobs", "thread")

    def __init__(self, *, start: bool = True) -> None:
        """A worker, its thread started unless *start* is false (see `start`)."""
        self.jobs = _JobQueue()
        self.thread = threading.Thread(
            target=self._run,
            args=(self.jobs,),
            name=f"asgiref-loopshare-{next(_worker_names)}",
            daemon=True,
        )
        if start:
            self.thread.start()

    def start(self) -> None:
        """Start the thread of a worker made with ``start=False`` (once).

        A worker started after its first job was put runs that job straight
        away: no wake-up through the pipe, one thread switch less.
        """
        self.thread.start()

    @staticmethod
    def _run(jobs: _JobQueue) -> None:
        try:
            while True:
                job = jobs.get()
                if job is None or job() is _RETIRE:
                    return
                del job
        finally:
            # Nothing writes to the pipe after the last job (the runner is
            # closed) or the None put (the pool is closed): its numbers can go.
            jobs.close()


class _WorkerPool:
    """Spare workers: started ahead, never used, each taken by one context.

    A spare has run no code but its own loop, so it holds no thread-local
    state of anybody's. Taking one saves a context the thread start's
    hand-shake; the worker that ends a context starts the replacement, after
    its context has been released, so the start is off the caller's path.
    Never holds more spares than contexts were ever open at once, nor more
    than ``Settings.max_idle_workers``. Emptied at interpreter exit and in a
    forked child.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy = 0
        self._peak_busy = 0
        self._starting = 0
        self._closed = False

    def acquire(self) -> tuple[_Worker, bool]:
        """A spare, or a new worker whose thread the caller must `_Worker.start`
        (after putting its first job); and whether it is the latter."""
        with self._lock:
            self._busy += 1
            self._peak_busy = max(self._peak_busy, self._busy)
            if self._idle:
                return self._idle.pop(), False
        return _Worker(start=False), True

    def release(self) -> None:
        """A worker's context has ended (called on that worker, which then exits).

        Starts a spare in its place while fewer are kept than allowed.
        """
        with self._lock:
            self._busy -= 1
            # Spares being started count: two workers ending at once must not
            # both start the last one allowed.
            if self._closed or len(self._idle) + self._starting >= min(
                self._peak_busy, _settings.max_idle_workers
            ):
                return
            self._starting += 1
        spare = None
        try:
            if threading.main_thread().is_alive():
                # (Not once the interpreter is exiting - atexit runs after the
                # main thread stopped: a thread started then may still be
                # starting when the runtime is finalized; Python 3.9 crashes.)
                spare = _Worker()
        except RuntimeError:  # interpreter shutdown: no new threads
            pass
        finally:
            with self._lock:
                self._starting -= 1
                if spare is not None and not self._closed:
                    self._idle.append(spare)
                    spare = None
        if spare is not None:
            spare.jobs.put(None)

    def forget(self) -> None:
        """A worker taken by `acquire` never started: no context holds it."""
        with self._lock:
            self._busy -= 1

    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)

    def close(self, timeout: float = 1.0) -> None:
        """Stop the spare workers and wait (bounded) for them to exit."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.jobs.put(None)
        for worker in idle:
            worker.thread.join(timeout)


_pool = _WorkerPool()
#: This process's id, kept current by `_reset_after_fork`: ``os.getpid()`` is
#: a system call, and a context asked it at every call and at its exit.
_pid = os.getpid()


def _close_pool_at_exit() -> None:
    _pool.close()


def _reset_after_fork() -> None:
    # The parent's workers do not exist in the child: start from nothing, and
    # close the pipes of their queues (nothing in the child uses them: an
    # executor from the parent never touches its worker here).
    global _pool, _pid
    _pool = _WorkerPool()
    _pid = os.getpid()
    for jobs in list(_job_queues):
        jobs.close(forked=True)


def current_pid() -> int:
    """``os.getpid()``, without a system call (updated in a forked child)."""
    return _pid


atexit.register(_close_pool_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


# --------------------------------------------------------------------------
# The loop of one context


class _State(enum.Enum):
    IDLE = "idle"  # nothing created yet: no thread, no loop
    OPEN = "open"  # a worker holds the loop
    CLOSED = "closed"


class CallDone:
    """Completion of a `Call`: the part of a Future that waiting on it needs.

    asgiref's ``CurrentThreadExecutor.run_until_future`` only calls
    ``add_done_callback``. A ``concurrent.futures.Future`` builds a Condition
    and notifies it, ~6 us per call here; this costs a lock, and an Event
    only for a caller that blocks in `wait` / `result`.
    """

    __slots__ = ("_callbacks", "_event", "_exception", "_finished", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[CallDone], object]] = []
        self._event: threading.Event | None = None
        self._exception: BaseException | None = None
        self._finished = False

    def add_done_callback(self, fn: Callable[[CallDone], object]) -> None:
        with self._lock:
            if not self._finished:
                self._callbacks.append(fn)
                return
        fn(self)

    def done(self) -> bool:
        return self._finished

    @property
    def error(self) -> BaseException | None:
        """The call's exception once resolved with one; ``None`` otherwise."""
        return self._exception

    def wait(self, timeout: float | None = None) -> bool:
        """Block until resolved or *timeout*; return whether it is resolved."""
        with self._lock:
            if self._finished:
                return True
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def result(self, timeout: float | None = None) -> None:
        """Return once resolved; raise the call's exception, if any."""
        if not self.wait(timeout):
            raise TimeoutError
        if self._exception is not None:
            raise self._exception

    def resolve(self, exc: BaseException | None) -> None:
        """Resolve once (later calls do nothing) and run the callbacks."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            self._exception = exc
            callbacks, self._callbacks = self._callbacks, []
            event = self._event
        if event is not None:
            event.set()
        for fn in callbacks:
            fn(self)


class Call:
    """One coroutine started on a `LoopExecutor`; ``done`` resolves when it ends."""

    __slots__ = ("cancel_requested", "context", "coro", "done", "drive", "task")

    def __init__(
        self, coro: Coroutine[Any, Any, Any], context: contextvars.Context | None
    ) -> None:
        self.coro = coro
        # What the call's task runs in: given, or a fresh, empty context, as
        # asyncio.run's main task gets in a new thread. Nothing leaks from
        # one call to the next either way.
        self.context = contextvars.Context() if context is None else context
        self.done = CallDone()
        self.task: asyncio.Task[Any] | None = None
        self.drive: _Drive | None = None
        self.cancel_requested = False


class _Drive:
    """One ``run_until_complete`` on the worker: it lasts while its calls run.

    The first call runs inline in the driver task (no extra task, no extra
    loop iteration); calls arriving meanwhile from other threads are injected
    as tasks and counted in ``pending``.
    """

    __slots__ = ("drained", "pending")

    def __init__(self) -> None:
        self.pending = 1
        self.drained: asyncio.Future[None] | None = None


class _Runner:
    """The state an executor shares with its worker jobs and its finalizer."""

    def __init__(
        self,
        settings: Settings,
        default_loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
    ) -> None:
        self.settings = settings
        self.loop_factory = (
            settings.loop_factory or default_loop_factory or asyncio.new_event_loop
        )
        self.lock = threading.Lock()
        self.state = _State.IDLE
        self.pid = _pid
        # Whether the worker has made self.loop its current loop yet.
        self.bound = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.worker: _Worker | None = None
        self.pool = _pool
        self.base_context = contextvars.Context()
        # The drive that accepts injected calls, if the worker is driving.
        self.current_drive: _Drive | None = None
        self.calls: set[Call] = set()
        self.call_tasks: set[asyncio.Task[Any]] = set()
        # Every task created on the loop during the current drive, in order
        # (see task_factory): what a call spawned is a slice of it.
        self.spawned: list[asyncio.Task[Any]] = []
        # The variables this worker's thread-critical asgiref Locals created,
        # and the stashes their values travel in (see _worker_locals).
        self.thread_variables: set[contextvars.ContextVar[Any]] = set()
        self.stash_key = object()
        self.stashes: list[Any] = []
        # Default executors taken from the loop after each drive (see drive).
        self.detached_executors: list[Executor] = []

    # -- called with self.lock held, from any thread

    def open_locked(self) -> tuple[_Worker, bool]:
        """The worker, made ready at the first call; and whether its thread is
        the caller's to start (`start_worker`), once it has put its job."""
        if self.state is _State.CLOSED:
            raise RuntimeError("asgiref-loopshare: this context's event loop is closed")
        if self.pid != _pid:
            raise RuntimeError(
                "asgiref-loopshare: this context's event loop belongs to the parent "
                "process"
            )
        if self.state is _State.IDLE:
            loop = self.loop_factory()
            # typeshed's _TaskFactory protocol has no **kwargs (3.11+ pass context=).
            loop.set_task_factory(self.task_factory)  # type: ignore[arg-type]
            _shared_loops.add(loop)
            self.loop = loop
            # The pool is remembered: the worker goes back to the one it came
            # from (a forked child, or a test, may have replaced `_pool`).
            self.pool = _pool
            self.worker, fresh = self.pool.acquire()
            self.state = _State.OPEN
            return self.worker, fresh
        assert self.worker is not None
        return self.worker, False

    def start_worker(self, worker: _Worker) -> None:
        """Start a new worker's thread; if none can start, close, never hang."""
        try:
            worker.start()
        except BaseException as exc:  # RuntimeError: can't start new thread
            with self.lock:
                self.state = _State.CLOSED
                loop, self.loop, self.worker = self.loop, None, None
            self.pool.forget()
            worker.jobs.close()
            if loop is not None:
                loop.close()  # it never ran: closing it here is safe
            self.fail_inflight(exc)
            raise

    def job(self, fn: Callable[[], object]) -> _Job:
        return functools.partial(self.base_context.run, fn)

    # -- worker thread

    def task_factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any],
        **kwargs: Any,
    ) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        self.spawned.append(task)
        return task

    def bind_loop(self) -> None:
        """Make the loop the worker's current one (first job only)."""
        self.bound = True
        _worker_state.runner = self
        asyncio.set_event_loop(self.loop)

    def drive(self, first: Call) -> None:
        loop = self.loop
        assert loop is not None
        if not self.bound:
            self.bind_loop()
        coro = self.drive_calls(first)
        try:
            driver = _compat.create_task(loop, coro, first.context)
        except BaseException as exc:
            coro.close()
            self.fail_inflight(exc)
            return
        first.task = driver
        while True:
            try:
                loop.run_until_complete(driver)
                break
            except BaseException as exc:
                if isinstance(exc, RuntimeError) and not (
                    loop.is_closed() or driver.done()
                ):
                    # A coroutine called loop.stop(): keep driving.
                    logger.warning(
                        "asgiref-loopshare: a coroutine stopped the shared loop; "
                        "resuming it"
                    )
                    continue
                self.fail_inflight(exc)
                return
        # Each asyncio.run has a default executor of its own, so stock's
        # thread-insensitive sync_to_async never runs on a thread an earlier
        # call's code ran on (thread-locals): nor here, from one drive to the
        # next. Its threads finish on their own; teardown waits for them.
        executor = _compat.detach_default_executor(loop)
        if executor is not None:
            self.detached_executors.append(executor)

    async def drive_calls(self, first: Call) -> None:
        drive = first.drive
        assert drive is not None
        assert self.loop is not None
        error: BaseException | None = None
        if first.cancel_requested:
            error = asyncio.CancelledError()
        else:
            mark = len(self.spawned)
            try:
                # run_call(first), inlined: one coroutine less per call.
                try:
                    await first.coro
                finally:
                    if len(self.spawned) > mark and self.settings.task_grace > 0:
                        await self.settle_spawned(mark)
            except BaseException as exc:  # a raw coroutine's error or cancellation
                error = exc
                if isinstance(exc, asyncio.CancelledError):
                    _compat.uncancel(first.task)
        self.finish_call(first, error)
        while True:
            with self.lock:
                if drive.pending == 0:
                    self.spawned.clear()
                    return
                drive.drained = self.loop.create_future()
            try:
                await drive.drained
            except asyncio.CancelledError:
                # Cancelled as the first call's task; the others still run.
                _compat.uncancel(first.task)

    def start_injected(self, call: Call) -> None:
        assert self.loop is not None
        if call.cancel_requested:
            self.finish_call(call, asyncio.CancelledError())
            return
        task = _compat.create_task(self.loop, self.run_call(call), call.context)
        call.task = task
        self.call_tasks.add(task)
        task.add_done_callback(functools.partial(self.on_injected_done, call))

    def on_injected_done(self, call: Call, task: asyncio.Task[Any]) -> None:
        self.call_tasks.discard(task)
        error = asyncio.CancelledError() if task.cancelled() else task.exception()
        self.finish_call(call, error)

    async def run_call(self, call: Call) -> None:
        mark = len(self.spawned)
        try:
            await call.coro
        finally:
            if len(self.spawned) > mark and self.settings.task_grace > 0:
                await self.settle_spawned(mark)

    async def settle_spawned(self, mark: int) -> None:
        """Let the tasks a call spawned (``spawned[mark:]``) finish while they
        may make progress; return once they are done or can make none.

        A fire-and-forget task waiting for a reply (channels_redis's
        ``_clean_receive_backup``, which releases a process-wide lock) is
        waited for; a task waiting for what will not come during the call (a
        pool's idle workers on their queue, a subscriber's reader on its
        connection, a keep-alive timer) is not, and stays on the loop until
        the next call or the teardown. First what is ready runs (a task just
        spawned has not sent its request yet); then, while a reply that one of
        them asked for may be on its way (`SharedEventLoop.awaits_reply`), the
        wait goes on one
        `_Selector.reply_window` at a time (several times the longest reply
        this loop recently waited for, at least the thread switch interval)
        and ends after a window without any readiness event (each event
        ends a window early: what it made ready runs, and all is looked at
        again). ``task_grace``
        bounds the whole wait. A loop of another kind (a ``loop_factory``'s)
        waits ``task_grace``, or until the tasks are done.
        """
        current = asyncio.current_task()
        pending = [
            task
            for task in self.spawned[mark:]
            if not task.done() and task is not current and task not in self.call_tasks
        ]
        if not pending:
            return
        loop = self.loop
        grace = self.settings.task_grace
        if not isinstance(loop, _handoff.SharedEventLoop):
            await asyncio.wait(pending, timeout=grace)
            return
        selector: _handoff._Selector = loop._selector  # type: ignore[attr-defined]
        deadline = loop.time() + grace
        while True:
            while loop.has_ready_callbacks() and loop.time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0)  # one loop pass: what is ready runs
            pending = [task for task in pending if not task.done()]
            remaining = deadline - loop.time()
            if not pending or remaining <= 0 or not loop.awaits_reply(pending):
                return
            # Woken by the first readiness event or finished task, whichever
            # comes first; then what it made ready runs and all is looked at
            # again.
            event = selector.waiter = loop.create_future()
            try:
                done, _ = await asyncio.wait(
                    [event, *pending],
                    timeout=min(selector.reply_window(), remaining),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                selector.waiter = None
                event.cancel()
            if not done:
                return  # a whole window without a reply: none is coming soon

    def finish_call(self, call: Call, exc: BaseException | None = None) -> None:
        drive = call.drive
        assert drive is not None
        with self.lock:
            if call not in self.calls:  # already failed by fail_inflight
                return
            self.calls.discard(call)
            drive.pending -= 1
            if drive.pending == 0:
                # Stop accepting injections before the caller can call again:
                # its next call starts a new drive instead.
                if self.current_drive is drive:
                    self.current_drive = None
                drained = drive.drained
                if drained is not None and not drained.done():
                    drained.set_result(None)
        if call.task is None or call.task.cancelled() or call.cancel_requested:
            # Possibly never started: close it so it is not reported as
            # "never awaited" (closing a finished coroutine does nothing).
            call.coro.close()
        call.done.resolve(exc)

    def cancel_call(self, call: Call) -> None:
        call.cancel_requested = True
        if call.task is not None:
            call.task.cancel()

    def fail_inflight(self, exc: BaseException) -> None:
        """The loop could not be driven: fail every call in flight, never hang."""
        with self.lock:
            self.current_drive = None
            calls, self.calls = self.calls, set()
        self.spawned.clear()
        error = RuntimeError(
            f"asgiref-loopshare: the shared event loop cannot run: {exc!r}"
        )
        error.__cause__ = exc
        for call in calls:
            call.coro.close()
            call.done.resolve(error)

    def run_job(
        self, future: Future[_T], fn: Callable[..., _T], args: Any, kwargs: Any
    ) -> None:
        if not self.bound:
            self.bind_loop()
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        finally:
            # asyncio.run() (stock force_new_loop) clears the current loop.
            if self.loop is not None and not self.loop.is_closed():
                asyncio.set_event_loop(self.loop)

    def teardown(self, done: _thread.LockType | None) -> object:
        """Close the loop, release *done* (if given), end the worker thread.

        Returns `_RETIRE`: the worker's last job. The spare that replaces it
        is started after *done* is released, off the waiting caller's path.
        """
        loop, worker = self.loop, self.worker
        try:
            if loop is not None and not loop.is_closed():
                try:
                    if _has_work_left(loop):
                        loop.run_until_complete(self.shutdown_loop())
                except BaseException:
                    logger.exception(
                        "asgiref-loopshare: error while closing a shared loop"
                    )
                finally:
                    asyncio.set_event_loop(None)
                    loop.close()
            elif loop is not None:
                asyncio.set_event_loop(None)
            if self.detached_executors:
                executors, self.detached_executors = self.detached_executors, []
                _compat.join_executors(executors, self.settings.executor_timeout)
        finally:
            self.loop = None
            self.worker = None
            _worker_state.runner = None
            if self.stashes:
                for stash in self.stashes:
                    stash.values = None  # an ended context's values go with it
                self.stashes.clear()
            if done is not None:
                done.release()
            if worker is not None:
                self.pool.release()
        return _RETIRE

    async def shutdown_loop(self) -> None:
        loop = asyncio.get_running_loop()
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        if pending:
            for task in pending:
                task.cancel()
            finished, stuck = await asyncio.wait(
                pending, timeout=self.settings.cancel_timeout
            )
            for task in finished:
                if not task.cancelled() and task.exception() is not None:
                    loop.call_exception_handler(
                        {
                            "message": "unhandled exception in a task cancelled at "
                            "context exit",
                            "exception": task.exception(),
                            "task": task,
                        }
                    )
            if stuck:
                names = ", ".join(sorted(task.get_name() for task in stuck))
                warnings.warn(
                    f"asgiref-loopshare: {len(stuck)} task(s) ignored cancellation for "
                    f"{self.settings.cancel_timeout}s at context exit and were "
                    f"abandoned: {names}",
                    RuntimeWarning,
                    stacklevel=1,
                )
        await loop.shutdown_asyncgens()
        await _compat.shutdown_default_executor(loop, self.settings.executor_timeout)

    # -- finalizer: the executor was dropped without shutdown()

    def abandon(self, owner: weakref.ref[LoopExecutor]) -> None:
        _owners.discard(owner)
        with self.lock:
            if self.state is not _State.OPEN or self.pid != _pid:
                self.state = _State.CLOSED
                return
            self.state = _State.CLOSED
            worker = self.worker
        assert worker is not None
        worker.jobs.put(self.job(functools.partial(self.teardown, None)))


def _has_work_left(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether closing *loop* needs a shutdown run first.

    Skipping ``run_until_complete(shutdown_loop())`` when there are no tasks,
    no async generators and no default executor saves ~45 us per context
    (measured, CPU time): most requests leave nothing behind. Tasks are
    looked for on this loop only if any task is alive in the process.
    """
    if not isinstance(loop, asyncio.BaseEventLoop):
        return True  # another implementation (uvloop): always run the shutdown
    return bool(
        getattr(loop, "_asyncgens", True)
        or getattr(loop, "_default_executor", True) is not None
        or (not _compat.no_task_alive() and bool(asyncio.all_tasks(loop)))
    )


#: Weak references to live executors, with `_Runner.abandon` as callback.
_owners: set[weakref.ref[LoopExecutor]] = set()


class LoopExecutor(Executor):
    """An executor with one event loop on one worker thread.

    Nothing is created until the first call or job. `shutdown` tears the loop
    down on its own thread and returns the thread to the pool; an executor
    dropped without `shutdown` is torn down the same way, without waiting.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        default_loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> None:
        """Without ``settings.loop_factory``, *default_loop_factory* makes the loop."""
        self._runner = runner = _Runner(settings or _settings, default_loop_factory)
        #: The runner's, for `asgiref_loopshare._worker_locals`.
        self.thread_variables = runner.thread_variables
        self.stash_key = runner.stash_key
        self.stashes = runner.stashes
        # Not weakref.finalize: that costs more per context and would also run
        # at interpreter exit, where daemon workers are simply left to die.
        # The ref lives in a module-level set, not on the runner: the runner
        # -> ref -> runner.abandon -> runner cycle would need the cyclic GC.
        self._owner = weakref.ref(self, self._runner.abandon)
        _owners.add(self._owner)

    @property
    def started(self) -> bool:
        return self._runner.state is not _State.IDLE

    @property
    def closed(self) -> bool:
        return self._runner.state is _State.CLOSED

    @property
    def forked(self) -> bool:
        """Whether this executor was created in another (parent) process."""
        return self._runner.pid != _pid

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._runner.loop

    def start_call(
        self,
        coro: Coroutine[Any, Any, Any],
        context: contextvars.Context | None = None,
    ) -> Call:
        """Run *coro* on the loop, concurrently with other calls in flight.

        Its task runs in *context* (not shared with any other call), by
        default a fresh, empty one.
        """
        runner = self._runner
        call = Call(coro, context)
        with runner.lock:
            worker, fresh = runner.open_locked()
            runner.calls.add(call)
            drive = runner.current_drive
            if drive is not None:
                drive.pending += 1
                call.drive = drive
                assert runner.loop is not None
                runner.loop.call_soon_threadsafe(runner.start_injected, call)
                return call
            call.drive = runner.current_drive = _Drive()
        worker.jobs.put(runner.job(functools.partial(runner.drive, call)))
        if fresh:
            runner.start_worker(worker)
        return call

    def cancel_call(self, call: Call) -> None:
        """Cancel *call* (from any thread); ``call.done`` resolves once it ended."""
        loop = self._runner.loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # closed meanwhile
            loop.call_soon_threadsafe(self._runner.cancel_call, call)

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        """Run ``fn(*args, **kwargs)`` on the worker thread, outside the loop."""
        runner = self._runner
        future: Future[_T] = Future()
        with runner.lock:
            worker, fresh = runner.open_locked()
        worker.jobs.put(
            runner.job(functools.partial(runner.run_job, future, fn, args, kwargs))
        )
        if fresh:
            runner.start_worker(worker)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Tear the loop down on its thread; with *wait*, return after that."""
        runner = self._runner
        _owners.discard(self._owner)
        with runner.lock:
            state, runner.state = runner.state, _State.CLOSED
            if state is not _State.OPEN or runner.pid != _pid:
                return
            worker = runner.worker
        assert worker is not None
        # A bare lock, released by the worker: a Future would build a
        # Condition (~4 us a context) to signal this one event.
        done = threading.Lock()
        done.acquire()
        worker.jobs.put(runner.job(functools.partial(runner.teardown, done)))
        if wait and threading.current_thread() is not worker.thread:
            done.acquire()


def idle_workers() -> int:
    """How many worker threads are idle in the pool (for tests and reports)."""
    return _pool.idle_count()
