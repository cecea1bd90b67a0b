"""validate_in_subprocess: validation really runs in another process, and its crashes stay there.

The child process re-reads settings from the environment, so test architectures are
allowlisted for it through INFERENCE_EXTRA_ARCHITECTURES (and for this process through
the `settings` fixture). They live in tests/helpers.py, which the child imports by dotted
path from BASE_DIR.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from django.core.exceptions import ValidationError

from registry.models import ModelVersion, RegisteredModel
from registry.validation import validate_in_subprocess, validate_model_only
from tests.conftest import IRIS_CONFIG, safetensors_bytes, small_mlp, torchscript_bytes
from tests.helpers import register, stored_files

HELPER_ARCHS = ["tests.helpers.PidMLP", "tests.helpers.SigkillMLP", "tests.helpers.ExitMLP", "tests.helpers.HangingMLP"]


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(safetensors_bytes(small_mlp()))
    return path


@pytest.fixture
def helper_archs(monkeypatch, settings) -> None:
    """Allowlist the helper architectures here and in the validation child."""
    monkeypatch.setenv("INFERENCE_EXTRA_ARCHITECTURES", ",".join(HELPER_ARCHS))
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, *HELPER_ARCHS]


def config(**changes) -> dict:
    cfg = copy.deepcopy(IRIS_CONFIG)
    cfg.update(changes)
    return cfg


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- The real validator ---------------------------------------------------------------------


def test_real_validator_runs_zeros_through_the_model(artifact):
    outcome = validate_in_subprocess(config=config(), artifact_path=str(artifact), allow_code=False)
    assert outcome.ok, outcome.error
    assert outcome.error == ""
    assert outcome.details["input"] == "zeros"
    with torch.inference_mode():
        expected = small_mlp()(torch.zeros(1, 4))[0].tolist()
    assert outcome.details["prediction"] == pytest.approx(expected, abs=1e-6)


def test_real_validator_runs_the_example_through_pipeline_and_model(artifact):
    example = [5.1, 3.5, 1.4, 0.2]
    outcome = validate_in_subprocess(
        config=config(example=example, postprocess=[{"step": "softmax"}]), artifact_path=str(artifact), allow_code=False
    )
    assert outcome.ok, outcome.error
    assert outcome.details["input"] == "example"
    with torch.inference_mode():
        expected = torch.softmax(small_mlp()(torch.tensor([example])), dim=-1)[0].tolist()
    assert outcome.details["prediction"] == pytest.approx(expected, abs=1e-5)


def test_python_errors_in_the_child_come_back_as_failures(tmp_path):
    outcome = validate_in_subprocess(config=config(), artifact_path=str(tmp_path / "absent.safetensors"), allow_code=False)
    assert not outcome.ok
    assert "absent.safetensors" in outcome.error


def test_allow_code_travels_with_the_request(tmp_path, monkeypatch):
    """The child decides code artifacts from the request, not from its own settings."""
    path = tmp_path / "model.pt"
    path.write_bytes(torchscript_bytes(small_mlp()))
    cfg = config(format="torchscript")
    del cfg["architecture"], cfg["architecture_args"]
    monkeypatch.setenv("INFERENCE_ALLOW_CODE_ARTIFACTS", "true")  # the child's own settings allow code
    refused = validate_in_subprocess(config=cfg, artifact_path=str(path), allow_code=False)
    assert not refused.ok
    assert "INFERENCE_ALLOW_CODE_ARTIFACTS" in refused.error
    # (allow_code=True through the child: test_services.test_code_formats_accepted_when_both_allow)


def test_registry_fallback_validator_in_process(artifact):
    details = validate_model_only(config=config(), artifact_path=str(artifact), allow_code=False)
    assert details == {"output_shape": [1, 3]}


# --- Another process ------------------------------------------------------------------------------


def test_validation_runs_in_another_process(artifact, helper_archs, tmp_path):
    pid_file = tmp_path / "pid"
    cfg = config(
        architecture="tests.helpers.PidMLP",
        architecture_args={**IRIS_CONFIG["architecture_args"], "pid_file": str(pid_file)},
    )
    outcome = validate_in_subprocess(config=cfg, artifact_path=str(artifact), allow_code=False)
    assert outcome.ok, outcome.error
    child = int(pid_file.read_text())
    assert child != os.getpid()
    assert not pid_alive(child)  # it ended with its work


def test_helper_architectures_are_not_allowlisted_without_the_environment(artifact, tmp_path):
    pid_file = tmp_path / "pid"
    cfg = config(
        architecture="tests.helpers.PidMLP",
        architecture_args={**IRIS_CONFIG["architecture_args"], "pid_file": str(pid_file)},
    )
    outcome = validate_in_subprocess(config=cfg, artifact_path=str(artifact), allow_code=False)
    assert not outcome.ok
    assert "allowlist" in outcome.error
    assert not pid_file.exists()


# --- Crashes and hangs stay in the child ----------------------------------------------------------


def test_a_child_killed_by_a_signal(artifact, helper_archs):
    outcome = validate_in_subprocess(
        config=config(architecture="tests.helpers.SigkillMLP"), artifact_path=str(artifact), allow_code=False
    )
    assert not outcome.ok
    assert "SIGKILL" in outcome.error
    assert "killed by signal" in outcome.error


def test_a_child_that_exits_without_a_result(artifact, helper_archs):
    outcome = validate_in_subprocess(
        config=config(architecture="tests.helpers.ExitMLP"), artifact_path=str(artifact), allow_code=False
    )
    assert not outcome.ok
    assert "exited with code 3" in outcome.error


def test_a_child_that_hangs_is_stopped(artifact, helper_archs):
    outcome = validate_in_subprocess(
        config=config(architecture="tests.helpers.HangingMLP"), artifact_path=str(artifact), allow_code=False,
        timeout=2,
    )
    assert not outcome.ok
    assert "did not finish within 2 s" in outcome.error


@pytest.mark.django_db
def test_a_crashing_artifact_registers_nothing(helper_archs, settings):
    with pytest.raises(ValidationError) as exc:
        register(safetensors_bytes(small_mlp()), config(architecture="tests.helpers.SigkillMLP"))
    assert "SIGKILL" in " ".join(exc.value.messages)
    assert ModelVersion.objects.count() == 0
    assert RegisteredModel.objects.count() == 0
    assert stored_files(settings.MEDIA_ROOT) == []
