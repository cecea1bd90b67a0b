"""schemathesis against the platform's own OpenAPI schema: every operation, with valid keys.

Properties, for every operation of ``/api/schema/`` and every generated request (valid and
invalid): no server error (a 5xx other than a 503 that the operation documents), every
status returned is documented for its operation, content types and bodies match their
documented schemas, schema-invalid requests are refused with a 4xx, and a request without
a key is a 401.

The requests go in-process to the WSGI application (no live server thread): each example
runs inside the test's transaction, on the same database connection, so the run is the
same on SQLite and PostgreSQL. ``derandomize=True``: CI sees the same examples every run.

``positive_data_acceptance`` (a schema-valid request must not be a 400) is applied to the
operations whose schema says everything the server checks; it is left out for the ones
whose valid bodies depend on the model or config in the database (predict, jobs, version
uploads): an ``instances`` list that is valid JSON for the schema is a 400 when its shape
does not fit the model, and the schema cannot know every model's shape.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import (
    CheckContext,
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from inference.keys import APIKey
from tests.conftest import small_mlp
from tests.inference.support import make_key, ready


def _schema_dict() -> dict:
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


schema = schemathesis.openapi.from_dict(_schema_dict())
schema.app = get_wsgi_application()

# Operations of the registry API: a management key drives them (docs/registry-api.md).
MANAGE_OPERATIONS = {
    "models_create", "models_versions_create", "models_versions_retrieve", "models_versions_archive",
    "models_aliases_retrieve", "models_aliases_update", "models_aliases_destroy",
}
# Operations whose valid bodies depend on what is registered (the model's input shape, a config).
MODEL_DEPENDENT = {"models_predict", "models_versions_predict", "jobs_submit", "models_versions_create"}


def no_undocumented_server_error(ctx: CheckContext, response, case) -> bool | None:
    """No 5xx, except a 503 (not ready, overloaded) where the operation documents it."""
    status = response.status_code
    if status < 500:
        return None
    documented = set(case.operation.definition.raw.get("responses", {}))
    assert status == 503 and "503" in documented, (
        f"{case.operation.label}: {status} {response.content[:500]!r}"
    )
    return None


BASE_CHECKS = [no_undocumented_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance, response_headers_conformance, negative_data_rejection, ignored_auth]


@pytest.fixture
def keys(db, settings) -> dict[str, str]:
    settings.ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]
    ready(small_mlp(0), model_name="iris", aliases=["production"])
    ready(small_mlp(1), model_name="iris", aliases=["staging"])
    return {
        APIKey.Scope.INFER: make_key("schemathesis-infer", rate="1000000/s"),
        APIKey.Scope.MANAGE: make_key("schemathesis-manage", scope=APIKey.Scope.MANAGE, rate="1000000/s"),
    }


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    """Like Django's test client: the handler must not close the connection holding the test's
    transaction at the start and end of each request."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _no_background_tasks(monkeypatch):
    """An accepted upload or job queues a task after commit; nothing commits here, but never queue one."""
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: None)


@schema.parametrize()
@hypothesis_settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case, keys):
    operation_id = case.operation.definition.raw.get("operationId", "")
    scope = APIKey.Scope.MANAGE if operation_id in MANAGE_OPERATIONS else APIKey.Scope.INFER
    checks = list(BASE_CHECKS)
    if operation_id not in MODEL_DEPENDENT:
        checks.append(positive_data_acceptance)
    case.call_and_validate(headers={"Authorization": f"Api-Key {keys[scope]}"}, checks=checks)
