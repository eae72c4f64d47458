from django.urls import path

from channels_example import views

urlpatterns = [
    path("<str:alias>/sync/<int:number>/", views.round_trip_sync),
    path("<str:alias>/async/<int:number>/", views.round_trip_async),
    path("ping/", views.ping_view),
]
