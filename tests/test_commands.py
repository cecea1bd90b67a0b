"""Operator commands: register_model, create_api_key, bootstrap_demo."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import sqlite3
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from inference.keys import APIKey
from registry.models import AliasEvent, ModelAlias, ModelVersion, RegisteredModel
from tests.conftest import IRIS_CONFIG, safetensors_bytes, small_mlp, torchscript_bytes
from tests.helpers import evil_torch_save, stored_files

SERVICE_VARS = ("DATABASE_URL", "REDIS_URL", "INFERENCE_BROKER", "DJANGO_SECRET_KEY", "DJANGO_DEBUG")


def embedded_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env["INFERENCE_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def run_register(*args: str) -> dict:
    out = io.StringIO()
    call_command("register_model", *args, stdout=out)
    return json.loads(out.getvalue().strip().splitlines()[-1])


# --- register_model -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_register_model_prints_json_and_registers(write_artifact, iris_config):
    weights = safetensors_bytes(small_mlp())
    artifact, cfg = write_artifact(weights, iris_config, name="iris.safetensors")
    result = run_register(
        "--name", "iris", "--artifact", str(artifact), "--config", str(cfg), "--alias", "production,staging",
        "--task", "classification",
    )
    assert result == {
        "model": "iris",
        "version": 1,
        "status": "ready",
        "sha256": hashlib.sha256(weights).hexdigest(),
        "aliases": ["production", "staging"],
    }
    version = ModelVersion.objects.get(model__name="iris", version=1)
    assert version.status == ModelVersion.Status.READY
    assert version.model.task == "classification"
    assert Path(version.artifact.path).read_bytes() == weights
    assert set(ModelAlias.objects.filter(model=version.model).values_list("name", flat=True)) == {"production", "staging"}
    assert set(AliasEvent.objects.values_list("actor", flat=True)) == {"system"}

    # the next call registers v2 and moves the alias
    artifact2, _ = write_artifact(safetensors_bytes(small_mlp(seed=1)), name="iris2.safetensors")
    second = run_register("--name", "iris", "--artifact", str(artifact2), "--config", str(cfg), "--alias", "production")
    assert (second["version"], second["status"]) == (2, "ready")
    assert ModelAlias.objects.get(model=version.model, name="production").version.version == 2
    assert ModelAlias.objects.get(model=version.model, name="staging").version.version == 1


@pytest.mark.django_db
def test_register_model_torchscript_when_code_artifacts_are_on(write_artifact, iris_config, settings):
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = True
    cfg = {k: v for k, v in iris_config.items() if k not in ("architecture", "architecture_args")}
    cfg["format"] = "torchscript"
    artifact, cfg_path = write_artifact(torchscript_bytes(small_mlp()), cfg, name="iris.pt")
    result = run_register("--name", "iris-ts", "--artifact", str(artifact), "--config", str(cfg_path))
    assert result["status"] == "ready"


def _corrupt_safetensors() -> bytes:
    data = safetensors_bytes(small_mlp())
    return data[: len(data) // 2]


def _cfg(**changes):
    def build(cfg: dict) -> dict:
        cfg = json.loads(json.dumps(cfg))
        for key, value in changes.items():
            if callable(value):
                value(cfg)
            else:
                cfg[key] = value
        return cfg

    return build


def _set_input(key: str, value):
    def change(cfg: dict) -> None:
        cfg["inputs"][0][key] = value

    return change


def _code_config(cfg: dict) -> None:
    cfg["format"] = "torchscript"
    del cfg["architecture"], cfg["architecture_args"]


BAD_CASES = {
    # name: (artifact bytes or None, config builder or raw text, expected words in the error)
    "unknown-dtype": (None, _cfg(_=_set_input("datatype", "FLOAT32")), ["inputs[0].datatype", "FLOAT32"]),
    "negative-dim": (None, _cfg(_=_set_input("shape", [-4])), ["inputs[0].shape[0]"]),
    "zero-dim": (None, _cfg(_=_set_input("shape", [0])), ["inputs[0].shape[0]"]),
    "unknown-key": (None, _cfg(labels=["a"]), ["unknown keys", "labels"]),
    "no-architecture": (None, _cfg(architecture=""), ["architecture"]),
    "architecture-not-allowlisted": (None, _cfg(architecture="torch.nn.Linear"), ["allowlist", "torch.nn.Linear"]),
    "unknown-hardware": (None, _cfg(hardware="tpu"), ["hardware", "tpu"]),
    "bad-batching": (None, _cfg(batching={"max_batch_size": 0}), ["batching.max_batch_size"]),
    "torchscript-while-code-is-off": (
        torchscript_bytes(small_mlp()), _cfg(_=_code_config), ["INFERENCE_ALLOW_CODE_ARTIFACTS"]
    ),
    "malformed-json": (None, '{"format": "safetensors", ', ["not valid JSON"]),
    "config-not-an-object": (None, "[1, 2, 3]", ["JSON object"]),
    "empty-artifact": (b"", _cfg(), ["empty"]),
    "corrupt-safetensors": (_corrupt_safetensors(), _cfg(), ["Validation failed", "safetensors"]),
    "pickle-renamed-safetensors": (
        pickle.dumps(small_mlp().state_dict(), protocol=4), _cfg(), ["Not a safetensors file", "pickle"]
    ),
    "key-mismatch": (
        None, _cfg(architecture_args={"in_features": 4, "hidden": [8, 8], "out_features": 3}),
        ["missing keys", "4.weight"],
    ),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(BAD_CASES))
def test_register_model_bad_input_registers_nothing(case, tmp_path):
    data, config, expected = BAD_CASES[case]
    artifact = tmp_path / "model.safetensors"
    artifact.write_bytes(safetensors_bytes(small_mlp()) if data is None else data)
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(config if isinstance(config, str) else json.dumps(config(IRIS_CONFIG)))
    out = io.StringIO()
    with pytest.raises(CommandError) as exc:
        call_command("register_model", "--name", "iris", "--artifact", str(artifact), "--config", str(cfg_path),
                     "--alias", "production", stdout=out)
    message = str(exc.value)
    for word in expected:
        assert word in message, message
    assert out.getvalue() == ""
    assert ModelVersion.objects.count() == 0
    assert ModelAlias.objects.count() == 0
    assert RegisteredModel.objects.count() == 0
    assert stored_files(django_settings.MEDIA_ROOT) == []


@pytest.mark.django_db
def test_register_model_missing_files(tmp_path, write_artifact, iris_config):
    artifact, cfg = write_artifact(safetensors_bytes(small_mlp()), iris_config)
    with pytest.raises(CommandError, match="Artifact file not found"):
        call_command("register_model", "--name", "iris", "--artifact", str(tmp_path / "nope.safetensors"),
                     "--config", str(cfg))
    with pytest.raises(CommandError, match="Config file not found"):
        call_command("register_model", "--name", "iris", "--artifact", str(artifact),
                     "--config", str(tmp_path / "nope.json"))
    with pytest.raises(CommandError):
        call_command("register_model", "--name", "iris", "--artifact", str(artifact))  # --config is required
    assert ModelVersion.objects.count() == 0


@pytest.mark.django_db
def test_register_model_refuses_a_crafted_pickle_without_running_it(tmp_path, write_artifact, iris_config):
    marker = tmp_path / "pwned"
    iris_config["format"] = "state_dict"
    artifact, cfg = write_artifact(evil_torch_save(marker, "system"), iris_config, name="evil.pt")
    with pytest.raises(CommandError, match="Validation failed"):
        call_command("register_model", "--name", "iris", "--artifact", str(artifact), "--config", str(cfg))
    assert not marker.exists()
    assert ModelVersion.objects.count() == 0


def test_register_model_as_real_processes(tmp_path, write_artifact, iris_config):
    """The command from a shell: JSON on stdout, a non-zero exit for a bad artifact, and
    two registrations at once against the embedded SQLite database get v1 and v2."""
    data_dir = tmp_path / "data"
    env = embedded_env(data_dir)
    manage = [sys.executable, str(django_settings.BASE_DIR / "manage.py")]
    cwd = django_settings.BASE_DIR
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, cwd=cwd, check=True, capture_output=True, timeout=120)

    weights = safetensors_bytes(small_mlp())
    artifact, cfg = write_artifact(weights, iris_config, name="iris.safetensors")
    register = [*manage, "register_model", "--name", "iris", "--artifact", str(artifact), "--config", str(cfg)]
    procs = [
        subprocess.Popen(register, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sorted(r["version"] for r in results) == [1, 2]
    assert {(r["model"], r["status"], r["sha256"]) for r in results} == {
        ("iris", "ready", hashlib.sha256(weights).hexdigest())
    }

    bad, _ = write_artifact(_corrupt_safetensors(), name="bad.safetensors")
    proc = subprocess.run(
        [*manage, "register_model", "--name", "iris", "--artifact", str(bad), "--config", str(cfg)],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "safetensors" in proc.stderr
    assert proc.stdout.strip() == ""

    with sqlite3.connect(data_dir / "db.sqlite3") as db:
        rows = db.execute(
            "SELECT v.version, v.status FROM registry_modelversion v JOIN registry_registeredmodel m "
            "ON m.id = v.model_id WHERE m.name = 'iris' ORDER BY v.version"
        ).fetchall()
    assert rows == [(1, "ready"), (2, "ready")]
    assert len(list((data_dir / "media" / "artifacts" / "iris").iterdir())) == 2


# --- create_api_key ------------------------------------------------------------------------------


def create_key(*args: str) -> tuple[str, str]:
    out = io.StringIO()
    call_command("create_api_key", *args, stdout=out)
    lines = out.getvalue().strip().splitlines()
    return lines[-1], "\n".join(lines[:-1])


@pytest.mark.django_db
def test_create_api_key_prints_a_working_key_last():
    plain, text = create_key("--name", "ci")
    key = APIKey.objects.get_from_key(plain)
    assert key.name == "ci"
    assert key.is_valid(plain)
    assert APIKey.objects.is_valid(plain)
    assert not APIKey.objects.is_valid(plain[:-1] + ("x" if plain[-1] != "x" else "y"))
    assert key.scope == APIKey.Scope.INFER
    assert key.rate == ""
    assert key.expiry_date is None
    assert list(key.allowed_models.all()) == []
    assert key.prefix in text and plain not in text


@pytest.mark.django_db
def test_create_api_key_options(weights_models):
    expires = (timezone.now() + timedelta(days=30)).date().isoformat()
    plain, _ = create_key("--name", "partner", "--models", "iris, wine", "--rate", "100/s", "--expires", expires,
                          "--scope", "manage")
    key = APIKey.objects.get_from_key(plain)
    assert sorted(key.allowed_models.values_list("name", flat=True)) == ["iris", "wine"]
    assert key.rate == "100/s"
    assert key.scope == APIKey.Scope.MANAGE
    assert key.expiry_date.date().isoformat() == expires
    assert not key.has_expired


@pytest.fixture
def weights_models(db):
    return [RegisteredModel.objects.create(name=n) for n in ("iris", "wine", "digits")]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--expires", "2001-01-01"], "past"),
        (["--expires", "next tuesday"], "not a date"),
        (["--models", "iris,ghost"], "ghost"),
        (["--rate", "lots"], "rate"),
        (["--rate", "0/s"], "rate"),
    ],
)
def test_create_api_key_refuses_bad_options(args, expected, weights_models):
    with pytest.raises(CommandError) as exc:
        call_command("create_api_key", "--name", "bad", *args, stdout=io.StringIO())
    assert expected in str(exc.value)
    assert APIKey.objects.count() == 0


@pytest.mark.django_db
def test_create_api_key_unknown_scope():
    with pytest.raises(CommandError):
        call_command("create_api_key", "--name", "bad", "--scope", "root", stdout=io.StringIO())
    assert APIKey.objects.count() == 0


@pytest.mark.django_db
def test_api_key_is_stored_hashed():
    plain, _ = create_key("--name", "secretive")
    prefix, _, secret = plain.partition(".")
    assert secret
    table = APIKey._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 - a fixed table name
        rows = cursor.fetchall()
    assert len(rows) == 1
    for value in rows[0]:
        assert secret not in str(value)
        assert plain not in str(value)
    key = APIKey.objects.get(prefix=prefix)
    assert key.hashed_key and key.hashed_key != secret


@pytest.mark.django_db
def test_revoked_and_expired_keys_are_not_usable():
    plain, _ = create_key("--name", "old")
    key = APIKey.objects.get_from_key(plain)
    APIKey.objects.filter(pk=key.pk).update(expiry_date=timezone.now() - timedelta(seconds=1))
    with pytest.raises(APIKey.DoesNotExist):
        APIKey.objects.get_from_key(plain)
    plain2, _ = create_key("--name", "revoked")
    APIKey.objects.filter(prefix=plain2.partition(".")[0]).update(revoked=True)
    with pytest.raises(APIKey.DoesNotExist):
        APIKey.objects.get_from_key(plain2)


# --- bootstrap_demo --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_bootstrap_demo_creates_everything_once():
    """One test on purpose: bootstrap_demo trains three models (several seconds)."""
    out = io.StringIO()
    threads = torch.get_num_threads()
    # One torch thread: training with OpenMP threads on a busy 2-core machine can take 10x longer.
    torch.set_num_threads(1)
    try:
        call_command("bootstrap_demo", "--admin-password", "s3cret-Pass!", stdout=out)
    finally:
        torch.set_num_threads(threads)
    text = out.getvalue()

    for name, fmt in (("iris", "safetensors"), ("digits", "safetensors"), ("iris-onnx", "onnx")):
        model = RegisteredModel.objects.get(name=name)
        alias = ModelAlias.objects.get(model=model, name="production")
        assert alias.version.status == ModelVersion.Status.READY
        assert alias.version.format == fmt
        assert Path(alias.version.artifact.path).is_file()
        assert f"Demo model {name!r} v1 trained" in text
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password("s3cret-Pass!")
    plain = text.strip().splitlines()[-1].split(": ")[-1]
    key = APIKey.objects.get_from_key(plain)
    assert key.name == "demo"

    # the iris version really is the trained classifier: it tells the three species apart
    from sklearn.datasets import load_iris

    from registry.artifacts import load_module

    iris = ModelAlias.objects.get(model__name="iris", name="production").version
    with iris.artifact.open("rb") as fh:
        module = load_module(fh.read(), format=iris.format, architecture=iris.architecture,
                             architecture_args=iris.architecture_args, expected_sha256=iris.sha256)
    norm = iris.preprocess[0]
    data = load_iris()
    x = (torch.tensor(data.data, dtype=torch.float32) - torch.tensor(norm["mean"])) / torch.tensor(norm["std"])
    with torch.inference_mode():
        accuracy = (module(x).argmax(1) == torch.tensor(data.target)).float().mean().item()
    assert accuracy > 0.9

    counts = (
        RegisteredModel.objects.count(), ModelVersion.objects.count(), ModelAlias.objects.count(),
        AliasEvent.objects.count(), get_user_model().objects.count(), APIKey.objects.count(),
    )
    files = stored_files(django_settings.MEDIA_ROOT)

    again = io.StringIO()
    call_command("bootstrap_demo", stdout=again)
    second = again.getvalue()
    assert "Demo model 'iris' exists." in second
    assert "Demo model 'digits' exists." in second
    assert "Demo model 'iris-onnx' exists." in second
    assert "Admin user 'admin' exists" in second
    assert "Demo API key 'demo' exists" in second
    assert plain not in second and "s3cret-Pass!" not in second
    assert counts == (
        RegisteredModel.objects.count(), ModelVersion.objects.count(), ModelAlias.objects.count(),
        AliasEvent.objects.count(), get_user_model().objects.count(), APIKey.objects.count(),
    )
    assert counts == (3, 3, 3, 3, 1, 1)
    assert stored_files(django_settings.MEDIA_ROOT) == files


@pytest.mark.django_db
def test_bootstrap_demo_unknown_model():
    with pytest.raises(CommandError, match="Unknown demo model 'mnist'"):
        call_command("bootstrap_demo", "--models", "mnist", stdout=io.StringIO())
    assert RegisteredModel.objects.count() == 0
