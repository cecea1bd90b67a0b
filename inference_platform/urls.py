"""URL configuration: admin, APIs, operations endpoints."""

from django.contrib import admin
from django.urls import include, path

from inference.monitoring.admin import monitoring_view

admin.site.site_header = "Inference platform"
admin.site.site_title = "Inference platform"
admin.site.index_title = "Models, keys and jobs"

urlpatterns = [
    # Before the admin's own URLs (its catch-all would answer 404); staff only, like the admin.
    path("", include("inference.urls")),  # first: the predict and infer routes take the traffic
    path("admin/monitoring/", admin.site.admin_view(monitoring_view), name="admin-monitoring"),
    path("admin/", admin.site.urls),
]

handler400 = "inference.apis.errors.handler400"
handler403 = "inference.apis.errors.handler403"
handler404 = "inference.apis.errors.handler404"
handler500 = "inference.apis.errors.handler500"
