from django.urls import path

from clients_example import views

urlpatterns = [
    path("use/<str:kind>/<int:number>/", views.use_view),
    path("stats/", views.stats_view),
    path("ping/", views.ping_view),
]
