from __future__ import annotations

from django.urls import path

from benchapp import views

urlpatterns = [
    path("sync/", views.sync_view),
    path("async/", views.async_view),
    path("async/connection/", views.async_connection_view),
    path("fanout/", views.fanout_view),
    path("redis/sync/", views.redis_sync_view),
    path("redis/fresh/", views.redis_fresh_view),
    path("redis/async/", views.redis_async_view),
]
