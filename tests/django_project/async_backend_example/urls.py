from django.urls import path

from async_backend_example import views

urlpatterns = [
    path("query/<int:number>/", views.query_view),
    path("ping/", views.ping_view),
]
