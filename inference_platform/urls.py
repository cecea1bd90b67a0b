"""URL configuration: admin, APIs, operations endpoints."""

from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "Inference platform"
admin.site.site_title = "Inference platform"
admin.site.index_title = "Models, keys and jobs"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("inference.urls")),
]
