"""The opt-in per-thread scope: one loop per thread, and its lifecycle."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync

from asgiref_loopshare import LoopScope
from asgiref_loopshare._thread_scope import close_thread_scope, thread_scope
from tests.conftest import loop_and_thread, loop_in

_T = TypeVar("_T")

pytestmark = pytest.mark.usefixtures("installed")


def loop_workers() -> set[threading.Thread]:
    """The threads that run shared loops (idle or busy)."""
    return {t for t in threading.enumerate() if LOOP_WORKER.fullmatch(t.name)}


LOOP_WORKER = re.compile(r"asgiref-loopshare-\d+")


RunInThread = Callable[[Callable[[], _T]], _T]


@pytest.fixture
def in_new_thread() -> RunInThread[Any]:
    """Run a function in a new thread, wait for the thread to *exit*, return."""

    def run(function: Callable[[], _T]) -> _T:
        outcome: list[Any] = []

        def target() -> None:
            try:
                outcome.append(("ok", function()))
            except BaseException as exc:
                outcome.append(("error", exc))

        thread = threading.Thread(target=target, name="thread-scope-test")
        thread.start()
        thread.join(timeout=60)  # a hang guard, not a measurement
        assert not thread.is_alive()
        kind, value = outcome[0]
        if kind == "error":
            raise value
        result: _T = value
        return result

    return run


@pytest.fixture
def main_thread_scope() -> Iterator[LoopScope]:
    """This thread's scope, closed after the test so tests do not share it."""
    yield thread_scope()
    close_thread_scope()


def run_script(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "dev", "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard, not a measurement
        check=False,
    )


# -- one scope per thread, created lazily


def test_a_thread_gets_the_same_scope_on_every_call(
    main_thread_scope: LoopScope,
) -> None:
    assert thread_scope() is main_thread_scope


def test_each_thread_gets_its_own_scope(
    main_thread_scope: LoopScope, in_new_thread: RunInThread[LoopScope]
) -> None:
    assert in_new_thread(thread_scope) is not main_thread_scope


def test_creating_a_thread_scope_starts_no_loop(
    in_new_thread: RunInThread[bool],
) -> None:
    before = loop_workers()

    def create() -> bool:
        scope = thread_scope()
        return scope.started or loop_workers() != before

    assert in_new_thread(create) is False


def test_successive_activations_in_a_thread_share_one_loop(
    main_thread_scope: LoopScope,
) -> None:
    first = loop_in(main_thread_scope)
    second = loop_in(thread_scope())
    assert first is second
    assert not first.is_closed()


def test_threads_get_different_loops(
    main_thread_scope: LoopScope, in_new_thread: RunInThread[Any]
) -> None:
    other = in_new_thread(lambda: loop_in(thread_scope()))
    assert loop_in(main_thread_scope) is not other


# -- torn down at thread exit


def test_loop_is_closed_when_its_thread_exits(
    in_new_thread: RunInThread[asyncio.AbstractEventLoop],
) -> None:
    loop = in_new_thread(lambda: loop_in(thread_scope()))
    assert loop.is_closed()


def test_pending_task_finally_runs_when_its_thread_exits(
    in_new_thread: RunInThread[None],
) -> None:
    events: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            events.append("finally")

    async def spawn() -> None:
        asyncio.get_running_loop().create_task(forever())

    def serve() -> None:
        scope = thread_scope()
        token = scope.activate()
        try:
            async_to_sync(spawn)()
        finally:
            scope.deactivate(token)
        assert events == []

    in_new_thread(serve)
    assert events == ["finally"]


def test_thread_exit_leaves_no_dummy_thread_behind(
    in_new_thread: RunInThread[asyncio.AbstractEventLoop],
) -> None:
    # The teardown must not call threading.current_thread() on the exiting
    # thread: it is no longer registered, and a _DummyThread would be.
    in_new_thread(lambda: loop_in(thread_scope()))
    assert not [t for t in threading.enumerate() if t.name.startswith("Dummy")]


def test_thread_exit_ends_the_loop_worker_thread(
    in_new_thread: RunInThread[threading.Thread],
) -> None:
    async def worker() -> threading.Thread:
        return threading.current_thread()

    def serve() -> threading.Thread:
        scope = thread_scope()
        token = scope.activate()
        try:
            return async_to_sync(worker)()
        finally:
            scope.deactivate(token)

    thread = in_new_thread(serve)
    thread.join(5)  # not stuck on the old loop
    assert not thread.is_alive()


# -- closed early


def test_close_thread_scope_closes_the_loop(main_thread_scope: LoopScope) -> None:
    loop = loop_in(main_thread_scope)
    close_thread_scope()
    assert loop.is_closed()


def test_after_close_thread_scope_the_thread_gets_a_new_scope(
    main_thread_scope: LoopScope,
) -> None:
    close_thread_scope()
    assert thread_scope() is not main_thread_scope


