"""The in-place patch of Django's WSGI handlers: one loop-sharing context per request.

How a request is followed from start to end without a reference cycle:

- ``__call__`` of ``WSGIHandler`` and of the test client's ``ClientHandler`` is
  wrapped (whatever is there at `install` time, so patches applied earlier, such
  as an APM's, stay in the chain). The wrapper creates a `_RequestContext` (an
  ``AsyncSingleThreadContext``) and makes it the current one before Django
  sends ``request_started``.
- ``get_response`` of those handlers (and of the two static-files handlers that
  override it) is wrapped: the outermost wrapper that finds the current context
  *pending* stores it on the response it returns, as
  ``response._loopshare_scope``. The response refers to the context; the
  context never refers to the response.
- ``HttpResponseBase.close`` is wrapped once, on the class: when the response
  carries a context, it makes it current in whatever thread and contextvars
  context runs ``close()`` (waitress closes file responses from another thread),
  runs Django's ``close()`` - resource closers, then ``request_finished`` with
  its async receivers on the request's loop - then unsets and closes it.
  ``response.close`` stays an ordinary bound method, so ``wsgi.file_wrapper``
  objects (which copy ``filelike.close`` when built) and WSGI middleware that
  keep only ``close`` work as with stock Django.
- If anything raises before the response is returned, the wrapper closes the
  context at once. A request that never awaits anything never starts a loop.

After a successful ``__call__`` the context stays set in the request thread's
contextvars context on purpose: servers iterate the body in that thread, and
Django consumes an async streaming body with ``async_to_sync`` only then. The
next request's context replaces it; a closed one left set behaves as stock
asgiref (see `asgiref_loopshare.LoopScope`).

Per request this costs one context-variable set and reset, one small object and
a few attribute writes. No ``threading.local``: each access to one costs about
1.5k instructions (callgrind), and keeping the request's state in one took eight.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from asgiref.sync import AsyncToSync

import asgiref_loopshare
from asgiref_loopshare._core import ScopeContext

__all__ = ["SCOPE_ATTR", "disable", "enable", "is_enabled", "scope_of"]

#: Name of the attribute that carries a response's request context.
SCOPE_ATTR = "_loopshare_scope"

_current_context = AsyncToSync.async_single_thread_context


class _RequestContext(ScopeContext):
    """The loop-sharing context of one request."""

    # A slot, not a dict entry: written three times per request.
    __slots__ = ("phase",)

    phase: int


# _RequestContext.phase: in the handler's __call__, and no get_response wrapper
# has taken it for its response yet (_PENDING) or one has (_TAKEN); after it
# (_DONE). A nested request hands the context back to an outer one in __call__.
_DONE, _TAKEN, _PENDING = 0, 1, 2
_new = object.__new__


_enabled = False
_lock = threading.RLock()
#: Whether `enable` installed the asgiref patch (then `disable` removes it).
_installed_core = False


def scope_of(response: Any) -> ScopeContext | None:
    """The request context a response will close, or ``None`` (tests, debugging)."""
    context: ScopeContext | None = getattr(response, SCOPE_ATTR, None)
    return context


#: ``django.http.response.HttpResponseBase`` once `enable` has imported it.
_HttpResponseBase: type = type(None)
#: ``django.http.response.FileResponse`` once `enable` has imported it.
_FileResponse: type = type(None)


def _unset(token: Any) -> None:
    try:  # noqa: SIM105 - contextlib.suppress() costs more, once per request
        _current_context.reset(token)
    except ValueError:  # created in another thread's or task's context
        pass


def _wrap_call(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _enabled:
            return original(self, *args, **kwargs)
        outer = _current_context.get(None)
        # AsyncSingleThreadContext.__init__ only sets token: set it here.
        context: _RequestContext = _new(_RequestContext)
        context.phase = _PENDING
        context.token = _current_context.set(context)
        try:
            result = original(self, *args, **kwargs)
        except BaseException:
            context.phase = _DONE
            _unset(context.token)
            context.close()
            raise
        if context.phase == _PENDING:
            _attach_or_close(result, context)
        context.phase = _DONE
        if type(outer) is _RequestContext and outer.phase:
            # An in-process request inside another one (a view using the test
            # client): hand the outer request its context back.
            _current_context.set(outer)
        return result

    return __call__


def _attach_or_close(result: Any, context: _RequestContext) -> None:
    """No patched get_response saw the response (a handler subclass of unknown
    shape): attach the context to the response if that is what we got, else
    end it now."""
    if isinstance(result, _HttpResponseBase) and scope_of(result) is None:
        setattr(result, SCOPE_ATTR, context)
    else:
        context.close()


def _wrap_get_response(
    original: Callable[..., Any] | None, owner: type = object
) -> Callable[..., Any]:
    """Wrap *original*; or, when it is None, the ``get_response`` that *owner*
    inherits, looked up at call time (patches of ``BaseHandler`` keep working).
    """

    parent: Any = owner

    def get_response(self: Any, request: Any) -> Any:
        context = _current_context.get(None)
        if type(context) is not _RequestContext or context.phase != _PENDING:
            if original is None:
                return super(parent, self).get_response(request)
            return original(self, request)
        # Hidden from inner get_response wrappers: only the response the
        # handler gets back carries the context.
        context.phase = _TAKEN
        try:
            if original is None:
                response = super(parent, self).get_response(request)
            else:
                response = original(self, request)
        except BaseException:
            context.phase = _PENDING  # the handler may still answer with a response
            raise
        response._loopshare_scope = context
        return response

    if original is not None:
        functools.update_wrapper(get_response, original)
    return get_response


def _wrap_close(original: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(original)
    def close(self: Any) -> None:
        # Attribute access only: vars(self) would turn the instance's inline
        # attribute values into a dict and de-specialize every attribute
        # access Django makes on responses (CPython 3.11+).
        context: _RequestContext | None = self._loopshare_scope
        if context is None:
            original(self)
            return
        self._loopshare_scope = None
        if _current_context.get(None) is context:
            # The usual case: closed where __call__ left the context set.
            # Unset it there too: a closed context left set would turn a later
            # `with AsyncSingleThreadContext()` in this thread into a no-op.
            token = context.token
            try:
                original(self)
            finally:
                context.close()
                if token is not None:
                    context.token = None
                    _unset(token)
                if isinstance(self, _FileResponse):
                    _unhook_file_to_stream(self)
            return
        token = _current_context.set(context)
        try:
            original(self)
        finally:
            _unset(token)
            context.close()
            if isinstance(self, _FileResponse):
                _unhook_file_to_stream(self)

    return close


def _unhook_file_to_stream(response: Any) -> None:
    """Break the cycles of a closed ``FileResponse`` served via ``wsgi.file_wrapper``.

    Django sets ``response.file_to_stream.close = response.close`` (a bound
    method: response -> file -> response) so that the server's file wrapper
    closes the response, and ``FileResponse`` iterates through a lambda that
    refers to the response (response -> iterator -> lambda -> response), which
    only exhaustion drops - and the server reads the file itself, so it never
    is. Once the response is closed both have done their job; dropping them lets
    reference counting free the response.
    """
    stream = getattr(response, "file_to_stream", None)
    if stream is None:
        return
    hook = getattr(stream, "__dict__", {}).get("close")
    if getattr(hook, "__self__", None) is response:
        del stream.close
    if hasattr(response, "_iterator"):
        response._iterator = iter(())


class _Patch(NamedTuple):
    cls: type
    name: str
    previous: Any  # the class's own attribute before patching, or _ABSENT
    wrapper: Any


_ABSENT = object()
#: Patches applied and not (yet) restored, in order.
_patches: list[_Patch] = []


def _targets() -> list[tuple[type, str, Callable[[Any], Any]]]:
    from django.contrib.staticfiles.handlers import StaticFilesHandlerMixin
    from django.core.handlers.wsgi import WSGIHandler
    from django.http.response import FileResponse, HttpResponseBase
    from django.test.client import ClientHandler
    from django.test.testcases import FSFilesHandler

    global _HttpResponseBase, _FileResponse
    _HttpResponseBase = HttpResponseBase
    _FileResponse = FileResponse
    return [
        (HttpResponseBase, "close", _wrap_close),
        (WSGIHandler, "__call__", _wrap_call),
        (WSGIHandler, "get_response", _wrap_get_response),
        (ClientHandler, "__call__", _wrap_call),
        (ClientHandler, "get_response", _wrap_get_response),
        # Handlers that override get_response without calling super().
        (StaticFilesHandlerMixin, "get_response", _wrap_get_response),
        (FSFilesHandler, "get_response", _wrap_get_response),
    ]


def _in_chain(attribute: Any, wrapper: Any) -> bool:
    """Whether *wrapper* is *attribute* or wrapped by it (``__wrapped__`` chain)."""
    for _ in range(100):
        if attribute is wrapper:
            return True
        attribute = getattr(attribute, "__wrapped__", None)
        if attribute is None:
            return False
    return False


def enable() -> None:
    """Install the asgiref patch and the Django patch. Idempotent."""
    global _enabled, _installed_core
    with _lock:
        if not asgiref_loopshare.is_installed():
            asgiref_loopshare.install()
            _installed_core = True
        for patch in list(_patches):
            if not _in_chain(patch.cls.__dict__.get(patch.name), patch.wrapper):
                _patches.remove(patch)  # replaced by someone else since
        applied = {(patch.cls, patch.name) for patch in _patches}
        for cls, name, make_wrapper in _targets():
            if (cls, name) in applied:
                continue  # still in place from an earlier enable()
            previous = cls.__dict__.get(name, _ABSENT)
            if previous is _ABSENT:  # inherited: only get_response is
                wrapper = _wrap_get_response(None, owner=cls)
            else:
                wrapper = make_wrapper(previous)
            setattr(cls, name, wrapper)
            _patches.append(_Patch(cls, name, previous, wrapper))
        if not hasattr(_HttpResponseBase, SCOPE_ATTR):
            # The default every response without a scope reads (kept after
            # disable(), like the close() wrapper that reads it).
            setattr(_HttpResponseBase, SCOPE_ATTR, None)
        _enabled = True


def disable() -> None:
    """Undo `enable`. Idempotent.

    The handlers get their own methods back. ``HttpResponseBase.close`` keeps
    its wrapper, which does nothing for a response without a scope: responses
    of requests in flight still end their loop when closed. A wrapper that
    something else has wrapped since stays in place too (removing it would
    remove the other patch) but passes every request straight through.
    """
    global _enabled, _installed_core
    with _lock:
        _enabled = False
        for patch in reversed(list(_patches)):
            if patch.name == "close":
                continue  # inert without a scope; in-flight responses need it
            if patch.cls.__dict__.get(patch.name) is not patch.wrapper:
                continue
            if patch.previous is _ABSENT:
                delattr(patch.cls, patch.name)
            else:
                setattr(patch.cls, patch.name, patch.previous)
            _patches.remove(patch)
        if _installed_core:
            asgiref_loopshare.uninstall()
            _installed_core = False


def is_enabled() -> bool:
    """Whether the Django patch is in effect (with the asgiref patch)."""
    return _enabled and asgiref_loopshare.is_installed()
