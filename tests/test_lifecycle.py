"""What a context leaves behind when it ends: nothing."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.sync import AsyncSingleThreadContext, AsyncToSync

from asgiref_loopshare import _loop
from tests.conftest import AsyncToSyncFactory, loop_and_thread

marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")


def test_loop_is_closed_when_the_context_exits(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        loop, _ = async_to_sync(loop_and_thread)()
        assert not loop.is_closed()
    assert loop.is_closed()


def test_executor_is_removed_from_asgiref_state_at_exit(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext() as context:
        async_to_sync(loop_and_thread)()
        assert context in AsyncToSync.context_to_thread_executor
    assert context not in AsyncToSync.context_to_thread_executor
    assert not AsyncToSync.loop_thread_executors


def test_an_exited_context_holds_no_reference_to_its_executor(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    gc.disable()  # freed by reference counting, not found by the collector
    try:
        with AsyncSingleThreadContext() as context:
            async_to_sync(loop_and_thread)()
            executor = weakref.ref(AsyncToSync.context_to_thread_executor[context])
        assert executor() is None
    finally:
        gc.enable()


def test_a_call_after_the_context_exited_runs_as_stock(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    context = AsyncSingleThreadContext()
    with context:
        shared, _ = async_to_sync(loop_and_thread)()
    token = AsyncToSync.async_single_thread_context.set(context)
    try:  # the exited context made current again: no executor is reused
        loop, _ = async_to_sync(loop_and_thread)()
    finally:
        AsyncToSync.async_single_thread_context.reset(token)
    assert loop is not shared
    assert context not in AsyncToSync.context_to_thread_executor


def _made_by_the_loop(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(coro)


def _made_directly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    # asyncio.Task(...) bypasses the task factory that tracks a call's tasks:
    # teardown must still find it (asyncio's own registry of tasks).
    return asyncio.Task(coro)


@pytest.mark.parametrize(
    "make_task", [_made_by_the_loop, _made_directly], ids=["create_task", "Task()"]
)
def test_pending_task_is_cancelled_and_its_finally_runs(
    async_to_sync: AsyncToSyncFactory,
    make_task: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]],
) -> None:
    _loop.configure(task_grace=0)
    events: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            events.append(f"finally on {threading.current_thread().name}")

    async def spawn() -> asyncio.Task[None]:
        return make_task(forever())

    with AsyncSingleThreadContext():
        task = async_to_sync(spawn)()
        assert not task.done()
        _, worker = async_to_sync(loop_and_thread)()
    assert task.cancelled()
    assert events == [f"finally on {worker.name}"]


def test_a_task_alive_on_another_loop_does_not_change_teardown(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    # With a task alive anywhere, teardown looks for this loop's tasks:
    # none here, so the loop simply closes.
    other = asyncio.new_event_loop()
    elsewhere = other.create_task(asyncio.sleep(3600))
    try:
        with AsyncSingleThreadContext():
            loop, _ = async_to_sync(loop_and_thread)()
        assert loop.is_closed()
        assert not elsewhere.done()
    finally:
        elsewhere.cancel()
        other.run_until_complete(asyncio.sleep(0))
        other.close()


def test_async_generator_is_finalised_at_exit(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    events: list[str] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            events.append("closed")

    holder: list[AsyncIterator[int]] = []

    async def take_one() -> int:
        generator = numbers()
        holder.append(generator)  # keep it alive: only shutdown_asyncgens closes it
        return await generator.__anext__()

    with AsyncSingleThreadContext():
        assert async_to_sync(take_one)() == 1
        assert events == []
    assert events == ["closed"]


def test_default_executor_threads_are_joined_when_the_context_exits(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def use_default_executor() -> threading.Thread:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, threading.current_thread)

    with AsyncSingleThreadContext():
        first = async_to_sync(use_default_executor)()
        second = async_to_sync(use_default_executor)()
    assert not first.is_alive()
    assert not second.is_alive()


def test_each_call_gets_a_default_executor_of_its_own_as_with_asyncio_run(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def use_default_executor() -> threading.Thread:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, threading.current_thread)

    with AsyncSingleThreadContext():
        threads = [async_to_sync(use_default_executor)() for _ in range(3)]
    assert len(set(threads)) == 3


def test_each_context_runs_on_a_thread_no_other_context_ran_on(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    workers = []
    for _ in range(5):
        with AsyncSingleThreadContext():
            _, worker = async_to_sync(loop_and_thread)()
            _, same = async_to_sync(loop_and_thread)()
        assert same is worker
        workers.append(worker)
    assert len(set(workers)) == 5


def test_a_context_s_worker_thread_ends_after_its_teardown(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        loop, worker = async_to_sync(loop_and_thread)()
    assert loop.is_closed()
    worker.join(5)
    assert not worker.is_alive()


def test_next_context_s_worker_has_no_contextvars_and_no_current_loop(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def set_marker() -> None:
        marker.set("previous context")

    def thread_state() -> tuple[str, object]:
        policy = asyncio.get_event_loop_policy()
        local = policy._local  # type: ignore[attr-defined]
        return marker.get("clean"), local._loop

    async def probe() -> tuple[str, object, asyncio.AbstractEventLoop]:
        # Run a plain callback on the worker thread itself, outside any task.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, object]] = loop.create_future()
        loop.call_soon(
            lambda: future.set_result(thread_state()), context=contextvars.Context()
        )
        value, current = await future
        return value, current, loop

    with AsyncSingleThreadContext():
        async_to_sync(set_marker)()
    with AsyncSingleThreadContext():
        value, current, loop = async_to_sync(probe)()
    assert value == "clean"
    assert current is loop  # the new context's loop, not the previous one


def wait_for_spares(count: int, pool: _loop._WorkerPool | None = None) -> int:
    """The pool's spare count once it reaches *count* (bounded wait): a spare
    is started by the worker that ends a context, after the context returned."""
    idle_count = (pool or _loop._pool).idle_count
    deadline = time.monotonic() + 10
    while idle_count() < count and time.monotonic() < deadline:
        time.sleep(0.001)
    return idle_count()


def take(pool: _loop._WorkerPool) -> _loop._Worker:
    """A worker from *pool*, as a context takes it (its thread running)."""
    worker, fresh = pool.acquire()
    if fresh:
        worker.start()
    return worker


def retire(worker: _loop._Worker) -> None:
    worker.jobs.put(None)
    worker.thread.join(5)
    assert not worker.thread.is_alive()


@pytest.fixture
def fresh_pool() -> Iterator[_loop._WorkerPool]:
    """A new worker pool for the test (its peak of open contexts starts at 0)."""
    saved = _loop._pool
    _loop._pool = pool = _loop._WorkerPool()
    yield pool
    _loop._pool = saved
    pool.close()


def test_spare_workers_never_outnumber_the_peak_of_open_contexts(
    async_to_sync: AsyncToSyncFactory, fresh_pool: _loop._WorkerPool
) -> None:
    barrier = threading.Barrier(3)

    def one_request() -> None:
        with AsyncSingleThreadContext():
            async_to_sync(asyncio.sleep)(0)
            barrier.wait(10)  # three contexts open at once

    with ThreadPoolExecutor(3) as pool:
        for future in [pool.submit(one_request) for _ in range(3)]:
            future.result(timeout=30)
    assert wait_for_spares(3, fresh_pool) == 3
    for _ in range(10):
        with AsyncSingleThreadContext():
            async_to_sync(asyncio.sleep)(0)
        assert fresh_pool.idle_count() <= 3
    assert wait_for_spares(3, fresh_pool) == 3


def test_a_spare_is_a_new_thread_started_when_a_context_ends() -> None:
    pool = _loop._WorkerPool()
    used = take(pool)
    assert pool.idle_count() == 0
    pool.release()
    assert pool.idle_count() == 1
    spare = take(pool)
    assert spare is not used
    assert spare.thread is not used.thread
    retire(used)
    retire(spare)
    pool.close()


def test_spare_pool_is_capped() -> None:
    pool = _loop._WorkerPool()
    _loop.configure(max_idle_workers=2)
    workers = [take(pool) for _ in range(4)]
    for _ in workers:
        pool.release()
    assert pool.idle_count() == 2
    for worker in workers:
        retire(worker)
    pool.close()


def test_no_spares_are_kept_with_max_idle_workers_zero(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    _loop.configure(max_idle_workers=0)
    pool = _loop._WorkerPool()
    worker = take(pool)
    pool.release()
    assert pool.idle_count() == 0
    retire(worker)
    pool.close()


def test_closing_the_pool_stops_the_spares() -> None:
    pool = _loop._WorkerPool()
    used = take(pool)
    pool.release()
    spare = take(pool)
    pool.release()
    pool.release()
    spares = list(pool._idle)
    assert spares
    pool.close()
    for worker in spares:
        worker.thread.join(5)
        assert not worker.thread.is_alive()
    retire(used)
    retire(spare)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_stopped_workers_close_their_wake_up_pipes() -> None:
    before = _open_fds()
    pool = _loop._WorkerPool()
    _loop.configure(max_idle_workers=1)
    workers = [take(pool) for _ in range(3)]
    for _ in workers:
        pool.release()  # one spare is started
    for worker in workers:
        retire(worker)
    pool.close()  # stops the spare
    assert _open_fds() == before


def test_abandoned_executor_is_torn_down_on_its_thread() -> None:
    executor = _loop.LoopExecutor()

    async def get_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    call = executor.start_call(get_loop())
    call.done.result(timeout=10)
    loop = executor.loop
    assert loop is not None
    del executor, call
    gc.collect()
    deadline = time.monotonic() + 10
    while not loop.is_closed() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.is_closed()


@pytest.fixture
def stubborn() -> Iterator[Callable[[], Coroutine[Any, Any, None]]]:
    """A coroutine function whose task ignores cancellation until the test ends
    (teardown then warns, after a short ``cancel_timeout``)."""
    _loop.configure(task_grace=0, cancel_timeout=0.2)
    release = threading.Event()

    async def ignore_cancellation() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    yield ignore_cancellation
    release.set()


def test_task_ignoring_cancellation_warns_and_does_not_hang(
    async_to_sync: AsyncToSyncFactory,
    stubborn: Callable[[], Coroutine[Any, Any, None]],
) -> None:
    async def spawn() -> None:
        asyncio.get_running_loop().create_task(stubborn(), name="stubborn-task")

    with (
        pytest.warns(RuntimeWarning, match="stubborn-task"),
        AsyncSingleThreadContext(),
    ):
        async_to_sync(spawn)()


def test_long_running_task_stays_frozen_between_calls_and_resumes(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    _loop.configure(task_grace=0.01)
    ticks: list[int] = []

    async def keep_alive() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0.005)

    async def start() -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(keep_alive())

    async def work() -> None:
        await asyncio.sleep(0.05)

    with AsyncSingleThreadContext():
        task = async_to_sync(start)()
        frozen_at = len(ticks)
        time.sleep(0.05)
        assert len(ticks) == frozen_at  # nothing runs between calls
        async_to_sync(work)()
        assert len(ticks) > frozen_at  # it runs again during the next call
    assert task.cancelled()


def test_exit_warnings_are_not_raised_into_the_caller(
    async_to_sync: AsyncToSyncFactory,
    stubborn: Callable[[], Coroutine[Any, Any, None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A task that ignores cancellation makes teardown warn; with warnings
    # turned into errors, that error stays on the loop's thread (logged), the
    # loop is still closed, and the context's exit returns normally.
    async def spawn() -> asyncio.AbstractEventLoop:
        asyncio.get_running_loop().create_task(stubborn(), name="stubborn-task")
        return asyncio.get_running_loop()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with AsyncSingleThreadContext():
            loop = async_to_sync(spawn)()
    assert loop.is_closed()
    # The warning did turn into an error - on the loop's thread, logged.
    assert "error while closing a shared loop" in caplog.text


def run_script(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=60,  # a hang guard, not a measurement
        check=False,
    )


def test_interpreter_exits_cleanly_with_idle_workers() -> None:
    result = run_script(
        """
        import asyncio, threading
        from asgiref.sync import AsyncSingleThreadContext
        from asgiref_loopshare.sync import async_to_sync
        with AsyncSingleThreadContext():
            async_to_sync(asyncio.sleep)(0)
        threads = threading.enumerate()
        assert any(t.name.startswith("asgiref-loopshare-") for t in threads)
        print("done")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert result.stderr == ""


