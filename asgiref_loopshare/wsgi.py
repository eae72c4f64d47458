"""One shared event loop per WSGI request (or per server thread), for any WSGI app.

``LoopShareMiddleware(app)`` runs every ``async_to_sync`` call made while a
request is handled - by the application, by the body iterable while the server
iterates it, by its ``close()`` - on one event loop. With ``scope="thread"`` the
loop is the server thread's long-lived one (`thread_scope`), shared by every
request that thread serves.

The lifecycle, as for the Django adapter:

- The scope (a `LoopScope`) is active while the application runs, around each
  step of the server's iteration of the body and around the body's
  ``close()`` - activated in whatever thread and contextvars context does
  each, so a server that iterates or closes on another thread (waitress closes
  file responses from its main thread) gets the same loop. Between those, and
  after the request, nothing is left set in the server thread's context.
- It ends after the response iterable's ``close()`` has run, or at once if the
  application raises. A per-thread scope is not ended then: the next request
  on that thread activates it again.
- A request that never calls async code creates no thread and no loop.
- No reference cycle: the iterable that the server closes refers to the scope,
  never the reverse, so the application's iterable is freed by reference
  counting once the server drops it.
- ``wsgi.file_wrapper`` results are returned as they are (servers check their
  type to use ``sendfile``); their ``close`` is hooked through an instance
  attribute (a server that reads one in Python does so outside the scope:
  reading a file needs no loop). Any other iterable - a list, a generator, a
  framework's response - is wrapped in a small closing iterable that calls its
  ``close()`` once, propagates what it raises and ends the scope in any case.

Constructing the middleware calls `asgiref_loopshare.install`: asgiref's
``async_to_sync`` must be the loop-sharing one for the scope to matter.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from asgiref_loopshare._core import LoopScope
from asgiref_loopshare._patch import install
from asgiref_loopshare._thread_scope import thread_scope

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["LoopShareMiddleware", "Scope"]

Scope = Literal["request", "thread"]
_SCOPES = ("request", "thread")


class LoopShareMiddleware:
    """Wrap a WSGI application so that each request shares one event loop.

    *scope* is ``"request"`` (the default: a loop per request, torn down once
    the response is closed) or ``"thread"`` (the server thread's long-lived loop,
    see `asgiref_loopshare.thread_scope`; it suits loop-bound pools such as
    ``redis.asyncio`` and ``httpx``, not task-bound connections).

    Calls `asgiref_loopshare.install` when constructed.
    """

    __slots__ = ("app", "scope")

    def __init__(self, app: WSGIApplication, *, scope: Scope = "request") -> None:
        if scope not in _SCOPES:
            raise ValueError(f"scope must be 'request' or 'thread', not {scope!r}")
        install()
        self.app = app
        self.scope: Scope = scope

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        per_request = self.scope == "request"
        scope = LoopScope() if per_request else thread_scope()
        token = scope.activate()
        try:
            result = self.app(environ, start_response)
        except BaseException:
            if per_request:
                scope.close()
            raise
        finally:
            scope.deactivate(token)
        ending = _Ending(scope, per_request)
        if _is_file_wrapper(result, environ) and _hook_close(result, ending):
            return result
        if hasattr(type(result), "__len__"):
            return _SizedClosingIterable(result, ending)
        return _ClosingIterable(result, ending)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.app!r}, scope={self.scope!r})"


class _Ending:
    """What ends a request: its scope, closed at the end if per request."""

    __slots__ = ("per_request", "scope")

    def __init__(self, scope: LoopScope, per_request: bool) -> None:
        self.scope = scope
        self.per_request = per_request

    def run(self, close: Any) -> None:
        """Call *close* (or nothing) with the scope active, then end the scope.

        Runs on whatever thread the server closes the response from: the scope
        is activated in that thread's context for the ``close()``.
        """
        scope = self.scope
        token = scope.activate()
        try:
            if close is not None:
                close()
        finally:
            scope.deactivate(token)
            if self.per_request:
                scope.close()


class _ClosingIterable:
    """The application's iterable, with the scope around each step and close()."""

    __slots__ = ("_ending", "_iterable", "_iterator")

    def __init__(self, iterable: Iterable[bytes], ending: _Ending) -> None:
        self._iterable: Iterable[bytes] | None = iterable
        self._iterator: Iterator[bytes] | None = None
        self._ending: _Ending | None = ending

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        iterator = self._iterator
        ending = self._ending
        if ending is None:  # closed
            raise StopIteration
        scope = ending.scope
        token = scope.activate()
        try:
            if iterator is None:
                assert self._iterable is not None
                iterator = self._iterator = iter(self._iterable)
            return next(iterator)
        finally:
            scope.deactivate(token)

    def close(self) -> None:
        """Close the application's iterable once; end the scope in any case."""
        ending, self._ending = self._ending, None
        if ending is None:
            return
        iterable, self._iterable, self._iterator = self._iterable, None, None
        ending.run(getattr(iterable, "close", None))


class _SizedClosingIterable(_ClosingIterable):
    """A `_ClosingIterable` of a sized iterable: servers use ``len() == 1``."""

    __slots__ = ()

    def __len__(self) -> int:
        iterable: Any = self._iterable
        return len(iterable) if iterable is not None else 0


def _is_file_wrapper(result: object, environ: WSGIEnvironment) -> bool:
    wrapper = environ.get("wsgi.file_wrapper")
    return isinstance(wrapper, type) and isinstance(result, wrapper)


class _CloseHook:
    """The ``close`` a file wrapper gets as an instance attribute.

    It refers to the file wrapper only weakly, and to the ``close`` the wrapper
    had: its own instance attribute (gunicorn's and wsgiref's ``FileWrapper``
    copy ``filelike.close`` there when built) or its class's method (waitress's
    ``ReadOnlyFileBasedBuffer``). So it adds no reference cycle; once run, it
    puts the original back.
    """

    __slots__ = ("_ending", "_original", "_target")

    def __init__(self, target: Any, original: Any, ending: _Ending) -> None:
        self._target = weakref.ref(target)
        #: The instance attribute it replaced, or None (the class's close).
        self._original = original
        self._ending: _Ending | None = ending

    def __call__(self) -> None:
        target = self._target()
        original = self._original
        close: Any = original
        if target is not None:
            if original is None:
                del target.close
                close = getattr(target, "close", None)
            else:
                target.close = original
        ending, self._ending = self._ending, None
        if ending is None:  # called again through a copy of the hook
            if close is not None:
                close()
            return
        ending.run(close)


def _hook_close(result: Any, ending: _Ending) -> bool:
    """Hook *result*'s ``close`` in place; False if it cannot be (then wrap)."""
    try:
        attributes = vars(result)
    except TypeError:  # no __dict__ (slots, C type)
        return False
    original = attributes.get("close")
    try:
        result.close = _CloseHook(result, original, ending)
    except (AttributeError, TypeError):  # no weakref support, read-only
        return False
    return True
