"""API key authentication, scope permissions and per-key rate limits for the APIs.

* ``APIKeyAuthentication`` (a DRF authentication class): reads ``Authorization: Api-Key
  <key>`` or ``X-API-Key: <key>``, looks the key up by its prefix (cached briefly in the
  shared cache), verifies the hash in constant time, and refuses revoked and expired keys;
  a key this process verified in the last ``INFERENCE_KEY_MEMO_SECONDS`` is not looked up
  again (``inference.keys.VerifiedKeys``). No key or a bad one is 401 with ``WWW-Authenticate: Api-Key``.
* ``HasScope``: 403 when the key lacks the scope for the action.
* ``rate_limit``: django-ratelimit's window and counter, keyed on the key, at the key's own
  rate, counted in leases for fast keys (``inference.ratelimit``); over the limit raises
  ``RateLimited`` (429 + Retry-After). An unreachable cache never fails a
  request: the check is skipped, logged and counted (documented fail-open).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from rest_framework import authentication, exceptions, permissions

from .errors import RateLimited
from .keys import KEY_CACHE_SECONDS, APIKey, key_cache_name, verified_keys
from .monitoring import metrics
from .monitoring.logs import key_prefix_var
from .ratelimit import CacheUnavailable, limiter

logger = logging.getLogger("inference.auth")

_CACHE_MISS = object()


@dataclass(frozen=True)
class KeyInfo:
    """What a request needs to know about its key; cached, never the key itself."""

    id: str
    prefix: str
    name: str
    hashed_key: str
    scope: str
    models: frozenset[str] | None  # None: all models
    rate: str
    expiry: datetime | None
    revoked: bool

    @property
    def is_authenticated(self) -> bool:  # DRF treats request.user like a user
        return True

    def may_see(self, model_name: str) -> bool:
        return self.models is None or model_name in self.models

    @property
    def expired(self) -> bool:
        return self.expiry is not None and self.expiry <= timezone.now()


def _load_key_info(prefix: str) -> KeyInfo | None:
    row = APIKey.objects.filter(prefix=prefix).prefetch_related("allowed_models").first()
    if row is None:
        return None
    names = frozenset(m.name for m in row.allowed_models.all())
    return KeyInfo(
        id=row.pk, prefix=row.prefix, name=row.name, hashed_key=row.hashed_key, scope=row.scope,
        models=names or None, rate=row.rate, expiry=row.expiry_date, revoked=row.revoked,
    )


def key_info_for_prefix(prefix: str) -> KeyInfo | None:
    """Return the key info for a prefix: from the shared cache, else one database lookup."""
    name = key_cache_name(prefix)
    try:
        info = cache.get(name, _CACHE_MISS)
    except Exception:  # noqa: BLE001 - cache down: go to the database
        logger.warning("cache unreachable for API key lookup; reading the database")
        info = _CACHE_MISS
    if info is not _CACHE_MISS:
        return info
    info = _load_key_info(prefix)
    try:
        cache.set(name, info, KEY_CACHE_SECONDS)
    except Exception:  # noqa: BLE001
        pass
    return info


def extract_key(request: Any) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "api-key" and value.strip():
            return value.strip()
        return None
    value = request.META.get("HTTP_X_API_KEY", "").strip()
    return value or None


class APIKeyAuthentication(authentication.BaseAuthentication):
    """Authenticate a request by its API key; `request.auth` becomes the KeyInfo."""

    keyword = "Api-Key"

    def authenticate(self, request: Any) -> tuple[KeyInfo, KeyInfo] | None:
        key = extract_key(request)
        if key is None:
            if request.META.get("HTTP_AUTHORIZATION"):
                raise exceptions.AuthenticationFailed('Use "Authorization: Api-Key <key>" or "X-API-Key: <key>".')
            raise exceptions.NotAuthenticated('An API key is required: "Authorization: Api-Key <key>".')
        prefix, dot, _ = key.partition(".")
        # Prefixes are ASCII letters and digits (get_random_string): anything else (a NUL, which
        # PostgreSQL refuses in a query) cannot be a key and never reaches the database.
        if not dot or not prefix or len(key) > 200 or not (prefix.isascii() and prefix.isalnum()):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        digest = verified_keys.digest(key)
        info = verified_keys.get(prefix, digest)
        if info is None:
            info = key_info_for_prefix(prefix)
            if info is None or not APIKey.objects.key_generator.verify(key, info.hashed_key):
                raise exceptions.AuthenticationFailed("Invalid API key.")
            verified_keys.put(prefix, digest, info, settings.INFERENCE_KEY_MEMO_SECONDS)
        if info.revoked:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        if info.expired:
            raise exceptions.AuthenticationFailed("This API key has expired.")
        request.api_key = info
        key_prefix_var.set(info.prefix)  # for the request's log lines and record (never the key)
        return info, info

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class HasScope(permissions.BasePermission):
    """Allow a view's action only to keys with the view's `required_scope`."""

    message = "This API key lacks the scope for this action."

    def has_permission(self, request: Any, view: Any) -> bool:
        required = getattr(view, "required_scope", APIKey.Scope.INFER)
        info = getattr(request, "auth", None)
        if not isinstance(info, KeyInfo):
            return False
        if info.scope != required:
            self.message = (
                f"This API key has scope '{info.scope}'; this action needs scope '{required}'. "
                "Create a key with that scope (manage.py create_api_key --scope ...)."
            )
            return False
        return True


def rate_limit(request: Any, *, model: str = "") -> None:
    """Count this request against its key's rate; raise RateLimited over the limit."""
    if not getattr(settings, "RATELIMIT_ENABLE", True):
        return
    info = request.auth
    try:
        usage = limiter.hit("api", info.prefix, info.rate or settings.INFERENCE_DEFAULT_RATE)
    except CacheUnavailable as exc:  # documented fail-open
        logger.warning("rate limit not enforced: the cache is unreachable (%s)", exc)
        metrics.RATELIMIT_FAIL_OPEN.inc()
        return
    if not usage.allowed:
        metrics.RATELIMIT_REJECTED.labels(model).inc()
        raise RateLimited(wait=max(1, usage.time_left))
