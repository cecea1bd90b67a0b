"""Preloading: a web process loads every model's default version as it starts, before it takes
requests (``ServingPool.preload``, called by ``inference_platform.front.prepare_heap``)."""

from __future__ import annotations

import json
import logging
import urllib.request

import pytest

from inference.pool import get_pool
from registry.models import ModelVersion
from tests.conftest import safetensors_bytes, small_mlp
from tests.helpers import register
from tests.processes import WebServer

from .support import ROWS, config, make_key, ready


def loaded_names(pool) -> set[tuple[str, int]]:
    versions = ModelVersion.objects.filter(pk__in=[pk for pk, _device in pool.cache.keys()])
    return {(v.model.name, v.version) for v in versions.select_related("model")}


@pytest.mark.django_db
def test_each_model_s_default_version_is_loaded_once():
    ready(small_mlp(0), model_name="alpha", aliases=["production"])
    ready(small_mlp(1), model_name="alpha")  # newer, but production stays on v1
    ready(small_mlp(2), model_name="beta")  # no alias: its newest ready version
    ready(small_mlp(3), model_name="beta")
    register(safetensors_bytes(small_mlp(4)), config(), model_name="gamma", validate=False)  # not ready: skipped
    pool = get_pool()
    versions = pool.preload()
    assert [(v.model.name, v.version) for v in versions] == [("alpha", 1), ("beta", 2)]
    assert loaded_names(pool) == {("alpha", 1), ("beta", 2)}
    assert pool.cache.loads == 2
    pool.preload()  # already loaded: nothing loads twice
    assert pool.cache.loads == 2


@pytest.mark.django_db
def test_every_version_of_a_split_production_alias_is_preloaded():
    from registry.services import alias_set

    v1 = ready(small_mlp(0), model_name="alpha", aliases=["production"])
    v2 = ready(small_mlp(1), model_name="alpha")
    ready(small_mlp(2), model_name="alpha")  # in no alias: not preloaded
    alias_set(model=v1.model, alias="production", split=[(v1, 90), (v2, 10)])
    pool = get_pool()
    versions = pool.preload()
    # Both answer some of production's requests: neither's first request waits for a load.
    assert sorted((v.model.name, v.version) for v in versions) == [("alpha", 1), ("alpha", 2)]
    assert loaded_names(pool) == {("alpha", 1), ("alpha", 2)} and pool.is_loaded(v2)


@pytest.mark.django_db
def test_the_shadow_of_the_production_alias_is_preloaded():
    from registry.services import alias_set

    v1 = ready(small_mlp(0), model_name="alpha", aliases=["production"])
    v2 = ready(small_mlp(1), model_name="alpha")
    ready(small_mlp(2), model_name="alpha")  # in no alias: not preloaded
    alias_set(model=v1.model, alias="production", version=v1, shadow=(v2, 20))
    pool = get_pool()
    # The shadow runs copies of production's requests: its first ones wait for no load.
    assert sorted((v.model.name, v.version) for v in pool.preload()) == [("alpha", 1), ("alpha", 2)]
    assert pool.is_loaded(v2)


@pytest.mark.django_db
def test_preloading_stops_before_the_model_cache_would_overflow(caplog):
    first = ready(small_mlp(0), model_name="alpha")
    ready(small_mlp(1), model_name="beta")
    pool = get_pool()
    pool.cache.capacity_bytes = first.size_bytes + first.size_bytes // 2  # room for one of the two
    caplog.set_level(logging.INFO, logger="inference.runtime")
    assert [v.model.name for v in pool.preload()] == ["alpha"]
    assert loaded_names(pool) == {("alpha", 1)}
    assert pool.cache.evictions == 0  # nothing was loaded only to be unloaded
    assert "Preloading stopped before beta v1" in caplog.text
    assert "load on their first request" in caplog.text


@pytest.mark.django_db
def test_a_version_that_cannot_load_is_logged_and_the_others_still_load(caplog):
    broken = ready(small_mlp(0), model_name="alpha")
    ModelVersion.objects.filter(pk=broken.pk).update(sha256="0" * 64)  # its file no longer matches
    ready(small_mlp(1), model_name="beta")
    caplog.set_level(logging.WARNING, logger="inference.runtime")
    pool = get_pool()
    assert [v.model.name for v in pool.preload()] == ["beta"]
    assert loaded_names(pool) == {("beta", 1)}
    assert "Could not preload alpha v1" in caplog.text
    assert "ModelNotReady" in caplog.text


def loaded_models_gauge(web: WebServer, token: str) -> float:
    request = urllib.request.Request(f"{web.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    text = urllib.request.urlopen(request, timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("inference_loaded_models"))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("preload", [True, False])
def test_a_web_process_holds_its_models_before_its_first_request(settings, tmp_path, preload):
    settings.MEDIA_ROOT = tmp_path / "media"
    module = small_mlp(4)
    ready(module, model_name="warm", aliases=["production"])
    key = make_key("preload", rate="1000/s")
    web = WebServer(settings.MEDIA_ROOT, env={"INFERENCE_METRICS_TOKEN": "preload-token",
                                             "INFERENCE_PRELOAD_MODELS": str(preload).lower()})
    try:
        web.start()
        assert loaded_models_gauge(web, "preload-token") == (1 if preload else 0)
        request = urllib.request.Request(
            f"{web.url}/api/v1/models/warm/predict", data=json.dumps({"instances": ROWS}).encode(),
            headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert len(json.load(response)["predictions"]) == len(ROWS)
        assert loaded_models_gauge(web, "preload-token") == 1
    finally:
        web.stop()
