"""Version gate and the shims for what older Pythons lack.

Everything that differs between Python 3.9 and 3.13 lives here, so the rest of
the package is written against one API.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import threading
import time
import warnings
from collections.abc import Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar

__all__ = [
    "ALLOW_UNTESTED_ENV",
    "ASGIREF_RANGE",
    "DJANGO_RANGE",
    "PYTHON_MIN",
    "UnsupportedVersionError",
    "check_tested",
    "check_versions",
    "create_task",
    "detach_default_executor",
    "join_executors",
    "shutdown_default_executor",
    "uncancel",
]

_T = TypeVar("_T")

#: Oldest Python this package supports.
PYTHON_MIN = (3, 9)
#: Tested asgiref releases, first and last minor: ``ASGIREF_RANGE[0] <=
#: version[:2] <= ASGIREF_RANGE[1]``. This package reaches into asgiref's
#: internals (see `asgiref_loopshare._current_executor`, `_core`), which a
#: release it was not tested with may have changed.
ASGIREF_RANGE = ((3, 10), (3, 13))
#: Tested Django releases, first and last minor (the Django adapter checks).
DJANGO_RANGE = ((4, 2), (6, 1))
#: Set to ``1`` to run with a newer asgiref or Django minor than tested (same
#: major), with a warning, instead of raising `UnsupportedVersionError`.
ALLOW_UNTESTED_ENV = "ASGIREF_LOOPSHARE_ALLOW_UNTESTED"


class UnsupportedVersionError(ImportError):
    """The installed Python or asgiref is outside the supported range."""


def _parse_version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in text.split("."):
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        parts.append(int(digits))
        if digits != piece:
            break
    return tuple(parts)


def check_versions(
    python: tuple[int, ...] | None = None, asgiref_version: str | None = None
) -> None:
    """Raise `UnsupportedVersionError` naming what is installed and supported."""
    if python is None:
        python = tuple(sys.version_info[:3])
    if asgiref_version is None:
        import asgiref

        asgiref_version = asgiref.__version__
    if python[:2] < PYTHON_MIN:
        raise UnsupportedVersionError(
            f"asgiref-loopshare supports Python >= {PYTHON_MIN[0]}.{PYTHON_MIN[1]}; "
            f"this is Python {'.'.join(map(str, python))}"
        )
    check_tested("asgiref", asgiref_version, ASGIREF_RANGE)


def check_tested(
    name: str, version: str, tested: tuple[tuple[int, int], tuple[int, int]]
) -> None:
    """Raise `UnsupportedVersionError` unless *version* of *name* is in the
    *tested* range of minors; a newer minor of the same major only warns where
    `ALLOW_UNTESTED_ENV` is set to ``1``."""
    low, high = tested
    minor = _parse_version(version)[:2]
    if low <= minor <= high:
        return
    supported = f"{name} {low[0]}.{low[1]} - {high[0]}.{high[1]}"
    if (
        minor > high
        and minor[:1] == high[:1]
        and os.environ.get(ALLOW_UNTESTED_ENV) == "1"
    ):
        warnings.warn(
            f"asgiref-loopshare was tested with {supported}; running with {name} "
            f"{version} because {ALLOW_UNTESTED_ENV}=1",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    hint = (
        f" (set {ALLOW_UNTESTED_ENV}=1 to try it anyway)"
        if minor > high and minor[:1] == high[:1]
        else ""
    )
    raise UnsupportedVersionError(
        f"asgiref-loopshare supports {supported}; {name} {version} is installed{hint}"
    )


def create_task(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, _T],
    context: contextvars.Context,
) -> asyncio.Task[_T]:
    """A task running *coro* on *loop* in *context*, also on Python < 3.11.

    ``loop.create_task(coro, context=context)`` minus the loop's task factory,
    which is for the tasks user code creates (see `_loop._Runner.task_factory`):
    two Python frames less per call.
    """
    if sys.version_info >= (3, 11):
        return asyncio.Task(coro, loop=loop, context=context)
    # Before 3.11 a task copies the context current at creation.
    return context.run(asyncio.Task, coro, loop=loop)


def _task_registries() -> tuple[Any, ...] | None:
    """asyncio's registries of every task alive in the process, if found.

    A ``WeakSet`` of scheduled tasks (``_all_tasks`` before 3.12,
    ``_scheduled_tasks`` from 3.12) and, from 3.12, the set of eager tasks:
    what ``asyncio.all_tasks`` scans.
    """
    from asyncio import tasks

    found = tuple(
        getattr(tasks, name)
        for name in ("_all_tasks", "_scheduled_tasks", "_eager_tasks")
        if hasattr(getattr(tasks, name, None), "__len__")
    )
    return found or None


_registries = _task_registries()


def no_task_alive() -> bool:
    """Whether the process has no asyncio task at all (cheap; may say False).

    ``asyncio.all_tasks(loop)`` copies and filters every task of every loop
    (~22k instructions with none); a context's teardown asks this first.
    """
    if _registries is None:  # pragma: no cover - an asyncio built differently
        return False
    return not any(map(len, _registries))


def uncancel(task: asyncio.Task[Any] | None) -> None:
    """`task.uncancel()` on Python >= 3.11, where it exists; nothing before."""
    if task is not None and sys.version_info >= (3, 11):
        task.uncancel()


async def shutdown_default_executor(
    loop: asyncio.AbstractEventLoop, timeout: float | None
) -> None:
    """`loop.shutdown_default_executor(timeout)`, also on Python < 3.12.

    Waits at most *timeout* seconds for the default executor's threads; past
    that it warns (as CPython 3.12 does) and stops waiting.
    """
    if sys.version_info >= (3, 12):
        await loop.shutdown_default_executor(timeout)
        return
    executor = getattr(loop, "_default_executor", None)
    # Mark the loop as CPython does, so run_in_executor(None, ...) refuses.
    loop._executor_shutdown_called = True  # type: ignore[attr-defined]
    if executor is None:
        return
    future: asyncio.Future[None] = loop.create_future()

    def join() -> None:
        try:
            executor.shutdown(wait=True)
        except BaseException as exc:  # pragma: no cover - mirrors CPython
            if not loop.is_closed():
                loop.call_soon_threadsafe(_set_exception, future, exc)
        else:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_set_result, future)

    thread = threading.Thread(target=join, name="asgiref-loopshare-executor-join")
    thread.start()
    try:
        await asyncio.wait_for(asyncio.shield(future), timeout)
    except asyncio.TimeoutError:
        warnings.warn(
            f"The executor did not finishing joining its threads within {timeout} "
            "seconds.",
            RuntimeWarning,
            stacklevel=2,
        )
        executor.shutdown(wait=False)
    else:
        thread.join()


def detach_default_executor(loop: asyncio.AbstractEventLoop) -> Executor | None:
    """Take *loop*'s default executor away, shut down without waiting; return it.

    The next ``run_in_executor(None, ...)`` on *loop* makes a new one, with new
    threads, as the next ``asyncio.run`` would. ``None`` if it has none (or is
    not an asyncio ``BaseEventLoop``).
    """
    executor: Executor | None = getattr(loop, "_default_executor", None)
    if executor is None or not isinstance(loop, asyncio.BaseEventLoop):
        return None
    loop._default_executor = None  # type: ignore[attr-defined]
    executor.shutdown(wait=False)
    return executor


def join_executors(executors: list[Executor], timeout: float) -> None:
    """Wait, at most *timeout* seconds in all, for the threads of *executors*
    (already shut down) to end; warn about those still running then."""
    deadline = time.monotonic() + timeout
    stuck = 0
    for executor in executors:
        for thread in list(getattr(executor, "_threads", ())):
            thread.join(max(0.0, deadline - time.monotonic()))
            stuck += thread.is_alive()
    if stuck:
        warnings.warn(
            f"asgiref-loopshare: {stuck} default executor thread(s) still running "
            f"{timeout}s after their context ended were left behind",
            RuntimeWarning,
            stacklevel=2,
        )


def _set_result(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _set_exception(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