def test_interpreter_exits_cleanly_with_a_context_never_exited() -> None:
    result = run_script(
        """
        import asyncio
        from asgiref.sync import AsyncSingleThreadContext
        from asgiref_loopshare.sync import async_to_sync
        context = AsyncSingleThreadContext()
        context.__enter__()
        async_to_sync(asyncio.sleep)(0)
        print("done")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert "Event loop is closed" not in result.stderr
    assert "Traceback" not in result.stderr


def in_forked_child(count: Callable[[], int]) -> int:
    """``count()`` run in a forked child, its result sent back through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, str(count()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        result = int(pipe.read())
    os.waitpid(pid, 0)
    return result


def open_among(fds: list[int]) -> int:
    still_open = 0
    for fd in fds:
        try:
            os.fstat(fd)
        except OSError:
            continue
        still_open += 1
    return still_open


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_with_an_empty_pool(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        async_to_sync(loop_and_thread)()
    assert wait_for_spares(1) >= 1
    assert in_forked_child(_loop.idle_workers) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_closes_the_wake_up_pipes_of_the_parents_workers(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        async_to_sync(loop_and_thread)()
    assert wait_for_spares(1) >= 1
    # The spares' pipes: they stay open in the parent (a context's own worker
    # closes its pipe as it ends).
    parents = [
        fd
        for worker in _loop._pool._idle
        for fd in (worker.jobs._reader, worker.jobs._writer)
    ]
    assert parents
    assert in_forked_child(lambda: open_among(parents)) == 0
    assert open_among(parents) == len(parents)  # still open in the parent


def garbage_left_by(run: Callable[[], None]) -> list[str]:
    """Types of what the cyclic GC finds after *run* (warmed up by a first run)."""
    run()  # warm up: first-use caches are not per-context garbage
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()
        gc.collect()
        return sorted({type(obj).__name__ for obj in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_contexts_with_calls_leave_nothing_for_the_cyclic_gc(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    def contexts() -> None:
        for _ in range(3):
            with AsyncSingleThreadContext():
                async_to_sync(loop_and_thread)()
                async_to_sync(loop_and_thread)()

    assert garbage_left_by(contexts) == []


async def fail() -> None:
    raise ValueError("raised by the coroutine")


def test_a_call_that_raises_leaves_nothing_for_the_cyclic_gc(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    # Stock asgiref leaves about a hundred objects per failing call.
    def failing_calls() -> None:
        with AsyncSingleThreadContext():
            for _ in range(3):
                with pytest.raises(ValueError, match="raised by the coroutine"):
                    async_to_sync(fail)()

    assert garbage_left_by(failing_calls) == []


def test_exception_being_handled_is_freed_by_refcount_after_a_call(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    """Django's async streaming calls async_to_sync inside ``except TypeError``."""

    async def noop() -> None:
        pass

    class NotAnIterator(TypeError):
        pass

    def handle() -> tuple[bool, weakref.ref[BaseException]]:
        try:
            raise NotAnIterator
        except NotAnIterator as error:
            traceback_before = error.__traceback__
            async_to_sync(noop)()
            return error.__traceback__ is traceback_before, weakref.ref(error)

    gc.collect()
    gc.disable()
    try:
        with AsyncSingleThreadContext():
            traceback_kept, dead = handle()
            assert traceback_kept
            assert dead() is None
    finally:
        gc.enable()
