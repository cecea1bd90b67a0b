"""Readiness (``/readyz``): can this process serve? Database, broker, cache, production models.

Every check reports ``{"ok": bool, "ms": float, ...}`` with the error when red; the
process is ready when all are green. Checks are cheap enough for a probe every few
seconds: one ``SELECT 1``, one broker ping (a short-timeout connection for Redis, so a
dead Redis cannot hold the probe), one cache round trip, and per model with a
``production`` alias a look at its version row and artifact file. An artifact's sha256
is computed once per file (size and modification time unchanged) and remembered; a
version already loaded in this process was verified when it loaded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection

PRODUCTION = "production"
_digests: dict[tuple, str] = {}
_digests_lock = threading.Lock()


def _timed(check: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        out = {"ok": True, **(check() or {})}
    except Exception as exc:  # noqa: BLE001 - any failure is a red check, with its reason
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}".strip()[:500]}
    out["ms"] = round((time.perf_counter() - started) * 1000, 2)
    return out


def check_database() -> dict[str, Any]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {"vendor": connection.vendor}


def check_broker() -> dict[str, Any]:
    from django_q.brokers import get_broker
    from django_q.conf import Conf

    if Conf.REDIS and not Conf.ORM:
        import redis

        options = {"socket_connect_timeout": 2, "socket_timeout": 2}
        client = (redis.Redis.from_url(Conf.REDIS, **options) if isinstance(Conf.REDIS, str)
                  else redis.Redis(**{**Conf.REDIS, **options}))
        try:
            client.ping()
            size = client.llen(get_broker().list_key)
        finally:
            client.close()
        return {"broker": "redis", "queued": size}
    broker = get_broker()
    broker.ping()
    return {"broker": broker.info(), "queued": broker.queue_size()}


def check_cache() -> dict[str, Any]:
    key = "readyz:probe"
    token = f"{time.time():.6f}"
    cache.set(key, token, 30)
    if cache.get(key) != token:
        raise RuntimeError("the cache did not return the value just stored")
    return {"backend": settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1]}


def _artifact_digest(version: Any) -> str:
    """Return the artifact's sha256, from memory when the file has not changed since it was hashed."""
    from registry.artifacts import sha256_of

    storage, name = version.artifact.storage, version.artifact.name
    try:
        stamp: Any = storage.get_modified_time(name).timestamp()
    except (NotImplementedError, AttributeError):
        stamp = None
    key = (version.pk, name, storage.size(name), stamp)
    digest = _digests.get(key)
    if digest is None:
        with storage.open(name, "rb") as fh:
            digest = sha256_of(iter(lambda: fh.read(1 << 20), b""))
        with _digests_lock:
            if len(_digests) > 1000:
                _digests.clear()
            _digests[key] = digest
    return digest


def check_version(version: Any) -> dict[str, Any]:
    """Return whether a version can be served here: ready, not archived, device present, artifact intact."""
    from registry.models import ModelVersion

    from ..pool import get_pool
    from ..runtime.devices import check_available

    out: dict[str, Any] = {"version": version.version}
    if version.archived:
        return {**out, "ok": False, "error": "the version is archived"}
    if version.status != ModelVersion.Status.READY:
        return {**out, "ok": False, "error": f"status {version.status}: {version.status_error}".strip(": ")}
    try:
        check_available(version.hardware.device_type, version.hardware.device_index)
    except Exception as exc:  # noqa: BLE001
        return {**out, "ok": False, "error": str(exc)}
    loaded = get_pool().is_loaded(version)
    out["loaded"] = loaded
    if loaded:  # verified (sha256 included) when it was loaded
        return {**out, "ok": True}
    if not version.artifact or not version.artifact.storage.exists(version.artifact.name):
        return {**out, "ok": False, "error": f"artifact file {version.artifact.name!r} is missing"}
    if _artifact_digest(version) != version.sha256:
        return {**out, "ok": False, "error": "artifact sha256 does not match the registered one"}
    return {**out, "ok": True}


def check_models() -> dict[str, Any]:
    """Every model with a production alias must be servable: {"models": {name: {...}}}."""
    from registry.models import ModelAlias

    aliases = ModelAlias.objects.filter(name=PRODUCTION).select_related("model", "version", "version__hardware")
    models = {}
    for alias in aliases.order_by("model__name"):
        try:
            models[alias.model.name] = check_version(alias.version)
        except Exception as exc:  # noqa: BLE001
            models[alias.model.name] = {"version": alias.version.version, "ok": False,
                                        "error": f"{type(exc).__name__}: {exc}"}
    failing = sorted(name for name, m in models.items() if not m["ok"])
    if failing:
        raise ModelsNotReady(models, failing)
    return {"models": models}


class ModelsNotReady(Exception):
    def __init__(self, models: dict[str, Any], failing: list[str]):
        super().__init__(f"not servable: {', '.join(failing)}")
        self.models = models


def readiness() -> tuple[bool, dict[str, Any]]:
    """Run every check; return (ready, body)."""
    checks = {
        "database": _timed(check_database),
        "broker": _timed(check_broker),
        "cache": _timed(check_cache),
    }
    if checks["database"]["ok"]:
        started = time.perf_counter()
        try:
            checks["models"] = {"ok": True, **check_models()}
        except ModelsNotReady as exc:
            checks["models"] = {"ok": False, "error": str(exc), "models": exc.models}
        except Exception as exc:  # noqa: BLE001
            checks["models"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        checks["models"]["ms"] = round((time.perf_counter() - started) * 1000, 2)
    else:
        checks["models"] = {"ok": False, "error": "not checked: the database is unreachable"}
    failing = [name for name, c in checks.items() if not c["ok"]]
    return not failing, {"status": "ready" if not failing else "not_ready", "failing": failing, "checks": checks}
