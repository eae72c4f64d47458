"""The in-place patch of Django's WSGI handlers: one loop-sharing context per request.

How a request is followed from start to end without a reference cycle:

- ``__call__`` of ``WSGIHandler`` and of the test client's ``ClientHandler`` is
  wrapped (whatever is there at `install` time, so patches applied earlier, such
  as an APM's, stay in the chain). Before Django sends ``request_started`` the
  wrapper opens the thread's `_RequestContext` (an ``AsyncSingleThreadContext``):
  it reopens the one its previous request closed, still set in the thread's
  contextvars context, or creates one and makes it the current one.
- The response that ``__call__`` returns gets the context, stored as
  ``response._loopshare_scope``. The response refers to the context; the
  context never refers to the response. ``WSGIHandler.__call__`` returns the
  response itself, so its wrapper stores it there; or, for a ``FileResponse``
  and a server with ``wsgi.file_wrapper``, the server's wrapper around the
  file: ``FileResponse.__init__`` is wrapped to note the responses (weakly) for
  that case. ``get_response`` of the test client's handler and of the two
  static-files handlers that override it is wrapped: the outermost wrapper that
  finds the context not yet attached stores it on the response it returns.
- ``HttpResponseBase.close`` is wrapped once, on the class: when the response
  carries a context, it runs Django's ``close()`` - resource closers, then
  ``request_finished`` with its async receivers on the request's loop - with
  the context current, then closes it. In the request thread it is still the
  current one; in another thread or contextvars context (waitress closes file
  responses from its main thread) it is made current there for the close and
  unset afterwards.
  ``response.close`` stays an ordinary bound method, so ``wsgi.file_wrapper``
  objects (which copy ``filelike.close`` when built) and WSGI middleware that
  keep only ``close`` work as with stock Django.
- If anything raises before the response is returned, the wrapper closes the
  context at once. A request that never awaits anything never starts a loop.

After a successful ``__call__`` the context stays set in the request thread's
contextvars context on purpose: servers iterate the body in that thread, and
Django consumes an async streaming body with ``async_to_sync`` only then. Once
closed it stays set, and a call made before the thread's next request behaves
as stock asgiref (see `asgiref_loopshare.LoopScope`); that request reopens it
with a new loop, if it awaits anything. A context is only reopened by the
thread that owns it, and only its owner's calls use it: another thread holding
a copy of the owner's contextvars (``contextvars.copy_context()``) gets stock
asgiref, so such a copy never reaches a later request's loop. A context closed
on another thread is not reopened. `disable` unsets the calling thread's idle
context, and each thread's own at its next request.

Per request this costs two wrapper calls (``WSGIHandler.__call__`` and
``close``) with a few slot writes: no context-variable set (about 3k
instructions with its reset, callgrind), no ``threading.local`` (about 1.5k per
access) and no ``get_response`` wrapper for ``WSGIHandler`` (about 1.5k).
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from asgiref.sync import AsyncToSync

import asgiref_loopshare
from asgiref_loopshare._core import ScopeContext

__all__ = ["SCOPE_ATTR", "disable", "enable", "is_enabled", "scope_of"]

#: Name of the attribute that carries a response's request context.
SCOPE_ATTR = "_loopshare_scope"

_current_context = AsyncToSync.async_single_thread_context


class _RequestContext(ScopeContext):
    """The loop-sharing context of a request, reopened by its thread's next one."""

    # Slots, not dict entries: written on every request. Slots shadow the
    # class defaults of ScopeContext, so a new one sets them all.
    __slots__ = ("closed", "file_responses", "owner", "phase", "started")

    closed: bool
    #: The ``FileResponse``s made while the context was pending, weakly.
    file_responses: list[weakref.ref[Any]] | None
    owner: int | None
    phase: int
    started: bool


# _RequestContext.phase, in the handler's __call__: no response carries it yet
# (_PENDING), or not yet and __call__ must look harder for the response it
# returns, because a nested request ran or a FileResponse was made
# (_PENDING_SLOW), or a get_response wrapper has attached it to its response
# (_TAKEN). After __call__, until the response is closed: _DONE. Closed, its
# loop torn down, and free for the owner thread's next request: _IDLE.
_IDLE, _DONE, _TAKEN, _PENDING, _PENDING_SLOW = 0, 1, 2, 3, 4
_new = object.__new__
_get_ident = threading.get_ident


