"""Inside a context, every async_to_sync call shares one loop on one thread."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.sync import AsyncSingleThreadContext, sync_to_async

from tests.conftest import AsyncToSyncFactory, loop_and_thread

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")


def test_calls_in_one_context_share_loop_and_thread(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        loop1, thread1 = async_to_sync(loop_and_thread)()
        loop2, thread2 = async_to_sync(loop_and_thread)()
    assert loop1 is loop2
    assert thread1 is thread2
    assert thread1 is not threading.current_thread()


def test_each_context_gets_its_own_loop(async_to_sync: AsyncToSyncFactory) -> None:
    with AsyncSingleThreadContext():
        loop1, _ = async_to_sync(loop_and_thread)()
    with AsyncSingleThreadContext():
        loop2, _ = async_to_sync(loop_and_thread)()
    assert loop1 is not loop2


def test_nested_context_uses_the_outer_loop(async_to_sync: AsyncToSyncFactory) -> None:
    with AsyncSingleThreadContext():
        outer, _ = async_to_sync(loop_and_thread)()
        with AsyncSingleThreadContext():
            inner, _ = async_to_sync(loop_and_thread)()
        after, _ = async_to_sync(loop_and_thread)()
        assert not outer.is_closed()
    assert outer is inner is after


def test_shared_loop_is_the_worker_threads_current_loop(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    def current_loop_of_this_thread() -> asyncio.AbstractEventLoop:
        return asyncio.get_event_loop_policy().get_event_loop()

    async def probe() -> bool:
        # thread_sensitive=False would use another thread; run in the
        # worker thread itself through call_soon of a plain function.
        return current_loop_of_this_thread() is asyncio.get_running_loop()

    with AsyncSingleThreadContext():
        assert async_to_sync(probe)()


def test_outside_a_context_each_call_gets_a_new_loop(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    loop1, thread1 = async_to_sync(loop_and_thread)()
    loop2, thread2 = async_to_sync(loop_and_thread)()
    assert loop1 is not loop2
    assert loop1.is_closed()
    assert thread1 is not thread2


def test_force_new_loop_gets_a_new_loop_inside_a_context(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        shared, _ = async_to_sync(loop_and_thread)()
        forced, _ = async_to_sync(loop_and_thread, force_new_loop=True)()
        again, _ = async_to_sync(loop_and_thread)()
    assert forced is not shared
    assert forced.is_closed()
    assert again is shared


def test_force_new_loop_first_does_not_turn_sharing_off(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        forced, _ = async_to_sync(loop_and_thread, force_new_loop=True)()
        first, _ = async_to_sync(loop_and_thread)()
        second, _ = async_to_sync(loop_and_thread)()
    assert forced is not first
    assert first is second


def test_context_without_calls_creates_no_thread() -> None:
    before = threading.active_count()
    with AsyncSingleThreadContext():
        pass
    assert threading.active_count() == before


def test_result_is_returned(async_to_sync: AsyncToSyncFactory) -> None:
    async def add(a: int, b: int = 0) -> int:
        await asyncio.sleep(0)
        return a + b

    with AsyncSingleThreadContext():
        assert async_to_sync(add)(1, b=2) == 3


def test_exception_propagates_with_its_type(async_to_sync: AsyncToSyncFactory) -> None:
    class Boom(Exception):
        pass

    async def fail() -> None:
        raise Boom("inner")

    with AsyncSingleThreadContext(), pytest.raises(Boom, match="inner"):
        async_to_sync(fail)()


def test_loop_survives_an_exception(async_to_sync: AsyncToSyncFactory) -> None:
    async def fail() -> None:
        raise ValueError("boom")

    with AsyncSingleThreadContext():
        first, _ = async_to_sync(loop_and_thread)()
        with pytest.raises(ValueError, match="boom"):
            async_to_sync(fail)()
        second, _ = async_to_sync(loop_and_thread)()
    assert first is second


def test_callers_exc_info_is_visible_in_the_coroutine(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def current_exception() -> Any:
        return sys.exc_info()[1]

    error = KeyError("outer")
    with AsyncSingleThreadContext():
        try:
            raise error
        except KeyError:
            seen = async_to_sync(current_exception)()
    assert seen is error


def test_contextvars_flow_into_the_coroutine(async_to_sync: AsyncToSyncFactory) -> None:
    async def read() -> str:
        return request_id.get()

    token = request_id.set("abc")
    try:
        with AsyncSingleThreadContext():
            assert async_to_sync(read)() == "abc"
    finally:
        request_id.reset(token)


def test_contextvars_flow_back_to_the_caller(async_to_sync: AsyncToSyncFactory) -> None:
    async def write(value: str) -> None:
        request_id.set(value)

    def run() -> str:
        with AsyncSingleThreadContext():
            async_to_sync(write)("first")
            first = request_id.get()
            async_to_sync(write)("second")
            return first + "," + request_id.get()

    assert contextvars.copy_context().run(run) == "first,second"


def test_contextvars_do_not_leak_between_calls_through_the_loop(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def write() -> None:
        request_id.set("leaked")

    async def read() -> str:
        return request_id.get("unset")

    def writer() -> None:
        with AsyncSingleThreadContext() as context:
            async_to_sync(write)()
            shared.append(context)

    shared: list[AsyncSingleThreadContext] = []

    def reader() -> str:
        with AsyncSingleThreadContext():
            return async_to_sync(read)()

    contextvars.copy_context().run(writer)
    assert contextvars.copy_context().run(reader) == "unset"


def test_thread_sensitive_sync_to_async_runs_on_the_calling_thread(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    caller = threading.current_thread()

    async def outer() -> threading.Thread:
        return await sync_to_async(threading.current_thread)()

    with AsyncSingleThreadContext():
        assert async_to_sync(outer)() is caller


def test_nested_async_to_sync_runs_on_the_shared_loop(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    def sync_middle() -> asyncio.AbstractEventLoop:
        loop, _ = async_to_sync(loop_and_thread)()
        return loop

    async def outer() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        return asyncio.get_running_loop(), await sync_to_async(sync_middle)()

    with AsyncSingleThreadContext():
        outer_loop, inner_loop = async_to_sync(outer)()
    assert outer_loop is inner_loop


def test_call_after_thread_sensitive_sync_to_async_does_not_hang(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    """The stale SyncToAsync.threadlocal.main_event_loop trap (DESIGN-NOTES 2)."""

    async def view() -> str:
        # thread-sensitive: runs on this (the calling) thread, whose
        # threadlocal asgiref then points at the shared loop.
        return await sync_to_async(lambda: "orm")()

    with AsyncSingleThreadContext():
        assert async_to_sync(view)() == "orm"
        loop, _ = async_to_sync(loop_and_thread)()
        assert not loop.is_closed()


def test_reused_wrapper_after_nested_call_does_not_hang(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    """asgiref 3.10/3.11 remember the outer loop on the AsyncToSync instance."""
    probe = async_to_sync(loop_and_thread)

    def sync_middle() -> asyncio.AbstractEventLoop:
        return probe()[0]

    async def outer() -> asyncio.AbstractEventLoop:
        return await sync_to_async(sync_middle)()

    with AsyncSingleThreadContext():
        nested_loop = async_to_sync(outer)()
        top_level_loop, _ = probe()
    assert nested_loop is top_level_loop


def test_threads_sharing_a_context_run_concurrently(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    barrier_size = 4
    arrived = 0

    async def meet(index: int) -> tuple[int, asyncio.AbstractEventLoop]:
        # Every call waits until all have started: this finishes only if the
        # calls run at the same time on the loop.
        nonlocal arrived
        arrived += 1
        while arrived < barrier_size:  # noqa: ASYNC110 - counts across threads
            await asyncio.sleep(0.001)
        return index, asyncio.get_running_loop()

    with AsyncSingleThreadContext(), ThreadPoolExecutor(barrier_size) as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, async_to_sync(meet), index)
            for index in range(barrier_size)
        ]
        results = [future.result(timeout=30) for future in futures]
    assert [index for index, _ in results] == list(range(barrier_size))
    assert len({id(loop) for _, loop in results}) == 1


def test_threads_sharing_a_context_get_their_own_results_under_load(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def echo(value: int) -> int:
        await asyncio.sleep(0)
        return value

    def many(start: int) -> list[int]:
        return [async_to_sync(echo)(value) for value in range(start, start + 50)]

    with AsyncSingleThreadContext(), ThreadPoolExecutor(4) as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, many, start * 100)
            for start in range(4)
        ]
        results = [future.result(timeout=60) for future in futures]
    assert results == [list(range(s * 100, s * 100 + 50)) for s in range(4)]


def test_call_from_a_running_loop_raises_as_stock(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def inner() -> None:
        pass

    async def main() -> None:
        with AsyncSingleThreadContext():
            async_to_sync(inner)()

    with pytest.raises(RuntimeError, match="same thread as an async event loop"):
        asyncio.run(main())


def test_non_async_callable_warns_as_stock(async_to_sync: AsyncToSyncFactory) -> None:
    with pytest.warns(UserWarning, match="non-async-marked callable"):
        async_to_sync(lambda: None)
