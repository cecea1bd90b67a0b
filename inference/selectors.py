"""Reads of the serving side: which model and version a request means, and what a key may see.

``serving_version`` is the one resolver of every protocol (v1 predict, v2 infer, metadata and
readiness, job submission): a model the key may not see is 404, the same answer as one that
does not exist; an unknown version or alias is 404; no version to serve yet is 503.

The request path reads the registry through ``RegistryMemo``, this process's memo of model rows
and resolved versions: a change anywhere (a promotion in the admin, a version validated by a
worker) bumps the shared registry generation (``registry.signals``), which each process polls
every INFERENCE_REGISTRY_POLL_SECONDS; the process that made the change forgets at once.

An alias with a weighted split (a canary) is memoized as its ``routing.Route`` (versions and
weights), never as one pick of it: each request picks its version from the memo (by weight, or by
its X-Routing-Key), with no database read and nothing that blocks the event loop. The route also
carries the alias's shadow (version, percent), for ``inference.shadow``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from django.core.signals import setting_changed

from registry.models import ModelAlias, ModelVersion, RegisteredModel
from registry.selectors import is_registry_name, model_list, shadow_resolve, targets_resolve
from registry.signals import GENERATION_CACHE_KEY, generation_cache

from .conf import hot
from .errors import NotFound, ServiceUnavailable
from .offload import WouldBlock
from .routing import Route

_MISSING = object()
MEMO_MAX = 10_000  # resolved (model, ref) pairs kept; bounded against random refs


class RegistryMemo:
    """This process's memo of the registry reads on the request path (thread-safe).

    Reads take ``may_block``: with False, a read that needs the database or the shared cache
    (a miss, or the generation is due a check) raises WouldBlock before it starts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, str], Any] = {}
        self._generation: Any = None
        self._checked = 0.0

    def forget(self, **_: Any) -> None:
        """Forget everything (the registry changed in this process, or settings did)."""
        with self._lock:
            self._memo.clear()
            self._checked = 0.0

    def _fresh(self, may_block: bool) -> None:
        now = time.monotonic()
        if now - self._checked < hot.INFERENCE_REGISTRY_POLL_SECONDS:
            return
        if not may_block:
            raise WouldBlock(("registry-generation",))  # one check at a time (offload.without_blocking)
        try:
            generation = generation_cache().get(GENERATION_CACHE_KEY)
        except Exception:  # noqa: BLE001 - cache down: fall back to re-reading the database
            generation = object()
        with self._lock:
            if generation != self._generation:
                self._memo.clear()
                self._generation = generation
            self._checked = now

    def _read(self, key: tuple[str, str], read: Any, may_block: bool) -> Any:
        self._fresh(may_block)
        found = self._memo.get(key, _MISSING)
        if found is _MISSING:
            if not may_block:
                raise WouldBlock(("registry", *key))
            found = read()
            with self._lock:
                if len(self._memo) >= MEMO_MAX:
                    self._memo.clear()
                self._memo[key] = found
        return found

    def model(self, name: str, *, may_block: bool = True) -> RegisteredModel | None:
        return self._read(("model", name), lambda: RegisteredModel.objects.filter(name=name).first(), may_block)

    def route(self, model: RegisteredModel, ref: str | int | None, *, may_block: bool = True) -> Route | None:
        """The versions `ref` names (a number, an alias, or None: production, else the newest ready), with
        their weights: one version, or an alias's split, and the alias's shadow. The split is kept, not one
        pick of it."""
        def read() -> Route | None:
            targets = targets_resolve(model=model, ref=ref)
            return Route(targets, shadow_resolve(model=model, ref=ref)) if targets else None
        return self._read((model.name, "" if ref is None else str(ref)), read, may_block)

    def version(self, model: RegisteredModel, ref: str | int | None, *, routing_key: str | None = None,
                may_block: bool = True) -> ModelVersion | None:
        """The version that answers one request for `ref`: picked by weight from a split alias (by the
        routing key's stable bucket when there is one), without reading the database once memoized."""
        route = self.route(model, ref, may_block=may_block)
        return route.pick(routing_key) if route is not None else None

    def aliased(self, model: RegisteredModel, *, may_block: bool = True) -> frozenset[int]:
        """The ids of the model's versions that an alias points at (as its version, in its split or as
        its shadow: each gets requests)."""
        def read() -> frozenset[int]:
            rows = list(ModelAlias.objects.filter(model=model).values_list("version_id", "split", "shadow"))
            numbers = {int(t["version"]) for _, split, _ in rows for t in split or ()}
            numbers |= {int(shadow["version"]) for _, _, shadow in rows if shadow}
            ids = set(ModelVersion.objects.filter(model=model, version__in=numbers).values_list("pk", flat=True))
            return frozenset({pk for pk, _, _ in rows} | ids)
        return self._read((model.name, "#aliased"), read, may_block)


