"""install() / uninstall() / the AppConfig / get_wsgi_application()."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from asgiref.sync import AsyncToSync, async_to_sync
from conftest import make_environ
from django.apps import apps
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished
from django.http import HttpResponse
from django.test.client import ClientHandler

import asgiref_loopshare
import asgiref_loopshare.django as loopshare_django
from asgiref_loopshare.django.apps import LoopShareConfig

PATCHED = [
    (WSGIHandler, "__call__"),
    (WSGIHandler, "get_response"),
    (ClientHandler, "__call__"),
    (ClientHandler, "get_response"),
]


def class_attributes() -> dict[tuple[type, str], Any]:
    return {(cls, name): cls.__dict__.get(name) for cls, name in PATCHED}


def test_install_turns_on_the_asgiref_patch_and_the_django_patch() -> None:
    loopshare_django.install()
    assert asgiref_loopshare.is_installed()
    assert loopshare_django.is_installed()


def test_install_twice_patches_once() -> None:
    loopshare_django.install()
    first = class_attributes()
    loopshare_django.install()
    assert class_attributes() == first


def test_uninstall_restores_every_class_attribute() -> None:
    before = class_attributes()
    loopshare_django.install()
    assert class_attributes() != before
    loopshare_django.uninstall()
    assert class_attributes() == before
    assert not asgiref_loopshare.is_installed()


def test_uninstall_leaves_response_close_wrapped_but_inert() -> None:
    loopshare_django.install()
    loopshare_django.uninstall()
    finished: list[object] = []

    def on_finished(sender: Any, **kwargs: Any) -> None:
        finished.append(sender)

    request_finished.connect(on_finished, dispatch_uid="inert")
    try:
        response = HttpResponse(b"")
        response.close()
    finally:
        request_finished.disconnect(dispatch_uid="inert")
    assert response.closed
    assert finished == [None]
    assert AsyncToSync.async_single_thread_context.get(None) is None


def test_uninstall_twice_is_harmless() -> None:
    loopshare_django.install()
    loopshare_django.uninstall()
    loopshare_django.uninstall()
    assert not loopshare_django.is_installed()


def test_uninstall_keeps_an_asgiref_patch_installed_by_someone_else() -> None:
    asgiref_loopshare.install()
    try:
        loopshare_django.install()
        loopshare_django.uninstall()
        assert asgiref_loopshare.is_installed()
    finally:
        asgiref_loopshare.uninstall()


def test_is_installed_is_false_when_the_asgiref_patch_was_removed() -> None:
    loopshare_django.install()
    asgiref_loopshare.uninstall()
    assert not loopshare_django.is_installed()


def test_app_config_ready_installs() -> None:
    config = LoopShareConfig.create("asgiref_loopshare.django")
    assert config.label == "asgiref_loopshare"
    config.ready()
    assert loopshare_django.is_installed()


def test_app_label_does_not_clash_with_the_example_project() -> None:
    assert LoopShareConfig.label not in {c.label for c in apps.get_app_configs()}


def test_get_wsgi_application_returns_djangos_handler_with_the_patch_on() -> None:
    application = loopshare_django.get_wsgi_application()
    assert type(application) is WSGIHandler
    assert loopshare_django.is_installed()


class _TwoCallsHandler(WSGIHandler):  # type: ignore[misc]
    """Defined (and instantiated) before install(): the patch must still apply.

    Its get_response makes two async_to_sync calls and keeps both loops (alive,
    so that two loops can never be mistaken for one through a reused id()).
    """

    def __init__(self) -> None:
        self.loops: list[asyncio.AbstractEventLoop] = []  # no middleware

    async def _keep_loop(self) -> None:
        self.loops.append(asyncio.get_running_loop())

    def get_response(self, request: Any) -> HttpResponse:
        async_to_sync(self._keep_loop)()
        async_to_sync(self._keep_loop)()
        return HttpResponse(b"")


def one_loop_per_request(handler: _TwoCallsHandler) -> bool:
    handler.loops.clear()
    handler(make_environ("/"), lambda status, headers: None).close()
    first, second = handler.loops
    return first is second


def test_handler_created_before_install_shares_one_loop_after_install() -> None:
    handler = _TwoCallsHandler()
    loopshare_django.install()
    assert one_loop_per_request(handler)


def test_handler_after_uninstall_gets_a_loop_per_call_again() -> None:
    handler = _TwoCallsHandler()
    loopshare_django.install()
    loopshare_django.uninstall()
    assert not one_loop_per_request(handler)


def test_a_patch_applied_before_install_stays_in_the_chain() -> None:
    seen: list[str] = []
    original = WSGIHandler.__call__

    def apm_call(self: Any, environ: Any, start_response: Any) -> Any:
        seen.append("apm")
        return original(self, environ, start_response)

    WSGIHandler.__call__ = apm_call
    try:
        loopshare_django.install()
        assert one_loop_per_request(_TwoCallsHandler())
        assert seen == ["apm"]
        loopshare_django.uninstall()
        assert WSGIHandler.__dict__["__call__"] is apm_call
    finally:
        WSGIHandler.__call__ = original


def test_uninstall_leaves_a_wrapper_wrapped_since_but_passes_through() -> None:
    stock = WSGIHandler.__dict__["__call__"]
    loopshare_django.install()
    ours = WSGIHandler.__dict__["__call__"]

    @functools.wraps(ours)
    def later_patch(self: Any, environ: Any, start_response: Any) -> Any:
        return ours(self, environ, start_response)

    WSGIHandler.__call__ = later_patch
    try:
        loopshare_django.uninstall()
        assert WSGIHandler.__dict__["__call__"] is later_patch
        handler = _TwoCallsHandler()
        context_before = AsyncToSync.async_single_thread_context.get(None)
        handler(make_environ("/"), lambda status, headers: None).close()
        # Passed through: no scope was activated in this context.
        assert AsyncToSync.async_single_thread_context.get(None) is context_before
        # Installing again re-enables the wrapper left in place.
        loopshare_django.install()
        assert WSGIHandler.__dict__["__call__"] is later_patch
        assert one_loop_per_request(handler)
    finally:
        loopshare_django.uninstall()
        WSGIHandler.__call__ = stock


def test_install_wraps_again_when_its_wrapper_was_replaced() -> None:
    stock = WSGIHandler.__dict__["__call__"]
    loopshare_django.install()
    loopshare_django.uninstall()
    loopshare_django.install()
    WSGIHandler.__call__ = stock  # someone undid us
    loopshare_django.uninstall()
    loopshare_django.install()
    assert WSGIHandler.__dict__["__call__"] is not stock
    assert one_loop_per_request(_TwoCallsHandler())
