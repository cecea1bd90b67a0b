"""Readiness (``/readyz``): can this process serve? Database, broker, cache, production models.

Every check reports ``{"ok": bool, "ms": float, ...}``, with a reason code and the error when
red; the process is ready when all are green. The errors (exception text: host names, users)
are for a staff session or the metrics token and the logs; ``public_body`` keeps the codes only. Checks are cheap enough for a probe every few
seconds: one ``SELECT 1``, one broker ping (a short-timeout connection for Redis, so a
dead Redis cannot hold the probe), one cache round trip, and per model with a
``production`` alias a look at its version row and artifact file. An artifact's sha256
is computed once per file (size and modification time unchanged) and remembered; a
version already loaded in this process was verified when it loaded.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import connection

logger = logging.getLogger("inference.readiness")

PRODUCTION = "production"
_digests: dict[tuple, str] = {}
_digests_lock = threading.Lock()

# A red check's reason code, and what an anonymous probe reads instead of the error.
REASONS = {
    "database_unreachable": "the database is unreachable",
    "broker_unreachable": "the task broker is unreachable",
    "cache_unreachable": "the cache is unreachable or did not return a value just stored",
    "models_not_servable": "production model(s) not servable",
    "models_check_failed": "the production models could not be checked",
}
# Credentials that a driver might put in its error text: user:password@ in a URL, password=...
_SECRETS = re.compile(r"(?P<scheme>\w+://)[^/@\s]+@|(?P<key>password|passwd|pwd)=\S+", re.IGNORECASE)


def scrub(text: str) -> str:
    """`text` without credentials in URLs or key=value pairs (for the logs and staff details)."""
    return _SECRETS.sub(lambda m: f"{m['scheme']}***@" if m["scheme"] else f"{m['key']}=***", text)


def _error_text(exc: BaseException) -> str:
    return scrub(f"{type(exc).__name__}: {exc}".strip())[:500]


def _timed(check: Callable[[], dict[str, Any] | None], code: str) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        out = {"ok": True, **(check() or {})}
    except Exception as exc:  # noqa: BLE001 - any failure is a red check, with its reason
        out = {"ok": False, "code": code, "error": _error_text(exc)}
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
            models[alias.model.name] = {"version": alias.version.version, "ok": False, "error": _error_text(exc)}
    failing = sorted(name for name, m in models.items() if not m["ok"])
    if failing:
        raise ModelsNotReady(models, failing)
    return {"models": models}


class ModelsNotReady(Exception):
    def __init__(self, models: dict[str, Any], failing: list[str]):
        super().__init__(f"not servable: {', '.join(failing)}")
        self.models = models


def readiness() -> tuple[bool, dict[str, Any]]:
    """Run every check; return (ready, body), with every detail (see ``public_body``)."""
    checks = {
        "database": _timed(check_database, "database_unreachable"),
        "broker": _timed(check_broker, "broker_unreachable"),
        "cache": _timed(check_cache, "cache_unreachable"),
    }
    if checks["database"]["ok"]:
        started = time.perf_counter()
        try:
            checks["models"] = {"ok": True, **check_models()}
        except ModelsNotReady as exc:
            checks["models"] = {"ok": False, "code": "models_not_servable", "error": str(exc), "models": exc.models}
        except Exception as exc:  # noqa: BLE001
            checks["models"] = {"ok": False, "code": "models_check_failed", "error": _error_text(exc)}
        checks["models"]["ms"] = round((time.perf_counter() - started) * 1000, 2)
    else:
        checks["models"] = {"ok": False, "code": "database_unreachable",
                            "error": "not checked: the database is unreachable"}
    failing = [name for name, c in checks.items() if not c["ok"]]
    for name in failing:
        logger.warning("not ready: %s check failed (%s): %s; see docs/monitoring.md (/readyz)", name,
                       checks[name]["code"], checks[name]["error"])
    return not failing, {"status": "ready" if not failing else "not_ready", "failing": failing, "checks": checks}


def public_body(body: dict[str, Any]) -> dict[str, Any]:
    """`body` for an anonymous probe: reason codes and fixed messages, no error text, no model names."""
    checks = {}
    for name, check in body["checks"].items():
        shown = {k: v for k, v in check.items() if k not in ("error", "models")}
        if not check["ok"]:
            shown["error"] = REASONS[check["code"]]
        if "models" in check:
            shown["failing_models"] = sum(1 for m in check["models"].values() if not m["ok"])
            if not check["ok"] and check["code"] == "models_not_servable":
                shown["error"] = f"{shown['failing_models']} {REASONS['models_not_servable']}"
        checks[name] = shown
    return {**body, "checks": checks}
