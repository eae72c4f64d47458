"""Faults that stock asyncio.run swept away must not leak into the next call."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from asgiref.sync import AsyncSingleThreadContext, AsyncToSync

from asgiref_loopshare import LoopScope
from tests.conftest import AsyncToSyncFactory, loop_and_thread, loop_in

main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signals are delivered to the main thread",
)


@pytest.fixture(autouse=True)
def _default_sigint_handler() -> Iterator[None]:
    """Python's own SIGINT handler, even in a process started with SIGINT ignored
    (a background job of a non-interactive shell): what the Ctrl-C tests need."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@main_thread_only
def test_ctrl_c_cancels_the_coroutine_before_propagating(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    events: list[str] = []
    started = threading.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        finally:
            events.append("finally")

    def interrupt() -> None:
        started.wait(10)
        # Let the caller block first: CPython runs a handler for a signal that
        # lands just before a blocking lock wait only once that wait ends.
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    with AsyncSingleThreadContext():
        threading.Thread(target=interrupt).start()
        with pytest.raises(KeyboardInterrupt):
            async_to_sync(slow)()
        assert events == ["finally"]
        loop, _ = async_to_sync(loop_and_thread)()
        assert not loop.is_closed()


def interrupt_self() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)  # interrupted long before


@main_thread_only
def test_ctrl_c_between_calls_raises_at_once_and_the_handler_is_restored(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        async_to_sync(loop_and_thread)()
        with pytest.raises(KeyboardInterrupt):
            interrupt_self()
        loop, _ = async_to_sync(loop_and_thread)()
        assert not loop.is_closed()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_call_from_another_thread_is_never_the_one_ctrl_c_cancels(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    from asgiref_loopshare._core import _context_executor, _SigintGuard

    with AsyncSingleThreadContext() as context:
        async_to_sync(loop_and_thread)()
        executor = _context_executor(context)
        assert executor is not None
        guard = _SigintGuard.for_call(executor)
        assert guard is not None  # the main thread's calls are guarded
        elsewhere: list[object] = []

        def two_calls_elsewhere() -> None:
            elsewhere.append(_SigintGuard.for_call(executor))
            elsewhere.append(_SigintGuard.for_call(executor))

        thread = threading.Thread(target=two_calls_elsewhere)
        thread.start()
        thread.join()
        assert elsewhere == [None, None]
        assert _SigintGuard.for_call(executor) is guard


def test_coroutine_stopping_the_loop_does_not_break_the_call(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    async def stop_then_finish() -> str:
        asyncio.get_running_loop().stop()
        await asyncio.sleep(0.01)
        return "done"

    with AsyncSingleThreadContext():
        assert async_to_sync(stop_then_finish)() == "done"
        loop, _ = async_to_sync(loop_and_thread)()
        assert not loop.is_closed()


def test_call_after_the_loop_was_closed_elsewhere_raises_clearly(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        loop, _ = async_to_sync(loop_and_thread)()
        while loop.is_running():  # the worker may still be leaving the loop
            time.sleep(0.001)
        loop.close()
        with pytest.raises(RuntimeError, match="shared event loop cannot run"):
            async_to_sync(loop_and_thread)()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_never_uses_the_parents_loop(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    with AsyncSingleThreadContext():
        parent_loop, parent_thread = async_to_sync(loop_and_thread)()
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: keeps using the context it inherited
            try:
                loop, thread = async_to_sync(loop_and_thread)()
                again, _ = async_to_sync(loop_and_thread)()
                verdict = (loop is parent_loop, thread is parent_thread, again is loop)
                os.write(write_end, pickle.dumps(verdict))
            finally:
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            payload = pipe.read()
        os.waitpid(pid, 0)
        assert async_to_sync(loop_and_thread)() == (parent_loop, parent_thread)
    same_loop, same_thread, child_shares = pickle.loads(payload)
    assert (same_loop, same_thread, child_shares) == (False, False, True)


def test_scope_closed_from_another_thread_tears_down_its_loop(installed: None) -> None:
    scope = LoopScope()
    token = scope.activate()
    try:
        from asgiref.sync import async_to_sync

        loop, _ = async_to_sync(loop_and_thread)()
        assert scope.started
        closer = threading.Thread(target=scope.close)
        closer.start()
        closer.join(10)
        assert loop.is_closed()
    finally:
        scope.deactivate(token)


def test_calls_on_a_closed_scope_behave_as_stock(installed: None) -> None:
    from asgiref.sync import AsyncToSync, async_to_sync

    scope = LoopScope()
    token = scope.activate()
    try:
        async_to_sync(loop_and_thread)()
        scope.close()
        first, _ = async_to_sync(loop_and_thread)()
        second, _ = async_to_sync(loop_and_thread)()
        assert first is not second
        assert first.is_closed()
        assert scope.context not in AsyncToSync.context_to_thread_executor
    finally:
        scope.deactivate(token)


def test_deactivate_with_a_token_from_another_thread_is_harmless() -> None:
    scope, here = LoopScope(), LoopScope()
    tokens = []
    thread = threading.Thread(target=lambda: tokens.append(scope.activate()))
    thread.start()
    thread.join()
    own = here.activate()
    try:
        scope.deactivate(tokens[0])  # no ValueError ...
        # ... and this thread's own activation is left as it was.
        assert AsyncToSync.async_single_thread_context.get(None) is here.context
    finally:
        here.deactivate(own)
    scope.close()
    here.close()


def test_scope_with_no_call_creates_nothing(
    installed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Counted here, for this thread: workers of earlier tests may still be
    # starting spares or ending, so the process's thread count would not do.
    me = threading.current_thread()
    made: list[object] = []
    start, loop_init = threading.Thread.start, asyncio.BaseEventLoop.__init__

    def counting_start(thread: threading.Thread) -> None:
        if threading.current_thread() is me:
            made.append(thread)
        start(thread)

    def counting_loop_init(loop: asyncio.BaseEventLoop, *args: object) -> None:
        if threading.current_thread() is me:
            made.append(loop)
        loop_init(loop, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    monkeypatch.setattr(asyncio.BaseEventLoop, "__init__", counting_loop_init)
    scope = LoopScope()
    token = scope.activate()
    scope.deactivate(token)
    scope.close()
    assert not scope.started
    assert made == []


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_exiting_the_context_from_the_worker_thread_does_not_deadlock() -> None:
    from asgiref_loopshare import _loop

    executor = _loop.LoopExecutor()
    future = executor.submit(executor.shutdown)
    assert future.result(timeout=10) is None


def test_context_exited_on_another_thread_raises_as_stock_and_still_tears_down(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    context = AsyncSingleThreadContext()
    context.__enter__()
    loop, _ = async_to_sync(loop_and_thread)()
    errors: list[BaseException] = []

    def exit_elsewhere() -> None:
        try:
            context.__exit__(None, None, None)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=exit_elsewhere)
    thread.start()
    thread.join(10)
    # asgiref resets its contextvar token there: ValueError, as without us.
    assert [type(error) for error in errors] == [ValueError]
    assert loop.is_closed()
    AsyncToSync.async_single_thread_context.reset(context.token)


def test_on_close_callbacks_run_on_the_scopes_loop_last_first(installed: None) -> None:

    scope = LoopScope()
    seen: list[tuple[str, asyncio.AbstractEventLoop, bool]] = []

    def recorder(name: str) -> Callable[[], Awaitable[None]]:
        async def callback() -> None:
            loop = asyncio.get_running_loop()
            seen.append((name, loop, loop.is_closed()))

        return callback

    scope.on_close(recorder("first"))
    scope.on_close(recorder("second"))
    loop = loop_in(scope)
    scope.close()
    assert seen == [("second", loop, False), ("first", loop, False)]
    assert loop.is_closed()


def test_on_close_does_not_start_a_loop_for_a_scope_that_never_ran(
    installed: None,
) -> None:
    scope = LoopScope()
    ran: list[bool] = []

    async def callback() -> None:
        ran.append(True)

    scope.on_close(callback)
    before = threading.active_count()
    scope.close()
    assert ran == []
    assert threading.active_count() == before


def test_failing_on_close_callback_is_logged_and_teardown_still_happens(
    installed: None, caplog: pytest.LogCaptureFixture
) -> None:

    scope = LoopScope()
    ran: list[str] = []

    async def broken() -> None:
        raise OSError("connection reset")

    async def fine() -> None:
        ran.append("fine")

    scope.on_close(fine)
    scope.on_close(broken)
    loop = loop_in(scope)
    scope.close()
    assert ran == ["fine"]
    assert loop.is_closed()
    assert "on_close callback" in caplog.text
