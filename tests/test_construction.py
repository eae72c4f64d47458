"""``AsyncToSync.__init__`` as patched: what asgiref's own builds, and warns."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import AsyncToSync

from asgiref_loopshare._core import loopshare_init, stock_init


async def plain() -> None:
    pass


class Service:
    async def method(self) -> None:
        pass

    @classmethod
    async def class_method(cls) -> None:
        pass


class AsyncCallable:
    async def __call__(self) -> None:
        pass


class SyncCallable:
    def __call__(self) -> None:
        pass


def sync_function() -> None:
    pass


CALLABLES: dict[str, Callable[[], Any]] = {
    "async function": lambda: plain,
    "bound async method": lambda: Service().method,
    "async classmethod": lambda: Service.class_method,
    "partial of an async function": lambda: functools.partial(plain),
    "object with async __call__": lambda: AsyncCallable(),
    "object with sync __call__": lambda: SyncCallable(),
    "sync function": lambda: sync_function,
    "builtin": lambda: len,
    "lambda": lambda: lambda: None,
}


def built_with(
    init: Callable[..., None], awaitable: Any, **kwargs: Any
) -> tuple[dict[str, Any], list[tuple[str, str, int]]]:
    """The instance's attributes and the warnings (message, file, line) raised."""
    instance = AsyncToSync.__new__(AsyncToSync)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        init(instance, awaitable, **kwargs)  # the warning's frame: this line
    return vars(instance), [(str(w.message), w.filename, w.lineno) for w in caught]


@pytest.mark.parametrize("make", CALLABLES.values(), ids=CALLABLES.keys())
@pytest.mark.parametrize("force_new_loop", [False, True])
def test_construction_sets_what_asgiref_sets_and_warns_alike(
    make: Callable[[], Any], force_new_loop: bool
) -> None:
    awaitable = make()
    ours = built_with(loopshare_init, awaitable, force_new_loop=force_new_loop)
    assert ours == built_with(stock_init, awaitable, force_new_loop=force_new_loop)


def test_a_sync_callable_is_still_warned_about_at_the_callers_line() -> None:
    _, caught = built_with(loopshare_init, sync_function)
    assert [(message, file) for message, file, _ in caught] == [
        ("async_to_sync was passed a non-async-marked callable", __file__)
    ]


def test_a_non_callable_is_warned_about_as_asgiref_does() -> None:
    assert built_with(loopshare_init, 42) == built_with(stock_init, 42)
