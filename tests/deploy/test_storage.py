"""Shared storage: artifacts and job results go through Django's storage API only, so a
network filesystem or an S3 bucket works by settings alone; and every process that loads
an artifact checks its sha256, so a file changed on the shared storage is refused.

The S3 tests use moto's in-process S3 (boto3 talks to it as to AWS); the filesystem
test starts a real web server on the test database, a serving process of its own.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import numpy as np
import pytest
from django.conf import settings as django_settings
from django.test import Client
from moto import mock_aws

from inference.jobs.models import InferenceJob
from inference.jobs.selectors import job_predictions
from inference.pool import reset_pool
from inference.services.jobs import job_run, job_submit
from tests.conftest import small_mlp
from tests.inference.support import ROWS, error_of, forward, make_key, ready
from tests.processes import WebServer

ROOT = Path(django_settings.BASE_DIR)
BUCKET = "inference-test-artifacts"


def _settings_in_child(**env: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh process with `env`; print the default storage and media root."""
    code = (
        "import django, json; django.setup();"
        "from django.conf import settings;"
        "print(json.dumps({'storage': settings.STORAGES['default'], 'media_root': str(settings.MEDIA_ROOT)}))"
    )
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    child_env.update(DJANGO_SETTINGS_MODULE="inference_platform.settings", **env)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=child_env, capture_output=True, text=True,
                          timeout=60)


def test_inference_storage_s3_selects_django_storages_with_the_bucket_from_the_environment(tmp_path):
    out = _settings_in_child(INFERENCE_DATA_DIR=str(tmp_path), INFERENCE_STORAGE="s3", INFERENCE_S3_BUCKET="models",
                             INFERENCE_S3_PREFIX="prod", INFERENCE_S3_ENDPOINT_URL="http://minio:9000")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["storage"]["BACKEND"] == "storages.backends.s3.S3Storage"
    options = seen["storage"]["OPTIONS"]
    assert (options["bucket_name"], options["location"], options["endpoint_url"]) == ("models", "prod", "http://minio:9000")
    assert options["file_overwrite"] is False and options["default_acl"] is None


def test_the_filesystem_storage_is_the_default_and_its_root_can_be_a_shared_mount(tmp_path):
    out = _settings_in_child(INFERENCE_DATA_DIR=str(tmp_path), INFERENCE_MEDIA_ROOT="/mnt/nfs/inference")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["storage"]["BACKEND"] == "django.core.files.storage.FileSystemStorage"
    assert seen["media_root"] == "/mnt/nfs/inference"


@pytest.mark.parametrize("env, message", [
    ({"INFERENCE_STORAGE": "s3"}, "INFERENCE_S3_BUCKET"),
    ({"INFERENCE_STORAGE": "nfs"}, "'filesystem' or 's3'"),
])
def test_a_storage_misconfiguration_stops_the_process_with_the_reason(tmp_path, env, message):
    out = _settings_in_child(INFERENCE_DATA_DIR=str(tmp_path), **env)
    assert out.returncode != 0
    assert "ImproperlyConfigured" in out.stderr and message in out.stderr


# --- S3 (moto) ------------------------------------------------------------------------------------


