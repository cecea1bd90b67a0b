"""Bounds on what a version may ask of the machine: its parameter count (INFERENCE_MAX_PARAMETERS,
counted from architecture_args without allocating anything) and the validation process's memory
and CPU time (INFERENCE_VALIDATION_MEMORY_BYTES, INFERENCE_VALIDATION_CPU_SECONDS: rlimits)."""

from __future__ import annotations

import copy
import json
import resource
import time

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from inference.keys import APIKey, api_key_create
from registry import services
from registry.artifacts import TooManyParameters, build_architecture, parameter_count
from registry.models import ModelVersion, RegisteredModel
from registry.validation import validate_in_subprocess
from tests.conftest import IRIS_CONFIG, safetensors_bytes, small_mlp
from tests.helpers import register

MLP = "registry.architectures.MLP"
CNN = "registry.architectures.SmallCNN"
HUGE_ARGS = {"in_features": 100_000, "hidden": [100_000], "out_features": 3}  # 10^10 parameters: 40 GB in FP32


def config(**changes) -> dict:
    cfg = copy.deepcopy(IRIS_CONFIG)
    cfg.update(changes)
    return cfg


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


@pytest.fixture
def no_validation_process(monkeypatch):
    monkeypatch.setattr(services.versions, "validate_in_subprocess",
                        lambda **kw: pytest.fail("the validation process was started"))


# --- the parameter count ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,args", [
    (MLP, {"in_features": 4, "hidden": [8], "out_features": 3}),
    (MLP, {"in_features": 7, "hidden": 5, "out_features": 2}),
    (MLP, {"in_features": 3, "hidden": [], "out_features": 1}),
    (MLP, {"in_features": 16, "hidden": [32, 64, 8], "out_features": 10}),
    (CNN, {}),
    (CNN, {"in_channels": 3, "num_classes": 5, "image_size": 32, "channels": [8, 16, 4]}),
    (CNN, {"in_channels": 1, "num_classes": 10, "image_size": 9, "channels": [6]}),
])
def test_the_counted_parameters_are_those_of_the_built_module(path, args):
    module = build_architecture(path, args)
    real = sum(t.numel() for t in [*module.parameters(), *module.buffers()])
    assert parameter_count(path, args) == real
    assert parameter_count(path, args, build=False) == real


def test_an_architecture_without_a_counter_is_counted_on_the_meta_device_only_when_building(settings):
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, "tests.helpers.SlowMLP"]
    args = {"in_features": 4, "hidden": [8], "out_features": 3, "delay": 0}
    assert parameter_count("tests.helpers.SlowMLP", args) == 4 * 8 + 8 + 8 * 3 + 3
    assert parameter_count("tests.helpers.SlowMLP", args, build=False) is None  # its __init__ is not run
    assert parameter_count("tests.helpers.SlowMLP", {**HUGE_ARGS, "delay": 0}) == 10_000_400_003


def test_a_huge_mlp_is_refused_before_it_is_built():
    before, started = peak_rss_bytes(), time.monotonic()
    with pytest.raises(TooManyParameters, match=r"10,000,400,003 parameters, over the limit of 500,000,000"):
        build_architecture(MLP, HUGE_ARGS)  # the validation process's and the serving loader's path
    assert time.monotonic() - started < 1
    assert peak_rss_bytes() - before < 50 * 2**20


@pytest.mark.django_db
def test_registering_a_huge_mlp_is_refused_quickly_without_allocating(no_validation_process):
    before, started = peak_rss_bytes(), time.monotonic()
    with pytest.raises(ValidationError) as exc:
        register(safetensors_bytes(small_mlp()), config(architecture_args=HUGE_ARGS), validate=True)
    assert exc.value.code == "too_many_parameters"
    assert "INFERENCE_MAX_PARAMETERS" in exc.value.messages[0]
    assert time.monotonic() - started < 2
    assert peak_rss_bytes() - before < 50 * 2**20  # 40 GB were asked for
    assert not RegisteredModel.objects.exists() and not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_the_registry_api_answers_400_for_a_huge_mlp(no_validation_process):
    _, key = api_key_create(name="deploy", scope=APIKey.Scope.MANAGE, rate="10000/s")
    services.model_create(name="iris")
    r = Client().post("/api/v1/models/iris/versions",
                      {"artifact": SimpleUploadedFile("m.safetensors", safetensors_bytes(small_mlp())),
                       "config": json.dumps(config(architecture_args=HUGE_ARGS))},
                      headers={"Authorization": f"Api-Key {key}"})
    assert r.status_code == 400, r.content
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and error["details"]["reason"] == "too_many_parameters"
    assert "INFERENCE_MAX_PARAMETERS" in error["message"]
    assert not ModelVersion.objects.exists()


