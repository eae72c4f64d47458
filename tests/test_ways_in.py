"""install()/uninstall(), the drop-in module, and the version gate."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import re
import threading
from collections.abc import Iterator

import pytest
from asgiref import sync as asgiref_sync
from asgiref.sync import AsyncSingleThreadContext, AsyncToSync, sync_to_async

import asgiref_loopshare
from asgiref_loopshare import _compat
from asgiref_loopshare import sync as loopshare_sync
from tests.conftest import loop_and_thread

ORIGINAL_CALL = AsyncToSync.__dict__["__call__"]
ORIGINAL_INIT = AsyncToSync.__dict__["__init__"]
ORIGINAL_ENTER = AsyncSingleThreadContext.__dict__["__enter__"]

# Bound before install(), as Django's modules bind it at import time.
from asgiref.sync import async_to_sync as imported_before_install  # noqa: E402


@pytest.fixture
def clean() -> Iterator[None]:
    asgiref_loopshare.uninstall()
    yield
    asgiref_loopshare.uninstall()


def shares_loop(async_to_sync: object) -> bool:
    with AsyncSingleThreadContext():
        first, _ = async_to_sync(loop_and_thread)()  # type: ignore[operator]
        second, _ = async_to_sync(loop_and_thread)()  # type: ignore[operator]
    return first is second and first.is_closed()


def test_install_makes_asgiref_share_the_loop(clean: None) -> None:
    asgiref_loopshare.install()
    assert asgiref_loopshare.is_installed()
    assert shares_loop(asgiref_sync.async_to_sync)


def test_install_reaches_names_imported_before_it(clean: None) -> None:
    asgiref_loopshare.install()
    assert shares_loop(imported_before_install)


def test_install_reaches_wrappers_created_before_it(clean: None) -> None:
    wrapper = asgiref_sync.async_to_sync(loop_and_thread)
    asgiref_loopshare.install()
    with AsyncSingleThreadContext():
        assert wrapper()[0] is wrapper()[0]


def test_stock_inside_a_context_uses_a_new_loop_per_call(clean: None) -> None:
    with AsyncSingleThreadContext():
        first, thread1 = asgiref_sync.async_to_sync(loop_and_thread)()
        second, thread2 = asgiref_sync.async_to_sync(loop_and_thread)()
    assert first is not second
    assert thread1 is thread2


def test_install_is_idempotent(clean: None) -> None:
    asgiref_loopshare.install()
    patched = AsyncToSync.__dict__["__call__"]
    asgiref_loopshare.install()
    assert AsyncToSync.__dict__["__call__"] is patched


def test_uninstall_restores_the_original_object(clean: None) -> None:
    asgiref_loopshare.install()
    asgiref_loopshare.uninstall()
    assert AsyncToSync.__dict__["__call__"] is ORIGINAL_CALL
    assert AsyncToSync.__dict__["__init__"] is ORIGINAL_INIT
    assert AsyncSingleThreadContext.__dict__["__enter__"] is ORIGINAL_ENTER
    assert not asgiref_loopshare.is_installed()
    assert not shares_loop(asgiref_sync.async_to_sync)


def test_uninstall_without_install_changes_nothing(clean: None) -> None:
    asgiref_loopshare.uninstall()
    assert AsyncToSync.__dict__["__call__"] is ORIGINAL_CALL


def test_install_from_many_threads_at_once_installs_once(clean: None) -> None:
    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        asgiref_loopshare.install()

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert asgiref_loopshare.is_installed()
    asgiref_loopshare.uninstall()
    assert AsyncToSync.__dict__["__call__"] is ORIGINAL_CALL


def test_uninstall_inside_an_open_context_keeps_it_working(clean: None) -> None:
    asgiref_loopshare.install()
    with AsyncSingleThreadContext():
        shared, _ = asgiref_sync.async_to_sync(loop_and_thread)()
        asgiref_loopshare.uninstall()
        stock, _ = asgiref_sync.async_to_sync(loop_and_thread)()
        assert stock is not shared
    assert shared.is_closed()


def test_drop_in_shares_the_loop_without_patching(clean: None) -> None:
    assert shares_loop(loopshare_sync.async_to_sync)
    assert not asgiref_loopshare.is_installed()


def test_drop_in_as_decorator_with_arguments(clean: None) -> None:
    @loopshare_sync.async_to_sync(force_new_loop=False)
    async def probe() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    with AsyncSingleThreadContext():
        assert probe() is probe()


def test_drop_in_names_are_asgirefs_objects() -> None:
    for name in (
        "AsyncSingleThreadContext",
        "SyncToAsync",
        "ThreadSensitiveContext",
        "sync_to_async",
        "iscoroutinefunction",
        "markcoroutinefunction",
        "CurrentThreadExecutor",
        "Local",
        "_restore_context",
    ):
        assert getattr(loopshare_sync, name) is getattr(asgiref_sync, name), name


def test_drop_in_async_to_sync_shares_asgirefs_state() -> None:
    subclass = loopshare_sync.AsyncToSync
    assert issubclass(subclass, AsyncToSync)
    for name in (
        "executors",
        "loop_thread_executors",
        "async_single_thread_context",
        "context_to_thread_executor",
    ):
        assert getattr(subclass, name) is getattr(AsyncToSync, name), name


def test_drop_in_keeps_every_public_name_of_asgiref_sync() -> None:
    public = {name for name in dir(asgiref_sync) if not name.startswith("_")}
    missing = [name for name in public if not hasattr(loopshare_sync, name)]
    assert missing == []


def test_drop_in_mixed_with_asgiref_sync_to_async_keeps_thread_sensitivity(
    clean: None,
) -> None:
    caller = threading.current_thread()

    async def view() -> threading.Thread:
        return await sync_to_async(threading.current_thread)()

    with AsyncSingleThreadContext():
        assert loopshare_sync.async_to_sync(view)() is caller


def test_importing_the_drop_in_patches_nothing(clean: None) -> None:
    importlib.reload(loopshare_sync)
    assert AsyncToSync.__dict__["__call__"] is ORIGINAL_CALL
    assert AsyncToSync.__dict__["__init__"] is ORIGINAL_INIT


@pytest.mark.parametrize(
    ("python", "asgiref", "message"),
    [
        ((3, 8, 18), "3.11.0", "supports Python >= 3.9; this is Python 3.8.18"),
        ((3, 12, 1), "3.9.2", "supports asgiref 3.10 - 3.13; asgiref 3.9.2 is"),
        ((3, 12, 1), "3.14.0", "supports asgiref 3.10 - 3.13; asgiref 3.14.0 is"),
        ((3, 12, 1), "4.0.0", "supports asgiref 3.10 - 3.13; asgiref 4.0.0 is"),
    ],
)
def test_unsupported_versions_are_named(
    python: tuple[int, int, int], asgiref: str, message: str
) -> None:
    with pytest.raises(
        _compat.UnsupportedVersionError, match=message.replace(".", r"\.")
    ):
        _compat.check_versions(python, asgiref)


@pytest.mark.parametrize("asgiref", ["3.10.0", "3.11.1", "3.12.1", "3.13.0", "3.13.9"])
def test_supported_versions_pass(asgiref: str) -> None:
    _compat.check_versions((3, 9, 0), asgiref)


def test_an_untested_asgiref_minor_names_the_opt_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(_compat.ALLOW_UNTESTED_ENV, raising=False)
    with pytest.raises(
        _compat.UnsupportedVersionError, match=_compat.ALLOW_UNTESTED_ENV
    ):
        _compat.check_versions((3, 12, 1), "3.14.0rc1")


def test_the_opt_in_runs_a_newer_minor_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(_compat.ALLOW_UNTESTED_ENV, "1")
    with pytest.warns(
        RuntimeWarning, match=re.escape("tested with asgiref 3.10 - 3.13")
    ):
        _compat.check_versions((3, 12, 1), "3.14.0")


@pytest.mark.parametrize("asgiref", ["4.0.0", "3.9.2"])
def test_the_opt_in_does_not_reach_another_major_or_an_older_minor(
    monkeypatch: pytest.MonkeyPatch, asgiref: str
) -> None:
    monkeypatch.setenv(_compat.ALLOW_UNTESTED_ENV, "1")
    with pytest.raises(_compat.UnsupportedVersionError):
        _compat.check_versions((3, 12, 1), asgiref)


@pytest.mark.parametrize(
    ("django", "passes"),
    [
        ("4.1.13", False),
        ("4.2.20", True),
        ("5.1.4", True),
        ("6.1.3", True),
        ("6.2", False),
    ],
)
def test_the_django_gate_takes_the_tested_range(
    monkeypatch: pytest.MonkeyPatch, django: str, passes: bool
) -> None:
    monkeypatch.delenv(_compat.ALLOW_UNTESTED_ENV, raising=False)
    if passes:
        _compat.check_tested("Django", django, _compat.DJANGO_RANGE)
    else:
        with pytest.raises(
            _compat.UnsupportedVersionError, match=re.escape("Django 4.2 - 6.1")
        ):
            _compat.check_tested("Django", django, _compat.DJANGO_RANGE)


def test_unsupported_version_error_is_an_import_error() -> None:
    assert issubclass(_compat.UnsupportedVersionError, ImportError)


def test_a_closed_scope_left_set_does_not_disable_a_new_context(
    installed: None,
) -> None:
    """A request scope closed on another thread stays set in its thread."""
    from asgiref_loopshare import LoopScope

    def after_a_request_closed_elsewhere() -> bool:
        scope = LoopScope()
        scope.activate()  # never deactivated here, as after a cross-thread close()
        scope.close()
        return shares_loop(asgiref_sync.async_to_sync)

    # A copy: the scope left set must not leak into later tests.
    assert contextvars.copy_context().run(after_a_request_closed_elsewhere)
