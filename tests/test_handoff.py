"""`_handoff.SharedEventLoop`: the hand-off to the caller's CurrentThreadExecutor,
and no polls that cannot find anything."""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.current_thread_executor import CurrentThreadExecutor
from asgiref.sync import AsyncSingleThreadContext, sync_to_async

from asgiref_loopshare import _handoff, _loop

from .conftest import AsyncToSyncFactory


def in_context(async_to_sync: AsyncToSyncFactory, fn: Any, *args: Any) -> Any:
    with AsyncSingleThreadContext():
        return async_to_sync(fn)(*args)


def test_the_direct_hand_off_is_used_with_every_supported_asgiref() -> None:
    assert _handoff._SUPPORTED


def test_a_context_gets_a_shared_event_loop(async_to_sync: AsyncToSyncFactory) -> None:
    async def loop_type() -> type:
        return type(asyncio.get_running_loop())

    assert in_context(async_to_sync, loop_type) is _handoff.SharedEventLoop


def test_a_configured_loop_factory_is_used_instead() -> None:
    made: list[asyncio.AbstractEventLoop] = []

    def factory() -> asyncio.AbstractEventLoop:
        made.append(asyncio.new_event_loop())
        return made[-1]

    _loop.configure(loop_factory=factory)
    from asgiref_loopshare.sync import async_to_sync

    async def running() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    assert in_context(async_to_sync, running) is made[0]
    assert type(made[0]) is not _handoff.SharedEventLoop


class _Policy(asyncio.DefaultEventLoopPolicy):
    """A policy other than asyncio's default one: its loops must be used."""


@pytest.fixture
def custom_policy() -> Iterator[None]:
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_Policy())
    yield
    asyncio.set_event_loop_policy(old)


@pytest.mark.usefixtures("custom_policy")
def test_another_event_loop_policy_makes_the_loop() -> None:
    loop = _handoff.new_event_loop()
    try:
        assert type(loop) is not _handoff.SharedEventLoop
    finally:
        loop.close()


