"""URLs of the serving side (APIs, operations endpoints)."""

from django.urls import path

from . import views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
]
