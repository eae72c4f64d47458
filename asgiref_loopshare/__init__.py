"""Share one asyncio event loop per asgiref ``AsyncSingleThreadContext``.

Inside an ``asgiref.sync.AsyncSingleThreadContext``, every ``async_to_sync`` call
runs on one worker thread whose event loop lives as long as the context; outside
a context, asgiref behaves exactly as it does without this package.

Public surface:

- `install` / `uninstall` / `is_installed`: patch the installed asgiref in place.
- `asgiref_loopshare.sync`: a drop-in for ``asgiref.sync`` that patches none of it.
- `configure`: tunables (how long spawned tasks may finish, teardown bounds,
  spare worker threads started ahead, the loop factory).
- `LoopScope`: a context for lifetimes that end on another thread (adapters).
- `thread_scope` / `close_thread_scope`: the calling thread's long-lived
  `LoopScope` (opt-in: one loop per thread, shared by the requests it serves).
- `asgiref_loopshare.wsgi`: `LoopShareMiddleware`, one loop per request for any
  WSGI application; `asgiref_loopshare.flask`: the Flask extension.
- `asgiref_loopshare.django`: one shared loop per Django WSGI request.
"""

from asgiref_loopshare._compat import UnsupportedVersionError, check_versions

check_versions()

from asgiref_loopshare._core import LoopScope  # noqa: E402
from asgiref_loopshare._loop import Settings, configure, get_settings  # noqa: E402
from asgiref_loopshare._patch import install, is_installed, uninstall  # noqa: E402
from asgiref_loopshare._thread_scope import (  # noqa: E402
    close_thread_scope,
    thread_scope,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "LoopScope",
    "Settings",
    "UnsupportedVersionError",
    "__version__",
    "close_thread_scope",
    "configure",
    "get_settings",
    "install",
    "is_installed",
    "thread_scope",
    "uninstall",
]
