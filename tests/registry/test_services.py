"""registry.services and registry.selectors against the database, with real artifacts."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pytest
import torch
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from registry import selectors, services
from registry.models import AliasEvent, HardwareTarget, ModelAlias, ModelVersion, RegisteredModel
from tests.conftest import safetensors_bytes, small_mlp, state_dict_bytes, torch_export_bytes, torchscript_bytes
from tests.helpers import evil_torch_save, ready_version, register, stored_files

pytestmark = pytest.mark.django_db


def media_files() -> list[Path]:
    return stored_files(django_settings.MEDIA_ROOT)


def assert_nothing_stored() -> None:
    assert ModelVersion.objects.count() == 0
    assert ModelAlias.objects.count() == 0
    assert AliasEvent.objects.count() == 0
    assert media_files() == []


@pytest.fixture
def weights() -> bytes:
    return safetensors_bytes(small_mlp())


@pytest.fixture
def user():
    return get_user_model().objects.create_user("alice", password="pw-alice-123")


# --- Registering versions -------------------------------------------------------------------


def test_register_validates_numbers_and_stores_the_artifact(weights, iris_config, user):
    v1 = register(weights, iris_config, created_by=user, description="Iris species", task="classification")
    assert (v1.model.name, v1.version) == ("iris", 1)
    assert v1.status == ModelVersion.Status.READY
    assert v1.status_error == ""
    assert v1.validated_at is not None
    assert v1.sha256 == hashlib.sha256(weights).hexdigest()
    assert v1.size_bytes == len(weights)
    assert v1.created_by == user
    assert v1.model.description == "Iris species" and v1.model.task == "classification"
    # the stored file is the uploaded bytes, under MEDIA_ROOT, named by the service
    path = Path(v1.artifact.path)
    assert path.read_bytes() == weights
    assert path.is_relative_to(Path(django_settings.MEDIA_ROOT))
    assert media_files() == [path]
    # config round trip
    stored = ModelVersion.objects.get(pk=v1.pk)
    assert stored.architecture == iris_config["architecture"]
    assert stored.architecture_args == iris_config["architecture_args"]
    assert stored.input_schema == iris_config["inputs"]
    assert stored.output_schema == iris_config["outputs"]
    assert stored.max_batch_size == 8 and stored.max_batch_delay_ms == 2.0 and stored.max_queue_size == 256
    assert stored.hardware.name == "cpu"
    assert stored.config["batching"] == {"max_batch_size": 8, "max_batch_delay_ms": 2.0, "max_queue_size": 256}

    other_weights = safetensors_bytes(small_mlp(seed=9))
    v2 = register(other_weights, iris_config, validate=False)
    assert v2.version == 2 and v2.model_id == v1.model_id
    assert v2.status == ModelVersion.Status.REGISTERED
    assert v2.sha256 == hashlib.sha256(other_weights).hexdigest() != v1.sha256
    assert v2.artifact.name != v1.artifact.name  # never overwritten in place
    assert Path(v1.artifact.path).read_bytes() == weights

    # numbering is per model
    w1 = register(weights, iris_config, model_name="wine", validate=False)
    assert (w1.model.name, w1.version) == ("wine", 1)
    v3 = register(weights, iris_config, validate=False)
    assert v3.version == 3
    assert RegisteredModel.objects.count() == 2
    assert len(media_files()) == 4


def test_version_numbers_continue_after_archiving(weights, iris_config):
    v1 = ready_version(weights, iris_config)
    services.model_version_archive(version=v1)
    assert register(weights, iris_config, validate=False).version == 2


def test_aliases_argument_points_aliases_at_the_new_version(weights, iris_config, user):
    version = register(weights, iris_config, aliases=["production", "staging"], created_by=user)
    assert version.status == ModelVersion.Status.READY
    aliases = {a.name: a.version_id for a in ModelAlias.objects.filter(model=version.model)}
    assert aliases == {"production": version.pk, "staging": version.pk}
    events = AliasEvent.objects.filter(model=version.model).order_by("alias")
    assert [(e.alias, e.action, e.from_version, e.to_version, e.actor) for e in events] == [
        ("production", "set", None, 1, "user:alice"),
        ("staging", "set", None, 1, "user:alice"),
    ]


def test_aliases_need_validation(weights, iris_config):
    with pytest.raises(ValidationError) as exc:
        register(weights, iris_config, aliases=["production"], validate=False)
    assert exc.value.code == "not_ready"
    assert_nothing_stored()


def test_bad_alias_name_refused_before_anything(weights, iris_config):
    with pytest.raises(ValidationError):
        register(weights, iris_config, aliases=["Not An Alias"])
    assert_nothing_stored()
    assert RegisteredModel.objects.count() == 0


def test_failed_validation_stores_nothing(iris_config, monkeypatch, tmp_path):
    # weights for hidden [8], architecture_args say [16]
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    iris_config["architecture_args"]["hidden"] = [16]
    with pytest.raises(ValidationError) as exc:
        register(safetensors_bytes(small_mlp()), iris_config, aliases=["production"])
    message = " ".join(exc.value.messages)
    assert "Validation failed" in message
    assert "shape mismatch" in message and "0.weight" in message
    assert_nothing_stored()
    assert RegisteredModel.objects.count() == 0
    assert list((tmp_path / "tmp").iterdir()) == []  # the local copy for the validator is gone


def test_example_that_does_not_fit_the_schema(weights, iris_config):
    iris_config["example"] = [1.0, 2.0, 3.0]  # the schema says 4 features
    with pytest.raises(ValidationError) as exc:
        register(weights, iris_config)
    assert "example" in " ".join(exc.value.messages)
    assert_nothing_stored()


def test_crafted_pickle_through_the_service_never_runs(iris_config, tmp_path):
    marker = tmp_path / "pwned"
    iris_config["format"] = "state_dict"
    with pytest.raises(ValidationError) as exc:
        register(evil_torch_save(marker), iris_config)
    assert "Refused" in " ".join(exc.value.messages)
    assert not marker.exists()
    assert_nothing_stored()


def test_failure_after_the_file_is_written_removes_it(weights, iris_config, monkeypatch):
    from registry.validation import ValidationOutcome

    def boom(**kwargs):
        raise RuntimeError("alias store down")

    # validation is not the subject here: say yes without the subprocess
    monkeypatch.setattr(services.versions, "_validate_bytes", lambda **kwargs: ValidationOutcome(True))
    monkeypatch.setattr(services.versions, "alias_set", boom)
    with pytest.raises(RuntimeError, match="alias store down"):
        register(weights, iris_config, aliases=["production"])
    assert_nothing_stored()


def test_unknown_and_disabled_hardware_refused(weights, iris_config):
    iris_config["hardware"] = "gpu9"
    with pytest.raises(ValidationError) as exc:
        register(weights, iris_config)
    assert exc.value.code == "invalid_hardware"
    assert "'gpu9'" in exc.value.messages[0] and "cpu" in exc.value.messages[0]

    HardwareTarget.objects.create(name="spare", device_type="cpu", enabled=False)
    iris_config["hardware"] = "spare"
    with pytest.raises(ValidationError, match="disabled"):
        register(weights, iris_config)
    assert_nothing_stored()


def test_architecture_outside_the_allowlist_refused(weights, iris_config):
    iris_config["architecture"] = "torch.nn.Linear"
    with pytest.raises(ValidationError) as exc:
        register(weights, iris_config)
    assert exc.value.code == "invalid_architecture"
    assert "allowlist" in exc.value.messages[0]
    assert_nothing_stored()


def test_bad_model_name_empty_and_oversized_artifacts(weights, iris_config, settings):
    with pytest.raises(ValidationError):
        register(weights, iris_config, model_name="Not a slug!", validate=False)
    with pytest.raises(ValidationError, match="empty"):
        register(b"", iris_config, validate=False)
    settings.INFERENCE_MAX_ARTIFACT_BYTES = 100
    with pytest.raises(ValidationError, match="INFERENCE_MAX_ARTIFACT_BYTES"):
        register(weights, iris_config, validate=False)
    assert_nothing_stored()
    assert RegisteredModel.objects.count() == 0


# --- Code formats -------------------------------------------------------------------------------


def code_config(iris_config: dict, fmt: str) -> dict:
    cfg = dict(iris_config, format=fmt)
    cfg.pop("architecture")
    cfg.pop("architecture_args")
    return cfg


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_code_formats_refused_while_switched_off(settings, iris_config, fmt):
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = False
    with pytest.raises(ValidationError) as exc:
        register(torchscript_bytes(small_mlp()), code_config(iris_config, fmt), may_upload_code=True)
    assert exc.value.code == "code_artifacts_disabled"
    assert "INFERENCE_ALLOW_CODE_ARTIFACTS" in exc.value.messages[0]
    assert_nothing_stored()


def test_code_formats_refused_without_the_permission(settings, iris_config):
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = True
    with pytest.raises(ValidationError) as exc:
        register(torchscript_bytes(small_mlp()), code_config(iris_config, "torchscript"), may_upload_code=False)
    assert exc.value.code == "code_artifacts_forbidden"
    assert "permission" in exc.value.messages[0]
    assert_nothing_stored()


@pytest.mark.parametrize(("fmt", "to_bytes"), [("torchscript", torchscript_bytes), ("torch_export", torch_export_bytes)])
def test_code_formats_accepted_when_both_allow(settings, iris_config, fmt, to_bytes):
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = True
    version = register(to_bytes(small_mlp()), code_config(iris_config, fmt), may_upload_code=True)
    assert version.status == ModelVersion.Status.READY
    assert version.format == fmt
    assert version.architecture == ""
    assert version.artifact.name.endswith(".pt2" if fmt == "torch_export" else ".pt")


def test_state_dict_version_registers(iris_config):
    iris_config["format"] = "state_dict"
    version = register(state_dict_bytes(small_mlp()), iris_config)
    assert version.status == ModelVersion.Status.READY
    assert version.artifact.name.endswith(".pt")


# --- Validating later ---------------------------------------------------------------------------


def test_validate_later_marks_ready(weights, iris_config):
    version = register(weights, iris_config, validate=False)
    assert version.status == ModelVersion.Status.REGISTERED
    assert version.validated_at is None
    services.model_version_validate(version=version)
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.READY
    assert version.status_error == ""
    assert version.validated_at is not None


def test_validate_later_marks_a_bad_version_failed(iris_config):
    iris_config["architecture_args"]["hidden"] = [8, 8]
    version = register(safetensors_bytes(small_mlp()), iris_config, validate=False)
    services.model_version_validate(version=version)
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.FAILED
    assert "missing keys" in version.status_error and "4.weight" in version.status_error


def test_tampered_file_on_storage_fails_validation(weights, iris_config):
    version = ready_version(weights, iris_config)
    path = Path(version.artifact.path)
    tampered = bytearray(path.read_bytes())
    tampered[-1] ^= 0x01
    path.write_bytes(bytes(tampered))
    services.model_version_validate(version=version)
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.FAILED
    assert "sha256" in version.status_error


def test_missing_file_on_storage_fails_validation(weights, iris_config):
    version = ready_version(weights, iris_config)
    Path(version.artifact.path).unlink()
    services.model_version_validate(version=version)
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.FAILED
    assert "cannot be read" in version.status_error


# --- Aliases ------------------------------------------------------------------------------------


@pytest.fixture
def two_versions(weights, iris_config):
    v1 = ready_version(weights, iris_config)
    v2 = ready_version(safetensors_bytes(small_mlp(seed=1)), iris_config)
    return v1, v2


def test_alias_set_moves_and_records(two_versions, user):
    v1, v2 = two_versions
    model = v1.model
    alias = services.alias_set(model=model, alias="production", version=v1, actor="user:alice")
    assert alias.version_id == v1.pk
    moved = services.alias_set(model=model, alias="production", version=v2, actor=services.actor_for(user=user))
    assert moved.pk == alias.pk
    assert ModelAlias.objects.get(model=model, name="production").version_id == v2.pk
    assert ModelAlias.objects.filter(model=model).count() == 1
    back = services.alias_set(model=model, alias="production", version=v1, actor="key:ci (abc123)")
    assert back.version_id == v1.pk
    events = list(AliasEvent.objects.filter(model=model).order_by("id"))
    assert [(e.action, e.from_version, e.to_version, e.actor) for e in events] == [
        ("set", None, 1, "user:alice"),
        ("set", 1, 2, "user:alice"),
        ("set", 2, 1, "key:ci (abc123)"),
    ]
    # pointing the alias where it already points records nothing
    services.alias_set(model=model, alias="production", version=v1, actor="user:alice")
    assert AliasEvent.objects.filter(model=model).count() == 3


def test_actor_for():
    class Key:
        name, prefix = "ci", "abc123"

    assert services.actor_for() == "system"
    assert services.actor_for(api_key=Key()) == "key:ci (abc123)"


def test_alias_set_refuses_versions_that_are_not_ready(weights, iris_config):
    registered = register(weights, iris_config, validate=False)
    with pytest.raises(ValidationError) as exc:
        services.alias_set(model=registered.model, alias="production", version=registered)
    assert exc.value.code == "not_ready"
    ModelVersion.objects.filter(pk=registered.pk).update(status=ModelVersion.Status.FAILED)
    registered.refresh_from_db()
    with pytest.raises(ValidationError, match="failed"):
        services.alias_set(model=registered.model, alias="production", version=registered)
    assert ModelAlias.objects.count() == 0 and AliasEvent.objects.count() == 0


def test_alias_set_refuses_archived_and_other_models_versions(weights, iris_config):
    iris = ready_version(weights, iris_config)
    wine = ready_version(weights, iris_config, model_name="wine")
    with pytest.raises(ValidationError) as exc:
        services.alias_set(model=iris.model, alias="production", version=wine)
    assert exc.value.code == "wrong_model"
    services.model_version_archive(version=iris)
    with pytest.raises(ValidationError) as exc:
        services.alias_set(model=iris.model, alias="production", version=iris)
    assert exc.value.code == "archived"
    with pytest.raises(ValidationError):
        services.alias_set(model=wine.model, alias="Prod uction", version=wine)
    assert ModelAlias.objects.count() == 0 and AliasEvent.objects.count() == 0


def test_alias_delete_records_an_event(two_versions):
    v1, _ = two_versions
    services.alias_set(model=v1.model, alias="staging", version=v1)
    assert services.alias_delete(model=v1.model, alias="staging", actor="user:bob") is True
    assert not ModelAlias.objects.filter(model=v1.model, name="staging").exists()
    event = AliasEvent.objects.filter(model=v1.model).order_by("-id").first()
    assert (event.alias, event.action, event.from_version, event.to_version, event.actor) == (
        "staging", "delete", 1, None, "user:bob",
    )
    assert services.alias_delete(model=v1.model, alias="staging") is False
    assert AliasEvent.objects.filter(model=v1.model).count() == 2


def test_archive_refused_while_aliased(two_versions):
    v1, v2 = two_versions
    services.alias_set(model=v1.model, alias="production", version=v1)
    with pytest.raises(ValidationError) as exc:
        services.model_version_archive(version=v1)
    assert exc.value.code == "alias_target"
    assert "production" in exc.value.messages[0]
    v1.refresh_from_db()
    assert v1.archived is False
    services.alias_set(model=v1.model, alias="production", version=v2)
    services.model_version_archive(version=v1)
    v1.refresh_from_db()
    assert v1.archived is True


# --- Database constraints ------------------------------------------------------------------------


def test_version_unique_per_model_in_the_database(weights, iris_config):
    v1 = ready_version(weights, iris_config)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(
            model=v1.model, version=1, artifact=v1.artifact.name, sha256=v1.sha256, format="safetensors",
            hardware=v1.hardware,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(
            model=v1.model, version=0, artifact=v1.artifact.name, sha256=v1.sha256, format="safetensors",
            hardware=v1.hardware,
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(
            model=v1.model, version=5, artifact=v1.artifact.name, sha256=v1.sha256, format="pickle",
            hardware=v1.hardware,
        )
    # the same number for another model is fine
    other = RegisteredModel.objects.create(name="wine")
    ModelVersion.objects.create(
        model=other, version=1, artifact=v1.artifact.name, sha256=v1.sha256, format="safetensors", hardware=v1.hardware
    )
    assert ModelVersion.objects.filter(version=1).count() == 2


def test_alias_unique_per_model_in_the_database(two_versions):
    v1, v2 = two_versions
    ModelAlias.objects.create(model=v1.model, name="production", version=v1)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelAlias.objects.create(model=v1.model, name="production", version=v2)
    assert ModelAlias.objects.get(model=v1.model, name="production").version_id == v1.pk


def test_cpu_target_exists_by_default():
    cpu = HardwareTarget.objects.get(name="cpu")
    assert cpu.device == "cpu" and cpu.enabled
    assert HardwareTarget(name="g", device_type="cuda", device_index=1).device == "cuda:1"


# --- Selectors -------------------------------------------------------------------------------------


def test_version_resolve(weights, iris_config):
    v1 = ready_version(weights, iris_config)
    v2 = ready_version(weights, iris_config)
    v3 = register(weights, iris_config, validate=False)  # newest, but not ready
    model = v1.model
    resolve = selectors.version_resolve

    assert resolve(model=model, ref=1) == v1
    assert resolve(model=model, ref="2") == v2
    assert resolve(model=model, ref=3) == v3  # an explicit number gets it, ready or not
    assert resolve(model=model, ref=4) is None
    assert resolve(model=model, ref="champion") is None
    # no production alias: the newest ready version
    assert resolve(model=model) == v2
    services.alias_set(model=model, alias="production", version=v1)
    services.alias_set(model=model, alias="champion", version=v2)
    assert resolve(model=model) == v1
    assert resolve(model=model, ref="production") == v1
    assert resolve(model=model, ref="champion") == v2
    services.alias_delete(model=model, alias="production")
    assert resolve(model=model) == v2
    # archived versions are never returned
    services.alias_delete(model=model, alias="champion")
    services.model_version_archive(version=v2)
    assert resolve(model=model, ref=2) is None
    assert resolve(model=model) == v1
    services.model_version_archive(version=v1)
    assert resolve(model=model) is None
    # even when an alias still points at one (written behind the services' back)
    ModelAlias.objects.create(model=model, name="production", version=v2)
    assert resolve(model=model, ref="production") is None
    assert resolve(model=model) is None


def test_version_resolve_is_per_model(weights, iris_config):
    iris = ready_version(weights, iris_config)
    wine = ready_version(weights, iris_config, model_name="wine")
    assert selectors.version_resolve(model=iris.model, ref=1) == iris
    assert selectors.version_resolve(model=wine.model, ref=1) == wine
    assert selectors.version_resolve(model=wine.model) == wine


def test_model_list(weights, iris_config):
    iris = ready_version(weights, iris_config)
    ready_version(weights, iris_config, model_name="wine")
    services.alias_set(model=iris.model, alias="production", version=iris)
    assert [m.name for m in selectors.model_list()] == ["iris", "wine"]
    (only,) = selectors.model_list(names=["iris"])
    assert [v.version for v in only.versions.all()] == [1]
    assert [(a.name, a.version.version) for a in only.aliases.all()] == [("production", 1)]


# --- Stored weights are the trained model ------------------------------------------------------------


def test_stored_artifact_loads_back_into_the_same_model(weights, iris_config):
    from registry.artifacts import load_module

    version = ready_version(weights, iris_config)
    with version.artifact.open("rb") as fh:
        module = load_module(
            fh.read(), format=version.format, architecture=version.architecture,
            architecture_args=version.architecture_args, expected_sha256=version.sha256,
        )
    x = torch.randn(3, 4)
    with torch.inference_mode():
        assert torch.allclose(module(x), small_mlp()(x))



# --- Change announcements ------------------------------------------------------------------------


def test_registry_changes_are_announced_after_commit(weights, iris_config, django_capture_on_commit_callbacks):
    from registry.signals import GENERATION_CACHE_KEY, generation_cache, registry_changed

    cache = generation_cache()

    received = []

    def listener(**kwargs):
        received.append(kwargs["sender"])

    registry_changed.connect(listener)
    try:
        version = ready_version(weights, iris_config)
        before = cache.get(GENERATION_CACHE_KEY) or 0
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            services.alias_set(model=version.model, alias="production", version=version)
        assert received == []  # nothing before the commit
        assert (cache.get(GENERATION_CACHE_KEY) or 0) == before
        for callback in callbacks:
            callback()
        assert received == [RegisteredModel]
        assert cache.get(GENERATION_CACHE_KEY) == before + 1
        with django_capture_on_commit_callbacks(execute=True):
            services.alias_delete(model=version.model, alias="production")
        assert cache.get(GENERATION_CACHE_KEY) == before + 2
        assert len(received) == 2
    finally:
        registry_changed.disconnect(listener)


# --- Promote a candidate, roll back -------------------------------------------------------------


SPLIT_90_10 = [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]


def alias_moves(model, alias="production") -> list[tuple]:
    return list(AliasEvent.objects.filter(model=model, alias=alias).order_by("id").values_list(
        "from_version", "to_version", "from_split", "to_split", "actor"))


def test_promote_sends_everything_to_the_candidate_and_records_it(two_versions, user):
    v1, v2 = two_versions
    model = v1.model
    services.alias_set(model=model, alias="production", split=[(v1, 90), (v2, 10)], actor="user:alice")
    alias = services.alias_promote(model=model, alias="production", version_number=2,
                                   actor=services.actor_for(user=user))
    stored = ModelAlias.objects.get(pk=alias.pk)
    assert stored.version_id == v2.pk and stored.split is None and stored.targets == [(2, 100)]
    assert alias_moves(model)[-1] == (1, 2, SPLIT_90_10, None, "user:alice")


def test_promote_refuses_what_is_not_a_candidate(two_versions, weights, iris_config):
    v1, v2 = two_versions
    model = v1.model
    services.alias_set(model=model, alias="production", version=v1)
    with pytest.raises(ValidationError) as exc:  # no split: no candidate
        services.alias_promote(model=model, alias="production", version_number=2)
    assert exc.value.code == "not_a_candidate" and "none: it points at one version" in exc.value.messages[0]
    v3 = ready_version(safetensors_bytes(small_mlp(seed=2)), iris_config)
    services.alias_set(model=model, alias="production", split=[(v1, 90), (v2, 10)])
    for number in (1, 3, 99):  # the primary, a version outside the split, no such version
        with pytest.raises(ValidationError) as exc:
            services.alias_promote(model=model, alias="production", version_number=number)
        assert exc.value.code == "not_a_candidate" and "its candidates: v2" in exc.value.messages[0]
    with pytest.raises(ValidationError) as exc:
        services.alias_promote(model=model, alias="canary", version_number=2)
    assert exc.value.code == "no_alias"
    assert ModelAlias.objects.get(model=model, name="production").split == SPLIT_90_10
    assert len(alias_moves(model)) == 2 and v3.version == 3


def test_roll_back_returns_to_the_previous_split_then_forth(two_versions):
    v1, v2 = two_versions
    model = v1.model
    services.alias_set(model=model, alias="production", version=v1)
    services.alias_set(model=model, alias="production", split=[(v1, 90), (v2, 10)])
    services.alias_promote(model=model, alias="production", version_number=2)
    back = services.alias_roll_back(model=model, alias="production", actor="user:bob")
    assert (back.version_id, ModelAlias.objects.get(pk=back.pk).split) == (v1.pk, SPLIT_90_10)
    assert alias_moves(model)[-1] == (2, 1, None, SPLIT_90_10, "user:bob")
    # Rolling back again undoes the roll back (its own move is now the latest).
    services.alias_roll_back(model=model, alias="production")
    alias = ModelAlias.objects.get(model=model, name="production")
    assert (alias.version_id, alias.split) == (v2.pk, None)
    assert len(alias_moves(model)) == 5


def test_roll_back_to_one_version(two_versions):
    v1, v2 = two_versions
    model = v1.model
    services.alias_set(model=model, alias="production", version=v1)
    services.alias_set(model=model, alias="production", split=[(v1, 90), (v2, 10)])
    services.alias_roll_back(model=model, alias="production")
    alias = ModelAlias.objects.get(model=model, name="production")
    assert (alias.version_id, alias.split) == (v1.pk, None)
    assert alias_moves(model)[-1][:4] == (1, 1, SPLIT_90_10, None)


def test_roll_back_refuses_without_a_previous_target(two_versions):
    v1, _ = two_versions
    with pytest.raises(ValidationError) as exc:
        services.alias_roll_back(model=v1.model, alias="production")
    assert exc.value.code == "no_alias"
    services.alias_set(model=v1.model, alias="production", version=v1)
    with pytest.raises(ValidationError) as exc:
        services.alias_roll_back(model=v1.model, alias="production")
    assert exc.value.code == "no_previous_target" and "no previous target" in exc.value.messages[0]
    assert len(alias_moves(v1.model)) == 1


def test_roll_back_refuses_a_previous_version_that_is_archived_or_not_ready(two_versions):
    v1, v2 = two_versions
    model = v1.model
    services.alias_set(model=model, alias="production", version=v1)
    services.alias_set(model=model, alias="production", version=v2)
    services.model_version_archive(version=v1)
    with pytest.raises(ValidationError) as exc:
        services.alias_roll_back(model=model, alias="production")
    assert exc.value.code == "archived"
    assert "Cannot roll back iris@production" in exc.value.messages[0] and "archived" in exc.value.messages[0]
    ModelVersion.objects.filter(pk=v1.pk).update(archived=False, status=ModelVersion.Status.FAILED)
    with pytest.raises(ValidationError) as exc:
        services.alias_roll_back(model=model, alias="production")
    assert exc.value.code == "not_ready" and "failed, not ready" in exc.value.messages[0]
    assert ModelAlias.objects.get(model=model, name="production").version_id == v2.pk
    assert len(alias_moves(model)) == 2


def test_promote_the_shadow_or_a_candidate_clears_the_shadow(two_versions, iris_config):
    v1, v2 = two_versions
    v3 = ready_version(safetensors_bytes(small_mlp(seed=2)), iris_config)
    model = v1.model
    services.alias_set(model=model, alias="production", version=v1, shadow=(v2, 20))
    services.alias_promote(model=model, alias="production", version_number=2, actor="user:alice")
    alias = ModelAlias.objects.get(model=model, name="production")
    assert (alias.version_id, alias.split, alias.shadow) == (v2.pk, None, None)
    event = AliasEvent.objects.filter(model=model).latest("id")
    assert (event.from_version, event.from_shadow, event.to_version, event.to_shadow) == (
        1, {"version": 2, "percent": 20}, 2, None)
    # A split's candidate promoted: the shadow goes too.
    services.alias_set(model=model, alias="production", split=[(v1, 90), (v2, 10)], shadow=(v3, 50))
    services.alias_promote(model=model, alias="production", version_number=2)
    alias.refresh_from_db()
    assert (alias.version_id, alias.split, alias.shadow) == (v2.pk, None, None)


def test_roll_back_restores_the_previous_shadow(two_versions, iris_config):
    v1, v2 = two_versions
    v3 = ready_version(safetensors_bytes(small_mlp(seed=2)), iris_config)
    model = v1.model
    services.alias_set(model=model, alias="production", split=[(v1, 90), (v2, 10)], shadow=(v3, 20))
    services.alias_promote(model=model, alias="production", version_number=3)
    services.alias_roll_back(model=model, alias="production")
    alias = ModelAlias.objects.get(model=model, name="production")
    assert (alias.version_id, alias.split, alias.shadow) == (v1.pk, SPLIT_90_10, {"version": 3, "percent": 20})
    # An archived previous shadow refuses the roll back, naming it.
    services.alias_set(model=model, alias="production", version=v1)
    services.model_version_archive(version=v3)
    with pytest.raises(ValidationError) as exc:
        services.alias_roll_back(model=model, alias="production")
    assert exc.value.code == "shadow_archived" and "iris v3 is archived" in exc.value.messages[0]
    alias.refresh_from_db()
    assert (alias.split, alias.shadow) == (None, None)