def test_thread_sensitive_work_runs_on_the_calling_thread(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def where() -> threading.Thread:
        return await sync_to_async(threading.current_thread)()

    assert in_context(async_to_sync, where) is threading.current_thread()


def test_an_exception_raised_by_the_function_reaches_the_awaiting_coroutine(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    def fail() -> None:
        raise LookupError("from the caller's thread")

    async def call() -> None:
        await sync_to_async(fail)()

    with pytest.raises(LookupError, match="from the caller's thread"):
        in_context(async_to_sync, call)


def test_a_concurrent_cancelled_error_arrives_as_asyncio_does_it(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    # asyncio's wrap_future turns concurrent.futures.CancelledError into
    # asyncio.CancelledError; so does the direct hand-off.
    def fail() -> None:
        raise concurrent.futures.CancelledError("raised by the function")

    async def call() -> str:
        try:
            await sync_to_async(fail)()
        except asyncio.CancelledError as exc:
            return f"asyncio.CancelledError{exc.args}"
        return "no error"

    assert in_context(async_to_sync, call) == (
        "asyncio.CancelledError('raised by the function',)"
    )


def test_work_cancelled_before_it_starts_does_not_run(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    ran: list[str] = []

    async def call() -> bool:
        loop = asyncio.get_running_loop()
        executor = _current_thread_executor()
        # Queued, and cancelled before the caller's thread can take it.
        future = loop.run_in_executor(executor, ran.append, "ran")
        future.cancel()
        # The next hand-off is taken after the first one by the same thread.
        await sync_to_async(ran.append)("second")
        return future.cancelled()

    assert in_context(async_to_sync, call) is True
    assert ran == ["second"]


def _current_thread_executor() -> CurrentThreadExecutor:
    from asgiref_loopshare import _current_executor

    executor = _current_executor.get_current()
    assert isinstance(executor, CurrentThreadExecutor)
    return executor


def test_debug_mode_takes_asyncios_own_checks(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def coroutine_function() -> None:
        pass

    async def call() -> str:
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        try:
            loop.run_in_executor(_current_thread_executor(), coroutine_function)
        except TypeError as exc:
            return str(exc)
        finally:
            loop.set_debug(False)
        return "no error"

    assert "coroutines cannot be used with run_in_executor()" in in_context(
        async_to_sync, call
    )


# -- parity with CurrentThreadExecutor.submit


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = _handoff.new_event_loop()
    yield loop
    loop.close()


def _executor_made_in_another_thread(old: Any = None) -> CurrentThreadExecutor:
    made: list[CurrentThreadExecutor] = []
    thread = threading.Thread(target=lambda: made.append(CurrentThreadExecutor(old)))
    thread.start()
    thread.join()
    return made[0]


def _error_of(fn: Any) -> str:
    with pytest.raises(RuntimeError) as info:
        fn()
    return str(info.value)


def test_submitting_from_the_executors_own_thread_fails_as_asgiref_does(
    loop: asyncio.AbstractEventLoop,
) -> None:
    executor = CurrentThreadExecutor(None)
    assert _error_of(lambda: _handoff._submit(loop, executor, print, ())) == _error_of(
        lambda: executor.submit(print)
    )


def test_work_for_a_broken_executor_goes_to_the_one_it_replaced(
    loop: asyncio.AbstractEventLoop,
) -> None:
    old = _executor_made_in_another_thread()
    new = _executor_made_in_another_thread(old)
    new._broken = True
    _handoff._submit(loop, new, print, ())
    assert (len(old._work_items), len(new._work_items)) == (1, 0)


def test_work_for_executors_all_broken_fails_as_asgiref_does(
    loop: asyncio.AbstractEventLoop,
) -> None:
    executor = _executor_made_in_another_thread()
    executor._broken = True
    assert _error_of(lambda: _handoff._submit(loop, executor, print, ())) == _error_of(
        lambda: executor.submit(print)
    )


def test_submitting_to_a_closed_loop_fails_as_asyncio_does() -> None:
    loop = _handoff.new_event_loop()
    loop.close()
    executor = _executor_made_in_another_thread()
    assert _error_of(lambda: loop.run_in_executor(executor, print)) == (
        "Event loop is closed"
    )


def test_a_result_for_a_loop_closed_meanwhile_is_dropped(
    loop: asyncio.AbstractEventLoop,
) -> None:
    future = loop.create_future()
    setter = _handoff._LoopFutureSetter(loop, future)
    loop.close()
    setter.set_result("late")  # must not raise in the executor's thread
    assert not future.done()


# -- _Selector: no poll while only the self-pipe is registered


@pytest.fixture
def selector() -> Iterator[Any]:
    selector = _handoff._Selector()
    yield selector
    selector.close()


@pytest.fixture
def readable_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    reader, writer = socket.socketpair()
    writer.send(b"x")
    yield reader, writer
    reader.close()
    writer.close()


def test_a_zero_timeout_poll_with_only_the_self_pipe_reports_nothing(
    selector: Any, readable_pair: tuple[socket.socket, socket.socket]
) -> None:
    reader, _ = readable_pair
    selector.register(reader, selectors.EVENT_READ)
    assert selector.select(0) == []
    # A poll that may wait is made, and finds the byte.
    assert [key.fileobj for key, _ in selector.select(1)] == [reader]


def test_a_zero_timeout_poll_is_made_once_another_fd_is_registered(
    selector: Any, readable_pair: tuple[socket.socket, socket.socket]
) -> None:
    reader, writer = readable_pair
    selector.register(writer, selectors.EVENT_READ)  # the "self-pipe"
    selector.register(reader, selectors.EVENT_READ)
    assert [key.fileobj for key, _ in selector.select(0)] == [reader]
    selector.unregister(reader)
    assert selector.select(0) == []


def test_socket_io_on_the_shared_loop_is_not_starved_by_busy_callbacks(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def read_while_busy() -> bytes:
        loop = asyncio.get_running_loop()
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        busy = True

        def spin() -> None:
            if busy:
                loop.call_soon(spin)  # the ready queue is never empty

        try:
            loop.call_soon(spin)
            receiving = loop.create_task(loop.sock_recv(reader, 4))
            await asyncio.sleep(0)  # nothing to read yet: it waits on the selector
            writer.send(b"data")
            return await asyncio.wait_for(receiving, 5)
        finally:
            busy = False
            reader.close()
            writer.close()

    assert in_context(async_to_sync, read_while_busy) == b"data"