_enabled = False
_lock = threading.RLock()
#: Whether `enable` installed the asgiref patch (then `disable` removes it).
_installed_core = False


def scope_of(response: Any) -> ScopeContext | None:
    """The request context a response will close, or ``None`` (tests, debugging)."""
    context: ScopeContext | None = getattr(response, SCOPE_ATTR, None)
    return context


#: ``django.http.response.HttpResponseBase`` once `enable` has imported it.
_HttpResponseBase: Any = type(None)
#: ``django.http.response.FileResponse`` once `enable` has imported it.
_FileResponse: type = type(None)


def _unset(token: Any) -> None:
    try:  # noqa: SIM105 - contextlib.suppress() costs more, once per request
        _current_context.reset(token)
    except ValueError:  # created in another thread's or task's context
        pass


#: The default of the ``__call__`` wrapper's *start_response*: the test
#: client's handler is called with ``environ`` only.
_ONE_ARGUMENT: Any = object()


def _wrap_call(original: Callable[..., Any]) -> Callable[..., Any]:
    # Explicit parameters, not (*args, **kwargs): a call with argument
    # unpacking costs about 2k instructions more per request (CPython 3.12).
    @functools.wraps(original)
    def __call__(self: Any, environ: Any, start_response: Any = _ONE_ARGUMENT) -> Any:
        if not _enabled:
            _forget_idle_context()
            if start_response is _ONE_ARGUMENT:
                return original(self, environ)
            return original(self, environ, start_response)
        context = _current_context.get(None)
        if (
            type(context) is _RequestContext
            and context.phase == _IDLE
            and context.owner == _get_ident()
        ):
            # This thread's context of its previous request, closed since:
            # open it again (a new loop if this request awaits anything).
            outer = None
            context.closed = False
            context.phase = _PENDING
        else:
            outer = context
            context = _new(_RequestContext)
            context.closed = context.started = False
            context.file_responses = None
            context.owner = _get_ident()
            context.phase = _PENDING
            # AsyncSingleThreadContext.__init__ only sets token: set it here.
            context.token = _current_context.set(context)
        try:
            if start_response is _ONE_ARGUMENT:  # ClientHandler(environ)
                result = original(self, environ)
            else:  # WSGIHandler(environ, start_response)
                result = original(self, environ, start_response)
        except BaseException:
            _end(context)
            raise
        else:
            phase = context.phase
            if phase == _PENDING:
                # WSGIHandler: what it returns is the response, or the server's
                # wsgi.file_wrapper (then a FileResponse made it _PENDING_SLOW).
                if isinstance(result, _HttpResponseBase):
                    result._loopshare_scope = context
                    context.phase = _DONE
                else:
                    _end(context)
            elif phase == _TAKEN:
                context.phase = _DONE
            elif phase == _PENDING_SLOW:
                if _attach(result, context):
                    context.phase = _DONE
                else:
                    _end(context)
            # _IDLE: the response was closed already (the test client does).
        finally:
            if outer is not None and type(outer) is _RequestContext:
                _hand_back(outer)
        return result

    return __call__


def _end(context: _RequestContext) -> None:
    """Close *context* and mark it free for reuse.

    Called in the owner thread: only that thread's next request reopens it.
    """
    context.phase = _IDLE
    context.file_responses = None
    if context.started:
        context.close()  # tears its loop down, on the loop's thread
        context.started = False
    else:
        context.closed = True


def _hand_back(outer: _RequestContext) -> None:
    """An in-process request inside another one (a view using the test client)
    has ended: give the outer request its context back, if it is in flight."""
    if outer.phase >= _TAKEN:
        _current_context.set(outer)
        if outer.phase == _PENDING:
            # The inner response may be what the outer request returns.
            outer.phase = _PENDING_SLOW


def _attach(result: Any, context: _RequestContext) -> bool:
    """Attach *context* to the response behind *result*, which `__call__` got
    back from a request that made a ``FileResponse`` or a nested request.

    *result* is the response, unless it already carries a context (an inner
    request's, returned as is), or the server's ``wsgi.file_wrapper`` around the
    file of one of the FileResponses made: the one whose file's ``close`` is the
    response's, which ``WSGIHandler`` set just before it built the wrapper.
    """
    refs, context.file_responses = context.file_responses, None
    if isinstance(result, _HttpResponseBase):
        response = result
    else:
        response = _wrapped_file_response(refs or ())
        if response is None:
            return False
    if scope_of(response) is not None:
        return False
    setattr(response, SCOPE_ATTR, context)
    return True


