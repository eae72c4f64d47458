import gc
import threading
from typing import Any

from django.http import JsonResponse
from django.urls import path

from loopshare_example import views


def gc_view(request: Any) -> JsonResponse:
    """Debug (soak runs): collect, then uncollectable objects left; Python threads."""
    collected = gc.collect()
    threads = sorted(thread.name for thread in threading.enumerate())
    return JsonResponse(
        {"collected": collected, "garbage": len(gc.garbage), "threads": threads}
    )


urlpatterns = [
    path("sync/", views.sync_view),
    path("async/", views.async_view),
    path("orm/", views.orm_view),
    path("stream/sync/", views.sync_stream),
    path("stream/async/", views.async_stream),
    path("file/", views.file_view),
    path("redis/", views.redis_view),
    path("redis/per-loop/", views.redis_view),
    path("probe/<str:probe_id>/", views.probe_view),
    path("debug/gc/", gc_view),
]
