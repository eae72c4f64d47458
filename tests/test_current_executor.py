"""The direct path to ``AsyncToSync.executors.current`` agrees with ``Local``."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from typing import Any

import pytest
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