memo = RegistryMemo()
setting_changed.connect(memo.forget, dispatch_uid="inference.selectors.memo")


def visible_model(*, model_name: str, key: Any, may_block: bool = True) -> RegisteredModel:
    """The model if it exists and the key may see it; else NotFound (the same answer for both)."""
    if not is_registry_name(model_name) or (key is not None and not key.may_see(model_name)):
        raise NotFound(f"No model named {model_name!r}.")
    model = memo.model(model_name, may_block=may_block)
    if model is None:
        raise NotFound(f"No model named {model_name!r}.")
    return model


def serving_route(*, model_name: str, ref: str | int | None, key: Any, may_block: bool = True) -> Route:
    """The route of a request for `model_name` (at `ref`): its versions by weight and its shadow; NotFound
    (404) or ServiceUnavailable (503)."""
    model = visible_model(model_name=model_name, key=key, may_block=may_block)
    route = memo.route(model, ref, may_block=may_block)
    if route is None:
        if ref is None:
            raise ServiceUnavailable(
                f"Model {model_name!r} has no ready version and no production alias yet.", retry_after=30
            )
        raise NotFound(f"Model {model_name!r} has no version or alias {str(ref)!r}.")
    return route


def serving_version(*, model_name: str, ref: str | int | None, key: Any, routing_key: str | None = None,
                    may_block: bool = True) -> ModelVersion:
    """The version a request for `model_name` (at `ref`) is served by; NotFound (404) or ServiceUnavailable (503).
    An alias with a split picks one of its versions by weight, or by `routing_key` (sticky) when given."""
    return serving_route(model_name=model_name, ref=ref, key=key, may_block=may_block).pick(routing_key)


def may_load_on_demand(*, version: ModelVersion, key: Any, may_block: bool = True) -> bool:
    """Whether a request may make this process load `version` (and so evict others from its model cache):
    the version an alias points at, the one a request without a version gets, or any version of a model
    the key is restricted to (its allowed models name it), a pinned (pre-loaded) version. Any other version answers only once it is
    loaded (preloaded, or loaded by a request that may load it)."""
    if key is not None and key.models is not None and version.model.name in key.models:
        return True
    if version.pinned:  # pre-loaded by an operator (registry.loading): every process keeps it loaded
        return True
    if version.pk in memo.aliased(version.model, may_block=may_block):
        return True
    default = memo.route(version.model, None, may_block=may_block)
    return default is not None and version in default


def ready_version_numbers(model: RegisteredModel) -> list[int]:
    """The numbers of the model's ready, live versions, oldest first (the v2 model metadata's versions)."""
    return list(model.versions.filter(status=ModelVersion.Status.READY, archived=False)
                .order_by("version").values_list("version", flat=True))


def models_for_key(key: Any, *, names: list[str] | None = None) -> list[RegisteredModel]:
    """The models a key may see (all, or those of `names`), with versions and aliases prefetched."""
    if key is not None and key.models is not None:
        names = sorted(key.models if names is None else set(names) & key.models)
    return list(model_list(names=names))