def _wrapped_file_response(refs: Iterable[weakref.ref[Any]]) -> Any:
    """The response among *refs* whose file ``WSGIHandler`` handed to the server."""
    for ref in refs:
        response = ref()
        stream = getattr(response, "file_to_stream", None)
        if response is not None and getattr(stream, "close", None) == response.close:
            return response
    return None


def _forget_idle_context() -> None:
    """Unset this thread's idle request context (the adapter is disabled).

    Stock asgiref's ``AsyncSingleThreadContext.__enter__`` does nothing while
    any context is set; once `disable` has removed the core patch too, a
    closed request context left set would make it a no-op in this thread.
    """
    context = _current_context.get(None)
    if type(context) is _RequestContext and context.phase == _IDLE:
        token, context.token = context.token, None
        if token is not None:
            _unset(token)


def _wrap_get_response(
    original: Callable[..., Any] | None, owner: type = object
) -> Callable[..., Any]:
    """Wrap *original*; or, when it is None, the ``get_response`` that *owner*
    inherits, looked up at call time (patches of ``BaseHandler`` keep working).
    """

    parent: Any = owner

    def get_response(self: Any, request: Any) -> Any:
        context = _current_context.get(None)
        if type(context) is not _RequestContext or context.phase < _PENDING:
            if original is None:
                return super(parent, self).get_response(request)
            return original(self, request)
        # Hidden from inner get_response wrappers: only the response the
        # handler gets back carries the context.
        phase, context.phase = context.phase, _TAKEN
        context.file_responses = None  # this wrapper attaches the response
        try:
            if original is None:
                response = super(parent, self).get_response(request)
            else:
                response = original(self, request)
        except BaseException:
            context.phase = phase  # the handler may still answer with a response
            raise
        response._loopshare_scope = context
        return response

    if original is not None:
        functools.update_wrapper(get_response, original)
    return get_response


def _wrap_file_response_init(original: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        context = _current_context.get(None)
        if type(context) is _RequestContext and context.phase >= _PENDING:
            # WSGIHandler may hand its file to the server's wsgi.file_wrapper
            # and return that instead: let __call__ find the response.
            refs = context.file_responses
            if refs is None:
                context.file_responses = [weakref.ref(self)]
            else:  # the response returned may be any of them
                refs.append(weakref.ref(self))
            context.phase = _PENDING_SLOW

    return __init__


def _wrap_close(original: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(original)
    def close(self: Any) -> None:
        # Attribute access only, and no class default: a class attribute of
        # the same name keeps LOAD_ATTR and STORE_ATTR from specializing, and
        # vars(self) would turn the instance's inline attribute values into a
        # dict and de-specialize every attribute access Django makes on
        # responses (CPython 3.11+).
        if _enabled:
            try:
                context: _RequestContext | None = self._loopshare_scope
            except AttributeError:  # not served through a patched handler
                context = None
        else:  # disabled: most responses have none, and raising costs more
            context = getattr(self, SCOPE_ATTR, None)
        if context is None:
            original(self)
            return
        self._loopshare_scope = None
        if _current_context.get(None) is context:
            # The usual case: closed where __call__ left the context set. It
            # stays set, closed, for this thread's next request to reopen: a
            # call made in between behaves as stock asgiref. Or closed in a
            # copy of that contextvars context, in another thread: no thread
            # id is compared here (one costs about 0.6k instructions per
            # request), so while request_finished runs the context serves
            # whichever thread has it current, then goes back to its owner,
            # whose __call__ alone reopens it.
            owner, context.owner = context.owner, None
            try:
                original(self)
            finally:
                # _end(context), inlined: a call less per request.
                context.owner = owner
                context.phase = _IDLE
                if context.started:
                    context.close()
                    context.started = False
                else:
                    context.closed = True
                if isinstance(self, _FileResponse):
                    _unhook_file_to_stream(self)
            return
        # Closed on another thread (waitress closes file responses from its
        # main thread) or in another contextvars context: the context serves
        # that thread for the close, then it ends, never to be reopened.
        context.owner = None
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
        (FileResponse, "__init__", _wrap_file_response_init),
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
        _forget_idle_context()
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
