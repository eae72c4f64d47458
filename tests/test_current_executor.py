"""The direct path to ``AsyncToSync.executors.current`` agrees with ``Local``."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest
from asgiref import sync as _asgiref_sync
from asgiref.local import Local
from asgiref.sync import AsyncToSync

from asgiref_loopshare import _current_executor

Marker = Any


def in_fresh_context(fn: Callable[[], Any]) -> Any:
    return contextvars.Context().run(fn)


@pytest.fixture
def marker() -> Marker:
    return object()


def test_the_direct_path_is_used_with_every_supported_asgiref() -> None:
    # A Local of another shape would silently fall back to the slow path.
    assert _current_executor.get_current is _current_executor._fast_get
    assert _current_executor.set_current is _current_executor._fast_set


def test_what_local_set_is_read_by_get_current(marker: Marker) -> None:
    def check() -> None:
        AsyncToSync.executors.current = marker
        assert _current_executor.get_current() is marker

    in_fresh_context(check)


def test_what_set_current_set_is_read_by_local(marker: Marker) -> None:
    def check() -> None:
        _current_executor.set_current(marker)
        assert AsyncToSync.executors.current is marker

    in_fresh_context(check)


def test_get_current_is_none_where_nothing_was_set() -> None:
    assert in_fresh_context(_current_executor.get_current) is None


def test_set_current_keeps_other_attributes_of_the_local(marker: Marker) -> None:
    def check() -> None:
        AsyncToSync.executors.loopshare_test_other = marker
        _current_executor.set_current(None)
        assert AsyncToSync.executors.loopshare_test_other is marker

    in_fresh_context(check)


def test_set_current_does_not_change_a_context_copied_before(marker: Marker) -> None:
    def check() -> None:
        _current_executor.set_current(None)
        before = contextvars.copy_context()
        _current_executor.set_current(marker)
        assert before.run(_current_executor.get_current) is None

    in_fresh_context(check)


def test_a_value_set_in_another_thread_is_seen_as_asgiref_sees_it(
    marker: Marker,
) -> None:
    # asgiref 3.12.1+ hides Local data inherited by an unrelated thread;
    # earlier versions show it. Either way both paths must agree.
    def set_it() -> contextvars.Context:
        _current_executor.set_current(marker)
        return contextvars.copy_context()

    inherited = in_fresh_context(set_it)
    seen: list[tuple[Any, Any]] = []
    thread = threading.Thread(
        target=lambda: seen.append(
            inherited.copy().run(
                lambda: (
                    _current_executor.get_current(),
                    getattr(AsyncToSync.executors, "current", None),
                )
            )
        )
    )
    thread.start()
    thread.join()
    fast, stock = seen[0]
    assert fast is stock


# -- push_current / pop_current: what `executors.current = old` leaves


def stock_pop(old: Any) -> None:
    AsyncToSync.executors.current = old


def visible_state() -> dict[str, Any]:
    """What code reading the Local sees of it."""
    return {
        name: getattr(AsyncToSync.executors, name, "<unset>")
        for name in ("current", "loopshare_test_other")
    }


def after_push_and_pop(
    prepare: Callable[[], None],
    meanwhile: Callable[[], None],
    pop: Callable[[Any], None] | None,
) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        prepare()
        _, pushed = _current_executor.push_current(lambda old: object())
        meanwhile()
        if pop is None:
            _current_executor.pop_current(pushed)
        else:
            pop(pushed[0])
        return visible_state()

    return in_fresh_context(run)


def nothing() -> None:
    pass


def set_current_to_marker() -> None:
    AsyncToSync.executors.current = "old executor"


def set_another_attribute() -> None:
    AsyncToSync.executors.loopshare_test_other = "set during the call"


@pytest.mark.parametrize(
    "prepare", [nothing, set_current_to_marker], ids=["unset", "set"]
)
@pytest.mark.parametrize(
    "meanwhile",
    [nothing, set_another_attribute],
    ids=["untouched", "other-attribute-set"],
)
def test_pop_current_leaves_what_asgiref_leaves(
    prepare: Callable[[], None], meanwhile: Callable[[], None]
) -> None:
    ours = after_push_and_pop(prepare, meanwhile, None)
    assert ours == after_push_and_pop(prepare, meanwhile, stock_pop)
    assert ours["current"] == ("old executor" if prepare is not nothing else None)


def test_pop_current_resets_the_variable_when_nothing_else_changed() -> None:
    def run() -> bool:
        set_current_to_marker()
        before = _current_executor._variable.get()  # type: ignore[union-attr]
        _, pushed = _current_executor.push_current(lambda old: object())
        _current_executor.pop_current(pushed)
        return _current_executor._variable.get() is before  # type: ignore[union-attr]

    # The cheap path, not a rewrite: the old value object itself is back.
    assert in_fresh_context(run)


# -- restore_context: asgiref's _restore_context for the calling thread

_plain = contextvars.ContextVar[str]("loopshare_test_plain")
_local = Local()


def context_after(change: Callable[[], None]) -> contextvars.Context:
    """A context as a call's task leaves it: copied, moved to another thread."""

    def run() -> contextvars.Context:
        change()
        return contextvars.copy_context()

    made: list[contextvars.Context] = []
    callers = contextvars.copy_context()

    def on_loop_thread() -> None:
        task = callers.copy()
        task.run(_asgiref_sync._restore_context, callers)  # as main_wrap does
        made.append(task.run(run))

    thread = threading.Thread(target=on_loop_thread)
    thread.start()
    thread.join()
    return made[0]


