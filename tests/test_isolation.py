"""Isolation between contexts: nothing one context leaves on a thread reaches the next.

Stock asgiref gives every call a new thread, so thread-local state starts empty
each time. Here each context gets a worker thread no other context ran on; the
calls of one context share that thread's thread-local world, as stock's calls
inside one ``AsyncSingleThreadContext`` share its single executor thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.local import Local
from asgiref.sync import AsyncSingleThreadContext

from tests.conftest import AsyncToSyncFactory


class ThreadState:
    """One kind of per-thread storage, read and written from a coroutine."""

    def __init__(
        self, read: Callable[[], object], write: Callable[[object], None]
    ) -> None:
        self.read = read
        self.write = write


def _threading_local() -> ThreadState:
    local = threading.local()
    return ThreadState(
        lambda: getattr(local, "value", None), lambda v: setattr(local, "value", v)
    )


def _thread_critical_local() -> ThreadState:
    local = Local(thread_critical=True)
    return ThreadState(
        lambda: getattr(local, "value", None), lambda v: setattr(local, "value", v)
    )


def _asyncio_thread_loop() -> ThreadState:
    # asyncio's per-thread state: the policy's current loop of the thread.
    seen: list[object] = []

    def read() -> object:
        policy_local = asyncio.get_event_loop_policy()._local  # type: ignore[attr-defined]
        return getattr(policy_local, "loopshare_marker", None)

    def write(value: object) -> None:
        policy_local = asyncio.get_event_loop_policy()._local  # type: ignore[attr-defined]
        policy_local.loopshare_marker = value
        seen.append(value)

    return ThreadState(read, write)


@pytest.fixture(
    params=[_threading_local, _thread_critical_local, _asyncio_thread_loop],
    ids=["threading.local", "Local(thread_critical=True)", "asyncio thread state"],
)
def state(request: pytest.FixtureRequest) -> ThreadState:
    factory: Callable[[], ThreadState] = request.param
    return factory()


def exchange(
    async_to_sync: AsyncToSyncFactory, state: ThreadState, value: object
) -> object:
    """One call: read the thread state, then write *value*; return what it read."""

    async def swap() -> object:
        seen = state.read()
        state.write(value)
        return seen

    return async_to_sync(swap)()


def test_thread_state_set_in_one_context_is_not_seen_in_the_next(
    async_to_sync: AsyncToSyncFactory, state: ThreadState
) -> None:
    for request in range(5):
        with AsyncSingleThreadContext():
            assert exchange(async_to_sync, state, f"request {request}") is None


def test_thread_state_is_not_seen_by_a_context_of_another_server_thread(
    async_to_sync: AsyncToSyncFactory, state: ThreadState
) -> None:
    def one_request(request: int) -> object:
        with AsyncSingleThreadContext():
            return exchange(async_to_sync, state, f"request {request}")

    with ThreadPoolExecutor(4) as server:
        seen = list(server.map(one_request, range(40)))
    assert seen == [None] * 40


def test_thread_state_is_shared_by_the_calls_of_one_context(
    async_to_sync: AsyncToSyncFactory, state: ThreadState
) -> None:
    with AsyncSingleThreadContext():
        assert exchange(async_to_sync, state, "first") is None
        assert exchange(async_to_sync, state, "second") == "first"
        assert exchange(async_to_sync, state, "third") == "second"


@pytest.fixture
def thread_critical() -> Any:
    return Local(thread_critical=True)


def count_variables() -> int:
    return len(contextvars.copy_context())


def test_caller_context_does_not_grow_with_the_contexts_it_runs(
    async_to_sync: AsyncToSyncFactory, thread_critical: Any
) -> None:
    async def use_connection(request: int) -> None:
        thread_critical.connection = f"connection of request {request}"

    def request(number: int) -> None:
        with AsyncSingleThreadContext():
            async_to_sync(use_connection)(number)
            async_to_sync(use_connection)(number)

    def serve(first: int, count: int) -> int:
        for number in range(first, first + count):
            request(number)
        return count_variables()

    # In a context of its own, so earlier tests' variables do not count.
    runner = contextvars.Context()
    after_warm_up = runner.run(serve, 0, 5)
    assert runner.run(serve, 5, 200) == after_warm_up


def test_thread_critical_value_reaches_the_next_call_of_the_same_caller_context(
    async_to_sync: AsyncToSyncFactory, thread_critical: Any
) -> None:
    async def store() -> None:
        thread_critical.value = "stored"

    async def load() -> object:
        return getattr(thread_critical, "value", None)

    with AsyncSingleThreadContext():
        async_to_sync(store)()
        assert async_to_sync(load)() == "stored"
        # A copy of the caller's context made before the store does not see it,
        # as with stock asgiref, where the value travels in the caller's context.
        assert contextvars.Context().run(async_to_sync(load)) is None


class Connection:
    pass


@pytest.fixture
def gc_disabled() -> Iterator[None]:
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def test_thread_critical_value_is_released_when_the_context_ends(
    async_to_sync: AsyncToSyncFactory, thread_critical: Any, gc_disabled: None
) -> None:
    connection = Connection()
    released = weakref.ref(connection)

    async def store(value: Connection) -> threading.Thread:
        thread_critical.connection = value
        return threading.current_thread()

    with AsyncSingleThreadContext():
        worker = async_to_sync(store)(connection)
    del connection
    worker.join(5)
    assert released() is None


def test_a_plain_context_variable_set_in_a_call_is_seen_by_the_caller(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable")

    async def set_it() -> None:
        variable.set("from the call")

    def request() -> str:
        with AsyncSingleThreadContext():
            async_to_sync(set_it)()
            return variable.get("unset")

    assert contextvars.Context().run(request) == "from the call"


def test_a_plain_local_set_in_a_call_is_seen_by_the_caller(
    async_to_sync: AsyncToSyncFactory,
) -> None:
    local = Local()

    async def set_it() -> None:
        local.value = "from the call"

    def request() -> object:
        with AsyncSingleThreadContext():
            async_to_sync(set_it)()
            return getattr(local, "value", "unset")

    assert contextvars.Context().run(request) == "from the call"
