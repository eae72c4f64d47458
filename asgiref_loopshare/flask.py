"""Flask: the async views and hooks of one request share one event loop.

Flask runs ``async def`` views, ``before_request`` / ``after_request`` /
``teardown_request`` functions, error handlers and signal receivers through
``app.ensure_sync`` -> ``app.async_to_sync``, which calls
``asgiref.sync.async_to_sync`` for each of them: under stock asgiref each gets
its own thread and event loop, so a loop-bound client (``redis.asyncio``,
``httpx.AsyncClient``) cannot be shared between the hooks of a request.

`LoopShare` wraps ``app.wsgi_app`` in `LoopShareMiddleware`, which installs the
loop-sharing ``async_to_sync`` (`asgiref_loopshare.install`) and makes each
request one scope: every async function Flask runs for the request - including
``teardown_request``, the place to close what the request opened - runs on the
request's loop, torn down once the server has closed the response::

    from asgiref_loopshare.flask import LoopShare

    app = Flask(__name__)
    LoopShare(app)              # or: loopshare = LoopShare(); loopshare.init_app(app)

``scope="thread"`` (argument, or ``app.config["LOOPSHARE_SCOPE"]``) gives each
server thread one long-lived loop shared by all the requests it serves
(`asgiref_loopshare.thread_scope`): for loop-bound pools, not task-bound
connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from asgiref_loopshare.wsgi import LoopShareMiddleware, Scope

if TYPE_CHECKING:
    from flask import Flask  # type: ignore[import-not-found,unused-ignore]

__all__ = ["CONFIG_KEY", "EXTENSION_NAME", "LoopShare"]

#: The config key that chooses the scope when `LoopShare` is given none.
CONFIG_KEY = "LOOPSHARE_SCOPE"
#: The key under which the extension registers itself in ``app.extensions``.
EXTENSION_NAME = "asgiref_loopshare"


class LoopShare:
    """One shared event loop per request (or per server thread) for a Flask app.

    *scope*: ``"request"`` or ``"thread"``; ``None`` (the default) reads
    ``app.config["LOOPSHARE_SCOPE"]`` in `init_app`, falling back to
    ``"request"``.
    """

    def __init__(self, app: Flask | None = None, *, scope: Scope | None = None) -> None:
        self.scope = scope
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` in `LoopShareMiddleware`.

        Idempotent per app: initialising an app again replaces its middleware
        (with the scope chosen now) instead of stacking a second one.
        """
        scope: Any = self.scope or app.config.get(CONFIG_KEY) or "request"
        wsgi_app: Any = app.wsgi_app
        if isinstance(wsgi_app, LoopShareMiddleware):
            wsgi_app = wsgi_app.app
        # Flask's documented way to add WSGI middleware.
        app.wsgi_app = LoopShareMiddleware(wsgi_app, scope=scope)  # type: ignore[method-assign,unused-ignore]
        app.config[CONFIG_KEY] = scope
        app.extensions[EXTENSION_NAME] = self

    @staticmethod
    def scope_of(app: Flask) -> Scope | None:
        """The scope *app* is served with, or ``None`` if not initialised."""
        wsgi_app: Any = app.wsgi_app
        if isinstance(wsgi_app, LoopShareMiddleware):
            return wsgi_app.scope
        return None
