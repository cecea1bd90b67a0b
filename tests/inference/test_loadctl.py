"""Load and unload (issue 23, item 4): POST .../versions/{n}/load|unload, and each process keeping its
loaded versions in step with the registry (``inference.loadctl``): a pinned version is loaded, an archived
one or one no alias points at any more is unloaded, once the registry generation moves."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from inference.keys import APIKey
from inference.loadctl import Watcher, check_in_worker
from inference.pool import get_pool
from inference.selectors import may_load_on_demand
from registry.models import ModelVersion, RegistryEvent
from tests.conftest import safetensors_bytes, small_mlp
from tests.helpers import register
from tests.processes import WebServer

from .support import config, error_of, make_key, ready


class Control:
    def __init__(self, client, key: str):
        self.client, self.headers = client, {"Authorization": f"Api-Key {key}"}

    def post(self, model: str, number, action: str):
        return self.client.post(f"/api/v1/models/{model}/versions/{number}/{action}", headers=self.headers)

    def get(self, model: str, number):
        return self.client.get(f"/api/v1/models/{model}/versions/{number}", headers=self.headers)

    def put_alias(self, model: str, alias: str, number: int):
        return self.client.put(f"/api/v1/models/{model}/aliases/{alias}", {"version": number},
                               content_type="application/json", headers=self.headers)


@pytest.fixture
def api(client, db) -> Control:
    return Control(client, make_key("deploy", scope=APIKey.Scope.MANAGE, rate="10000/s"))


@pytest.fixture
def candidate(iris) -> ModelVersion:
    """iris v3: ready, in no alias (v1 is production, v2 staging)."""
    return ready(small_mlp(2), model_name="iris")


def test_load_pins_a_version_and_unload_clears_it(api, candidate):
    r = api.post("iris", 3, "load")
    assert r.status_code == 200, r.content
    assert r.json()["pinned"] is True and r.json()["version"] == 3
    assert api.get("iris", 3).json()["pinned"] is True
    assert api.post("iris", 3, "load").status_code == 200  # idempotent: one event
    assert RegistryEvent.objects.filter(action=RegistryEvent.Action.VERSION_LOADED, version=3).count() == 1
    assert may_load_on_demand(version=ModelVersion.objects.get(pk=candidate.pk), key=None)
    r = api.post("iris", 3, "unload")
    assert r.status_code == 200 and r.json()["pinned"] is False
    assert api.get("iris", 3).json()["pinned"] is False
    event = RegistryEvent.objects.get(action=RegistryEvent.Action.VERSION_UNLOADED, version=3)
    assert event.actor.startswith("key:deploy")
    assert not may_load_on_demand(version=ModelVersion.objects.get(pk=candidate.pk), key=None)


def test_an_inference_key_gets_403_and_unknown_models_and_versions_404(client, api, candidate):
    infer = Control(client, make_key("client", rate="10000/s"))
    for action in ("load", "unload"):
        r = infer.post("iris", 3, action)
        assert r.status_code == 403 and error_of(r)["code"] == "permission_denied", r.content
        assert api.post("nope", 3, action).status_code == 404
        assert api.post("iris", 9, action).status_code == 404
        assert error_of(api.post("iris", "x", action))["code"] == "not_found"
    assert not ModelVersion.objects.get(pk=candidate.pk).pinned


def test_unloading_an_aliased_version_and_loading_an_archived_or_unready_one_are_409(api, candidate):
    r = api.post("iris", 1, "unload")
    assert r.status_code == 409, r.content
    err = error_of(r)
    assert err["details"]["reason"] == "alias_target" and "production" in err["message"]
    assert api.post("iris", 3, "load").status_code == 200
    assert api.client.post("/api/v1/models/iris/versions/3/archive", headers=api.headers).status_code == 200
    assert api.get("iris", 3).json()["pinned"] is False  # archiving clears the pin
    r = api.post("iris", 3, "load")
    assert r.status_code == 409 and error_of(r)["details"]["reason"] == "archived"
    register(safetensors_bytes(small_mlp(3)), config(), model_name="iris", validate=False)  # v4, registered
    r = api.post("iris", 4, "load")
    assert r.status_code == 409 and error_of(r)["details"]["reason"] == "not_ready", r.content


def test_a_pinned_version_is_loaded_in_this_process_when_the_generation_moves(
        api, candidate, django_capture_on_commit_callbacks):
    pool, watcher = get_pool(), Watcher()
    assert watcher.check() is None  # nothing moved
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("iris", 3, "load").status_code == 200
    assert watcher.check() == {"unloaded": [], "loaded": ["iris v3"]}
    assert pool.is_loaded(candidate)
    assert watcher.check() is None
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("iris", 3, "unload").status_code == 200
    assert watcher.check() == {"unloaded": ["iris v3"], "loaded": []}
    assert not pool.is_loaded(candidate)


def test_a_version_moved_away_from_or_archived_is_unloaded_and_aliased_ones_stay(
        api, iris, django_capture_on_commit_callbacks):
    v1, v2 = (ModelVersion.objects.get(model__name="iris", version=n) for n in (1, 2))
    pool, watcher = get_pool(), Watcher()
    pool.loaded(v1), pool.loaded(v2)
    with django_capture_on_commit_callbacks(execute=True):
        assert api.put_alias("iris", "staging", 1).status_code == 200  # the last alias leaves v2
    assert watcher.check() == {"unloaded": ["iris v2"], "loaded": []}
    assert pool.is_loaded(v1) and not pool.is_loaded(v2)
    pool.loaded(v2)  # loaded again (e.g. by a key limited to the model), then archived
    with django_capture_on_commit_callbacks(execute=True):
        assert api.client.post("/api/v1/models/iris/versions/2/archive", headers=api.headers).status_code == 200
    assert watcher.check() == {"unloaded": ["iris v2"], "loaded": []}
    assert pool.is_loaded(v1)


def test_a_worker_unloads_at_its_next_job_and_never_preloads(api, candidate, django_capture_on_commit_callbacks):
    pool = get_pool()
    v2 = ModelVersion.objects.get(model__name="iris", version=2)
    pool.loaded(v2)
    check_in_worker()  # the worker's first job: its generation is taken as it is
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post("iris", 3, "load").status_code == 200
        assert api.put_alias("iris", "staging", 1).status_code == 200
    check_in_worker()
    assert not pool.is_loaded(v2) and not pool.is_loaded(candidate)


def test_a_starting_process_preloads_pinned_versions_after_the_defaults(api, candidate):
    assert api.post("iris", 3, "load").status_code == 200
    loaded = get_pool().preload()
    assert [(v.model.name, v.version) for v in loaded] == [("iris", 1), ("iris", 3)]
    assert get_pool().is_loaded(candidate)


def _wait_for_gauge(web, token: str, expected: float, timeout: float = 15.0) -> float:
    """Seconds until the web process's inference_loaded_models gauge reads `expected`."""
    from tests.inference.test_preload import loaded_models_gauge

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if loaded_models_gauge(web, token) == expected:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"loaded models stayed at {loaded_models_gauge(web, token)}, not {expected}\n{web.log_tail()}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_real_web_process_loads_and_unloads_as_the_registry_says(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    ready(small_mlp(4), model_name="warm", aliases=["production"])
    ready(small_mlp(5), model_name="warm")
    key = make_key("deploy", scope=APIKey.Scope.MANAGE, rate="1000/s")
    web = WebServer(settings.MEDIA_ROOT, env={"INFERENCE_METRICS_TOKEN": "lc-token", "INFERENCE_PRELOAD_MODELS": "true"})

    def call(method: str, path: str, body: dict | None = None) -> int:
        request = urllib.request.Request(f"{web.url}/api/v1/models/warm/{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else b"",
                                         headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status

    try:
        web.start()
        assert _wait_for_gauge(web, "lc-token", 1) < 1  # production's v1, preloaded
        assert call("POST", "versions/2/load") == 200
        load_s = _wait_for_gauge(web, "lc-token", 2)
        assert call("PUT", "aliases/production", {"version": 2}) == 200  # v1 loses its last alias
        move_s = _wait_for_gauge(web, "lc-token", 1)
        assert call("PUT", "aliases/production", {"version": 1}) == 200  # v2 now only pinned: still loaded
        time.sleep(1)  # (v1 loads on its next request: nothing pre-loads an alias's version after start)
        assert _wait_for_gauge(web, "lc-token", 1, timeout=0.5) < 0.5  # still exactly one: the pinned v2
        assert call("POST", "versions/2/archive") == 200  # archived: unloaded (and unpinned)
        archive_s = _wait_for_gauge(web, "lc-token", 0)
        print(f"web process: pinned version loaded after {load_s:.2f} s, unaliased one unloaded after "
              f"{move_s:.2f} s, archived one after {archive_s:.2f} s")
        assert load_s < 5 and move_s < 5 and archive_s < 5
    finally:
        web.stop()