@pytest.mark.django_db
def test_the_admin_upload_form_shows_the_parameter_limit(admin_client, settings, no_validation_process):
    from tests.test_admin import upload_form

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    form = upload_form(safetensors_bytes(small_mlp()), architecture_args=json.dumps(HUGE_ARGS))
    response = admin_client.post("/admin/registry/modelversion/add/", form)
    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.non_field_errors())
    assert "INFERENCE_MAX_PARAMETERS" in errors
    assert not ModelVersion.objects.exists()


# --- the validation process's limits ---------------------------------------------------------------------------------

# 4 -> 60,000 -> 5,000 -> 3: 300 M parameters (1.2 GB), under INFERENCE_MAX_PARAMETERS; the weights
# file holds a 4-8-3 MLP (a few hundred bytes): only building the architecture asks for the memory.
BIG_ARGS = {"in_features": 4, "hidden": [60_000, 5_000], "out_features": 3}


def test_a_validation_over_its_memory_limit_fails_with_that_reason(tmp_path, settings):
    settings.INFERENCE_VALIDATION_MEMORY_BYTES = 2**30  # a validation itself maps ~0.65 GB
    artifact = tmp_path / "weights.safetensors"
    artifact.write_bytes(safetensors_bytes(small_mlp()))
    started = time.monotonic()
    outcome = validate_in_subprocess(config=config(architecture_args=BIG_ARGS), artifact_path=str(artifact),
                                     allow_code=False)
    assert not outcome.ok
    assert outcome.error.startswith("The validation exceeded its memory limit (1,073,741,824 bytes of address "
                                    "space, INFERENCE_VALIDATION_MEMORY_BYTES)"), outcome.error
    assert time.monotonic() - started < 60


def test_the_same_validation_within_the_limit_gets_to_the_weights(tmp_path, settings):
    """The control: with room for the 1.2 GB the build succeeds and the weights are compared."""
    settings.INFERENCE_VALIDATION_MEMORY_BYTES = 4 * 2**30
    artifact = tmp_path / "weights.safetensors"
    artifact.write_bytes(safetensors_bytes(small_mlp()))
    outcome = validate_in_subprocess(config=config(architecture_args=BIG_ARGS), artifact_path=str(artifact),
                                     allow_code=False)
    assert not outcome.ok and "do not match" in outcome.error, outcome.error


def test_a_validation_over_its_cpu_time_limit_fails_with_that_reason(tmp_path, settings):
    settings.INFERENCE_VALIDATION_CPU_SECONDS = 1  # importing Django and torch alone takes ~3 s of CPU
    artifact = tmp_path / "weights.safetensors"
    artifact.write_bytes(safetensors_bytes(small_mlp()))
    outcome = validate_in_subprocess(config=config(), artifact_path=str(artifact), allow_code=False)
    assert not outcome.ok
    assert outcome.error.startswith("The validation exceeded its CPU time limit (1 s, "
                                    "INFERENCE_VALIDATION_CPU_SECONDS)"), outcome.error


def test_a_normal_validation_runs_within_the_default_limits(tmp_path, settings):
    assert settings.INFERENCE_VALIDATION_MEMORY_BYTES == 8 * 2**30
    assert settings.INFERENCE_VALIDATION_CPU_SECONDS == 120
    artifact = tmp_path / "weights.safetensors"
    artifact.write_bytes(safetensors_bytes(small_mlp()))
    outcome = validate_in_subprocess(config=config(), artifact_path=str(artifact), allow_code=False)
    assert outcome.ok, outcome.error
