"""URLs of the serving side: the v1 API, operations endpoints, OpenAPI."""

from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from . import views
from .apis import jobs, v1, v2
from .apis import registry as registry_api
from .monitoring import views as monitoring_views

urlpatterns = [
    # The inference routes first: Django tries patterns in order, and these take the traffic. Async
    # views (these, and v2's model endpoints) are served on the web process's event loop.
    re_path(r"^api/v1/models/(?P<name>[^/]+)/predict/?$", v1.predict_latest, name="v1-predict"),
    re_path(
        r"^api/v1/models/(?P<name>[^/]+)/versions/(?P<ref>[^/]+)/predict/?$",
        v1.predict_at_version,
        name="v1-predict-version",
    ),
    re_path(r"^v2/models/(?P<name>[^/]+)/infer/?$", v2.infer, name="v2-infer"),
    re_path(r"^v2/models/(?P<name>[^/]+)/versions/(?P<ref>[^/]+)/infer/?$", v2.infer, name="v2-infer-version"),
    path("", views.index, name="index"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon),
    path("metrics", monitoring_views.metrics, name="metrics"),
    path("readyz", monitoring_views.readyz, name="readyz"),
    re_path(r"^api/v1/models/?$", registry_api.ModelCollectionView.as_view(), name="v1-models"),
    re_path(r"^api/v1/models/(?P<name>[^/]+)/?$", v1.ModelDetailView.as_view(), name="v1-model"),
    re_path(r"^api/v1/models/(?P<name>[^/]+)/jobs/?$", jobs.JobSubmitView.as_view(), name="v1-job-submit"),
    # Registry API (management keys)
    re_path(r"^api/v1/models/(?P<name>[^/]+)/versions/?$", registry_api.VersionCollectionView.as_view(),
            name="v1-versions"),
    re_path(r"^api/v1/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/?$", registry_api.VersionDetailView.as_view(),
            name="v1-version"),
    re_path(r"^api/v1/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/archive/?$",
            registry_api.VersionArchiveView.as_view(), name="v1-version-archive"),
    re_path(r"^api/v1/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/load/?$",
            registry_api.VersionLoadView.as_view(), name="v1-version-load"),
    re_path(r"^api/v1/models/(?P<name>[^/]+)/versions/(?P<version>[^/]+)/unload/?$",
            registry_api.VersionUnloadView.as_view(), name="v1-version-unload"),
    re_path(r"^api/v1/models/(?P<name>[^/]+)/aliases/(?P<alias>[^/]+)/?$", registry_api.AliasView.as_view(),
            name="v1-alias"),
    re_path(r"^api/v1/jobs/?$", jobs.JobListView.as_view(), name="v1-jobs"),
    re_path(r"^api/v1/jobs/(?P<job_id>[^/]+)/?$", jobs.JobDetailView.as_view(), name="v1-job"),
    re_path(r"^api/v1/jobs/(?P<job_id>[^/]+)/result/?$", jobs.JobResultView.as_view(), name="v1-job-result"),
    re_path(r"^api/v1/jobs/(?P<job_id>[^/]+)/cancel/?$", jobs.JobCancelView.as_view(), name="v1-job-cancel"),
    re_path(r"^api/v1/jobs/(?P<job_id>[^/]+)/retry/?$", jobs.JobRetryView.as_view(), name="v1-job-retry"),
    # Open Inference Protocol (KServe v2 / Triton HTTP)
    re_path(r"^v2/?$", v2.server_metadata, name="v2-server"),
    path("v2/health/live", v2.server_live, name="v2-live"),
    path("v2/health/ready", v2.server_ready, name="v2-ready"),
    re_path(r"^v2/models/(?P<name>[^/]+)/?$", v2.model_metadata, name="v2-model"),
    re_path(r"^v2/models/(?P<name>[^/]+)/versions/(?P<ref>[^/]+)/?$", v2.model_metadata, name="v2-model-version"),
    re_path(r"^v2/models/(?P<name>[^/]+)/ready/?$", v2.model_ready, name="v2-model-ready"),
    re_path(r"^v2/models/(?P<name>[^/]+)/versions/(?P<ref>[^/]+)/ready/?$", v2.model_ready),
    path("api/schema/", SpectacularAPIView.as_view(), name="openapi-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="openapi-schema"), name="api-docs"),
]