def test_calls_while_a_closed_thread_scope_is_active_behave_as_stock(
    main_thread_scope: LoopScope,
) -> None:
    token = main_thread_scope.activate()
    try:
        close_thread_scope()
        first, _ = async_to_sync(loop_and_thread)()
        second, _ = async_to_sync(loop_and_thread)()
    finally:
        main_thread_scope.deactivate(token)
    assert first is not second  # a loop per call, as asgiref does
    assert first.is_closed()


# -- interpreter exit


def test_interpreter_exit_tears_down_the_main_threads_scope() -> None:
    result = run_script(
        """
        import asyncio
        import asgiref_loopshare
        from asgiref.sync import async_to_sync
        from asgiref_loopshare._thread_scope import thread_scope

        asgiref_loopshare.install()

        async def forever():
            try:
                await asyncio.sleep(3600)
            finally:
                print("finally ran", flush=True)

        async def spawn():
            asyncio.get_running_loop().create_task(forever())

        thread_scope().activate()
        async_to_sync(spawn)()
        print("main done", flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["main", "done", "finally", "ran"]
    assert "Traceback" not in result.stderr


def test_interpreter_exit_tears_down_a_daemon_threads_scope() -> None:
    result = run_script(
        """
        import asyncio, threading
        import asgiref_loopshare
        from asgiref.sync import async_to_sync
        from asgiref_loopshare._thread_scope import thread_scope

        asgiref_loopshare.install()
        served = threading.Event()

        async def forever():
            try:
                await asyncio.sleep(3600)
            finally:
                print("finally ran", flush=True)

        async def spawn():
            asyncio.get_running_loop().create_task(forever())

        def serve():
            thread_scope().activate()
            async_to_sync(spawn)()
            served.set()
            threading.Event().wait()  # a server thread that never exits

        threading.Thread(target=serve, daemon=True).start()
        assert served.wait(60)
        print("main done", flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["main", "done", "finally", "ran"]


def test_interpreter_exit_is_bounded_when_a_task_ignores_cancellation() -> None:
    result = run_script(
        """
        import asyncio
        import asgiref_loopshare
        from asgiref.sync import async_to_sync
        from asgiref_loopshare import _thread_scope

        asgiref_loopshare.install()
        # Teardown would wait an hour for the task; exit must not.
        asgiref_loopshare.configure(cancel_timeout=3600)
        _thread_scope.EXIT_TIMEOUT = 0.2

        async def stubborn():
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    pass

        async def spawn():
            asyncio.get_running_loop().create_task(stubborn())

        _thread_scope.thread_scope().activate()
        async_to_sync(spawn)()
        print("main done", flush=True)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "main done"
    assert "still closing" in result.stderr


# -- fork


FORK_SCRIPT = """
    import asyncio, os, sys
    import asgiref_loopshare
    from asgiref.sync import async_to_sync
    from asgiref_loopshare._thread_scope import thread_scope

    asgiref_loopshare.install()

    async def running_loop():
        return asyncio.get_running_loop()

    def loop_in(scope):
        token = scope.activate()
        try:
            return async_to_sync(running_loop)()
        finally:
            scope.deactivate(token)

    parent_scope = thread_scope()
    parent_loop = loop_in(parent_scope)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        child_scope = thread_scope()
        child_loop = loop_in(child_scope)
        facts = [
            child_scope is not parent_scope,
            child_loop is not parent_loop,
            loop_in(thread_scope()) is child_loop,
        ]
        os.write(write_end, " ".join(map(str, facts)).encode())
        os.close(write_end)
        sys.exit(0)  # a normal exit: the child's atexit hooks run
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        print("child", pipe.read(), flush=True)
    _, status = os.waitpid(pid, 0)
    print("child exit", os.waitstatus_to_exitcode(status), flush=True)
    print(
        "parent",
        thread_scope() is parent_scope,
        loop_in(parent_scope) is parent_loop,
        parent_loop.is_closed(),
        flush=True,
    )
"""


@pytest.fixture(scope="module")
def fork_report() -> dict[str, list[str]]:
    if not hasattr(sys.modules["os"], "fork"):
        pytest.skip("needs fork")
    result = run_script(FORK_SCRIPT)
    assert result.returncode == 0, result.stderr
    report: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        key, *values = line.replace("child exit", "child-exit").split()
        report[key] = values
    return report


def test_forked_child_gets_a_new_thread_scope(
    fork_report: dict[str, list[str]],
) -> None:
    assert fork_report["child"][0] == "True"


def test_forked_child_runs_its_thread_scope_on_a_loop_of_its_own(
    fork_report: dict[str, list[str]],
) -> None:
    assert fork_report["child"][1:] == ["True", "True"]


def test_forked_child_exits_cleanly(fork_report: dict[str, list[str]]) -> None:
    assert fork_report["child-exit"] == ["0"]


def test_parent_keeps_its_thread_scope_and_loop_after_the_child_exits(
    fork_report: dict[str, list[str]],
) -> None:
    assert fork_report["parent"] == ["True", "True", "False"]