def read_back() -> tuple[Any, Any, Any]:
    return (
        _plain.get("<unset>"),
        getattr(_local, "value", "<unset>"),
        getattr(AsyncToSync.executors, "current", "<unset>"),
    )


def set_plain() -> None:
    _plain.set("set in the call")


def set_local() -> None:
    _local.value = "set in the call"


@pytest.mark.parametrize(
    "change", [nothing, set_plain, set_local], ids=["nothing", "contextvar", "local"]
)
def test_restore_context_leaves_what_asgirefs_leaves(
    change: Callable[[], None],
) -> None:
    def run(restore: Callable[[contextvars.Context], None]) -> tuple[Any, Any, Any]:
        _local.value = "before the call"
        AsyncToSync.executors.current = "caller's executor"
        restore(context_after(change))
        return read_back()

    ours = in_fresh_context(lambda: run(_current_executor.restore_context))
    assert ours == in_fresh_context(lambda: run(_asgiref_sync._restore_context))
    assert ours[1] == ("set in the call" if change is set_local else "before the call")


# -- LeanCurrentThreadExecutor: asgiref's executor with a cheaper Condition


def test_a_call_waits_in_a_current_thread_executor_of_asgiref(
    installed: None,
) -> None:
    from asgiref.current_thread_executor import CurrentThreadExecutor
    from asgiref.sync import AsyncSingleThreadContext, async_to_sync

    async def current() -> Any:
        return AsyncToSync.executors.current

    with AsyncSingleThreadContext():
        executor = async_to_sync(current)()
    assert isinstance(executor, CurrentThreadExecutor)
    assert executor._work_thread is threading.current_thread()


def test_a_stock_executor_built_on_a_lean_one_hands_work_down_to_it() -> None:
    from asgiref.current_thread_executor import CurrentThreadExecutor

    lean = _current_executor.LeanCurrentThreadExecutor(None)
    stock = CurrentThreadExecutor(lean)
    stock._broken = True  # its own wait is over, as after its call returned
    done: Future[None] = Future()
    ran_in: list[threading.Thread] = []

    def submit_from_elsewhere() -> None:
        stock.submit(lambda: ran_in.append(threading.current_thread())).result()
        done.set_result(None)

    threading.Thread(target=submit_from_elsewhere).start()
    lean.run_until_future(done)
    assert ran_in == [threading.current_thread()]


def test_running_a_lean_executor_from_another_thread_raises_as_asgiref_does() -> None:
    from asgiref.current_thread_executor import CurrentThreadExecutor

    errors = []
    for make in (CurrentThreadExecutor, _current_executor.LeanCurrentThreadExecutor):
        executor = make(None)
        caught: list[BaseException] = []

        def run(executor: Any = executor, caught: list[BaseException] = caught) -> None:
            try:
                executor.run_until_future(object())
            except RuntimeError as error:
                caught.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        errors.append([str(exc) for exc in caught])
    assert errors[0] == errors[1] != []


def test_work_ready_wait_returns_false_when_nobody_notifies() -> None:
    ready = _current_executor._WorkReady()
    with ready:
        assert ready.wait(0.01) is False


def test_work_ready_notify_with_nobody_waiting_wakes_no_later_wait() -> None:
    ready = _current_executor._WorkReady()
    with ready:
        ready.notify()
        assert ready.wait(0.01) is False


def test_work_ready_notify_from_another_thread_wakes_the_waiter() -> None:
    ready = _current_executor._WorkReady()
    notified = threading.Event()

    def notify() -> None:
        with ready:
            ready.notify()
        notified.set()

    with ready:
        threading.Thread(target=notify).start()
        # Bounded only so that a broken notify fails instead of hanging.
        assert ready.wait(30) is True
    assert notified.wait(30)


def test_work_ready_takes_a_notify_that_lands_after_the_timeout() -> None:
    ready = _current_executor._WorkReady()

    class NotifyDuringTimeout:
        """The wake lock, timing out just as a notify lands."""

        def __init__(self, lock: Any) -> None:
            self.lock = lock

        def release(self) -> None:
            self.lock.release()

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            if blocking:
                ready.notify()  # lands after this wait gave up, before relock
                return False
            return bool(self.lock.acquire(blocking))

    ready._wake = NotifyDuringTimeout(ready._wake)  # type: ignore[assignment]
    with ready:
        assert ready.wait(0.01) is True  # notified: the wake-up is taken
        assert ready._sleeping is False
    assert not ready._wake.lock.acquire(False)  # and consumed: still held