@pytest.fixture
def s3(settings, monkeypatch):
    """The default storage is an S3 bucket (moto's, in this process)."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        settings.STORAGES = {
            **settings.STORAGES,
            "default": {"BACKEND": "storages.backends.s3.S3Storage",
                        "OPTIONS": {"bucket_name": BUCKET, "location": "platform", "region_name": "us-east-1",
                                    "default_acl": None, "file_overwrite": False}},
        }
        reset_pool()
        yield client
        reset_pool()


def _objects(client) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


@pytest.mark.django_db
def test_artifacts_and_job_files_live_in_the_bucket_and_serve_from_it(s3, settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    module = small_mlp(0)
    version = ready(module, model_name="iris", aliases=["production"])
    assert not Path(settings.MEDIA_ROOT).exists()  # nothing written to a local directory
    stored = _objects(s3)
    assert f"platform/{version.artifact.name}" in stored
    key = make_key("s3", rate="10000/s")
    r = Client().post("/api/v1/models/iris/predict", json.dumps({"instances": ROWS}), content_type="application/json",
                      HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert r.status_code == 200, r.content
    np.testing.assert_allclose(r.json()["predictions"], forward(module, ROWS), rtol=1e-5, atol=1e-6)
    # A job: its input and result files are objects in the bucket too; a worker reads them back.
    job, _ = job_submit(version=version, instances=ROWS)
    assert job_run(job.pk) == "succeeded"
    job = InferenceJob.objects.get(pk=job.pk)
    stored = _objects(s3)
    assert f"platform/{job.input_file.name}" in stored and f"platform/{job.result_file.name}" in stored
    np.testing.assert_allclose(job_predictions(job), forward(module, ROWS), rtol=1e-5, atol=1e-6)
    upload = io.BytesIO(b"".join(json.dumps(r).encode() + b"\n" for r in ROWS))
    upload.name = "rows.jsonl"
    file_job, _ = job_submit(version=version, upload=upload, input_format="jsonl")
    assert job_run(file_job.pk) == "succeeded"
    np.testing.assert_allclose(job_predictions(InferenceJob.objects.get(pk=file_job.pk)), forward(module, ROWS),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.django_db
def test_an_artifact_changed_in_the_bucket_is_refused_with_a_503(s3, settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    version = ready(small_mlp(0), model_name="iris", aliases=["production"])
    # Someone with write access to the bucket swaps the weights for other (valid) weights.
    from tests.conftest import safetensors_bytes

    s3.put_object(Bucket=BUCKET, Key=f"platform/{version.artifact.name}", Body=safetensors_bytes(small_mlp(7)))
    key = make_key("s3", rate="10000/s")
    r = Client().post("/api/v1/models/iris/predict", json.dumps({"instances": ROWS}), content_type="application/json",
                      HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert r.status_code == 503 and int(r["Retry-After"]) >= 1
    error = error_of(r)
    assert error["code"] == "model_not_ready"
    assert "sha256 mismatch" in error["message"] and version.sha256 in error["message"]
    # A worker refuses it too: the job does not produce predictions from the swapped weights.
    job, _ = job_submit(version=version, instances=ROWS)
    job_run(job.pk)
    job = InferenceJob.objects.get(pk=job.pk)
    assert job.status != InferenceJob.Status.SUCCEEDED and not job.result_file
    assert "sha256 mismatch" in job.error


# --- a network filesystem: a separate serving process -------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_serving_process_refuses_an_artifact_tampered_on_shared_storage_with_a_clear_503(settings, tmp_path):
    """The web process is a web server of its own; the artifact directory is shared with it (as over
    NFS). A file changed after registration is refused when that process loads it; the other
    models it serves are unaffected."""
    settings.MEDIA_ROOT = tmp_path / "media"
    tampered = ready(small_mlp(0), model_name="tampered", aliases=["production"])
    intact_module = small_mlp(1)
    ready(intact_module, model_name="intact", aliases=["production"])
    path = Path(settings.MEDIA_ROOT) / tampered.artifact.name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(data))
    key = make_key("nfs", rate="10000/s")
    web = WebServer(settings.MEDIA_ROOT, env={"WEB_THREADS": "4"})
    try:
        web.start()

        def predict(model: str) -> tuple[int, dict, dict]:
            request = urllib.request.Request(
                f"{web.url}/api/v1/models/{model}/predict", data=json.dumps({"instances": ROWS}).encode(),
                headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, response.headers, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers, json.loads(exc.read())

        status, headers, body = predict("tampered")
        assert status == 503, body
        assert int(headers["Retry-After"]) >= 1
        assert body["error"]["code"] == "model_not_ready"
        assert "sha256 mismatch" in body["error"]["message"] and tampered.sha256 in body["error"]["message"]
        status, _, body = predict("intact")
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"], forward(intact_module, ROWS), rtol=1e-5, atol=1e-6)
    finally:
        web.stop()
