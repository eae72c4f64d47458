from django.urls import path

from loopshare_example import views

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
]
