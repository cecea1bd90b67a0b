"""Admin actions need the model's "change" permission; re-validation honours the code-artifact switch.

A staff user who may only view versions or jobs sees none of their actions, and a POST of one
(forged, or from a page loaded before the permission was taken away) changes nothing.
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.urls import reverse

from inference.jobs.models import InferenceJob
from registry import services
from registry.models import ModelVersion
from registry.validation import ValidationOutcome
from tests.conftest import IRIS_CONFIG, safetensors_bytes, small_mlp, torchscript_bytes
from tests.helpers import ready_version

pytestmark = pytest.mark.django_db

VERSIONS = reverse("admin:registry_modelversion_changelist")
JOBS = reverse("admin:inference_inferencejob_changelist")


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(client, django_user_model):
    """A client logged in as a staff user holding exactly the given permission codenames."""

    def login(*codenames: str):
        user = django_user_model.objects.create_user(f"staff-{len(codenames)}-{'-'.join(codenames)}"[:150],
                                                     password="pw-staff-12345", is_staff=True)
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
        assert user.user_permissions.count() == len(codenames)
        client.force_login(user)
        return client

    return login


@pytest.fixture
def subprocess_calls(monkeypatch):
    """Record validations that would start the validation process (and pass them)."""
    calls: list[dict] = []

    def record(**kwargs):
        calls.append(kwargs)
        return ValidationOutcome(True, details={})

    monkeypatch.setattr(services.versions, "validate_in_subprocess", record)
    return calls


def offered_actions(response) -> set[str]:
    form = response.context["action_form"]  # None when the user may run no action at all
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


def version_state(version: ModelVersion) -> tuple:
    version.refresh_from_db()
    return version.status, version.status_error, version.validated_at, version.archived


def test_a_view_only_user_cannot_revalidate_or_archive_versions(staff, subprocess_calls):
    version = ready_version(safetensors_bytes(small_mlp()), dict(IRIS_CONFIG))  # no alias: archiving would work
    before = version_state(version)
    viewer = staff("view_modelversion")

    page = viewer.get(VERSIONS)
    assert page.status_code == 200
    assert offered_actions(page) == set()

    for action in ("revalidate", "archive"):
        response = viewer.post(VERSIONS, {"action": action, "_selected_action": [version.pk]}, follow=True)
        assert response.status_code == 200
        assert not [str(m) for m in get_messages(response.wsgi_request)]  # the action did not run
    assert version_state(version) == before
    assert subprocess_calls == []


def test_a_user_who_may_change_versions_can_run_their_actions(staff, subprocess_calls):
    version = ready_version(safetensors_bytes(small_mlp()), dict(IRIS_CONFIG))
    editor = staff("view_modelversion", "change_modelversion")

    assert offered_actions(editor.get(VERSIONS)) == {"revalidate", "archive", "load", "unload"}
    editor.post(VERSIONS, {"action": "revalidate", "_selected_action": [version.pk]})
    assert len(subprocess_calls) == 1
    editor.post(VERSIONS, {"action": "archive", "_selected_action": [version.pk]})
    assert version_state(version)[3] is True


@pytest.fixture
def jobs(monkeypatch):
    """A queued job and a failed one, of a ready version."""
    from inference.services.jobs import job_submit

    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **k: None)
    version = ready_version(safetensors_bytes(small_mlp()), dict(IRIS_CONFIG))
    queued, _ = job_submit(version=version, instances=[[1, 2, 3, 4]])
    failed, _ = job_submit(version=version, instances=[[4, 3, 2, 1]])
    InferenceJob.objects.filter(pk=failed.pk).update(status=InferenceJob.Status.FAILED, attempts=3, error="boom")
    return queued, failed


def test_a_view_only_user_cannot_cancel_or_retry_jobs(staff, jobs):
    queued, failed = jobs
    viewer = staff("view_inferencejob")

    page = viewer.get(JOBS)
    assert page.status_code == 200
    assert offered_actions(page) == set()

    viewer.post(JOBS, {"action": "cancel_jobs", "_selected_action": [str(queued.pk)]})
    viewer.post(JOBS, {"action": "retry_jobs", "_selected_action": [str(failed.pk)]})
    queued.refresh_from_db()
    failed.refresh_from_db()
    assert (queued.status, queued.cancel_requested) == (InferenceJob.Status.QUEUED, False)
    assert (failed.status, failed.attempts, failed.error) == (InferenceJob.Status.FAILED, 3, "boom")


def test_a_user_who_may_change_jobs_can_cancel_and_retry(staff, jobs):
    queued, failed = jobs
    editor = staff("view_inferencejob", "change_inferencejob")

    assert offered_actions(editor.get(JOBS)) == {"cancel_jobs", "retry_jobs"}
    editor.post(JOBS, {"action": "cancel_jobs", "_selected_action": [str(queued.pk)]})
    editor.post(JOBS, {"action": "retry_jobs", "_selected_action": [str(failed.pk)]})
    queued.refresh_from_db()
    failed.refresh_from_db()
    assert queued.status == InferenceJob.Status.CANCELLED
    assert (failed.status, failed.attempts) == (InferenceJob.Status.QUEUED, 0)


def test_revalidating_a_code_artifact_with_the_switch_off_fails_without_loading_it(admin_client, settings,
                                                                                   subprocess_calls):
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = True
    version = ready_version(torchscript_bytes(small_mlp()), {**IRIS_CONFIG, "format": "torchscript",
                                                             "architecture": "", "architecture_args": {}},
                            may_upload_code=True)
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = False  # switched off since the upload

    response = admin_client.post(VERSIONS, {"action": "revalidate", "_selected_action": [version.pk]}, follow=True)

    assert subprocess_calls == []  # nothing from the file was loaded
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.FAILED
    assert "INFERENCE_ALLOW_CODE_ARTIFACTS" in version.status_error and "nothing was loaded" in version.status_error
    assert any("INFERENCE_ALLOW_CODE_ARTIFACTS" in str(m) for m in get_messages(response.wsgi_request))

    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = True  # switched on again: validated as before
    admin_client.post(VERSIONS, {"action": "revalidate", "_selected_action": [version.pk]})
    assert [c["allow_code"] for c in subprocess_calls] == [True]
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.READY


def test_load_and_unload_actions_pin_a_version_and_need_the_change_permission(staff):
    version = ready_version(safetensors_bytes(small_mlp()), dict(IRIS_CONFIG))
    aliased = ready_version(safetensors_bytes(small_mlp(1)), dict(IRIS_CONFIG))
    services.alias_set(model=aliased.model, alias="production", version=aliased)
    viewer = staff("view_modelversion")
    response = viewer.post(VERSIONS, {"action": "load", "_selected_action": [version.pk]}, follow=True)
    assert response.status_code == 200
    version.refresh_from_db()
    assert version.pinned is False  # a view-only user's forged POST changes nothing

    editor = staff("view_modelversion", "change_modelversion")
    assert {"load", "unload"} <= offered_actions(editor.get(VERSIONS))
    editor.post(VERSIONS, {"action": "load", "_selected_action": [version.pk]}, follow=True)
    version.refresh_from_db()
    assert version.pinned is True
    response = editor.post(VERSIONS, {"action": "unload", "_selected_action": [version.pk, aliased.pk]}, follow=True)
    shown = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("unloaded from every process" in m for m in shown), shown
    assert any("production" in m and "move the alias" in m for m in shown), shown
    version.refresh_from_db()
    assert version.pinned is False
