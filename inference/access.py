"""Who may call, and how often: API key authentication, scopes and per-key rate limits.

``authorize(request, scope=..., model=...)`` is the one check every API request passes, in this
order: the key (``authenticate``: 401), its scope (``check_scope``: 403), its rate (``count_request``:
429). The async views (v1 predict, v2) call ``authorize``; DRF's views reach the same three
functions through ``inference.apis.authentication`` and ``PlatformAPIView.check_throttles``.

* A key is read from ``Authorization: Api-Key <key>`` or ``X-API-Key: <key>``, looked up by its
  prefix (cached briefly in the shared cache), its hash verified in constant time; revoked and
  expired keys are refused. A key this process verified within ``INFERENCE_KEY_MEMO_SECONDS`` is
  trusted from memory (``inference.keys.VerifiedKeys``).
* Failed authentications (unknown keys, wrong secrets) are counted per client address
  (``INFERENCE_AUTH_FAILURE_RATE``); past that rate, keys this process has not verified are refused
  with a 429 before any lookup, until the window ends.
* Rates are counted in the shared cache, in leases for fast keys (``inference.ratelimit``). An
  unreachable cache never fails a request: the check is skipped, logged and counted (fail-open).

``authenticate`` and ``count_request`` take ``may_block``: with False they answer from this
process's memory or raise ``WouldBlock`` before doing anything, so that an event loop calls them
first and sends only a miss to a thread (``inference.offload.without_blocking``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from inference_platform import login_throttle

from .conf import hot
from .errors import AuthenticationThrottled, NotAuthenticated, PermissionDenied, RateLimited
from .keys import KEY_CACHE_SECONDS, APIKey, key_cache_name, verified_keys
from .monitoring import metrics
from .monitoring.logs import key_prefix_var
from .offload import WouldBlock, without_blocking
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


def authenticate(request: Any, *, may_block: bool = True) -> KeyInfo:
    """Return the request's key info; NotAuthenticated (401) otherwise."""
    key = extract_key(request)
    if key is None:
        if request.META.get("HTTP_AUTHORIZATION"):
            raise NotAuthenticated('Use "Authorization: Api-Key <key>" or "X-API-Key: <key>".')
        raise NotAuthenticated()
    prefix, dot, _ = key.partition(".")
    # Prefixes are ASCII letters and digits (get_random_string): anything else (a NUL, which
    # PostgreSQL refuses in a query) cannot be a key and never reaches the database.
    if not dot or not prefix or len(key) > 200 or not (prefix.isascii() and prefix.isalnum()):
        raise NotAuthenticated("Invalid API key.")
    digest = verified_keys.digest(key)
    info = verified_keys.get(prefix, digest)
    if info is None:
        address = client_address(request)
        refuse_throttled(address)
        if not may_block:
            raise WouldBlock(("api-key", prefix, digest))  # one lookup per key at a time (offload.without_blocking)
        info = key_info_for_prefix(prefix)
        if info is None or not APIKey.objects.key_generator.verify(key, info.hashed_key):
            count_failure(address)
            raise NotAuthenticated("Invalid API key.")
        verified_keys.put(prefix, digest, info, settings.INFERENCE_KEY_MEMO_SECONDS)
    if info.revoked:
        raise NotAuthenticated("This API key has been revoked.")
    if info.expired:
        raise NotAuthenticated("This API key has expired.")
    return info


AUTH_FAILURES = "auth-failures"


def client_address(request: Any) -> str:
    """The address failed authentications are counted for: the one the admin's login throttle counts
    (behind the TLS proxy, DJANGO_BEHIND_TLS_PROXY, the address it appended to X-Forwarded-For; else
    the connection's peer)."""
    return login_throttle.client_address(request) or "unknown"


def refuse_throttled(address: str) -> None:
    """AuthenticationThrottled (429) when `address` used up INFERENCE_AUTH_FAILURE_RATE in this window, as far
    as this process knows: from memory, so a throttled client costs no database query and no cache access.
    Keys this process verified recently (``verified_keys``) are not asked about: they pass before this."""
    rate = settings.INFERENCE_AUTH_FAILURE_RATE
    if rate and (wait := limiter.spent(AUTH_FAILURES, address, rate)):
        metrics.AUTH_FAILURES_THROTTLED.inc()
        raise AuthenticationThrottled(wait)


def count_failure(address: str) -> None:
    """Count a failed authentication of `address` (shared by every process through the cache)."""
    rate = settings.INFERENCE_AUTH_FAILURE_RATE
    if not rate:
        return
    try:
        limiter.hit(AUTH_FAILURES, address, rate)
    except CacheUnavailable as exc:  # fail open, as rate limits do
        logger.warning("failed authentications not counted: the cache is unreachable (%s)", exc)


def bind(request: Any, info: KeyInfo) -> None:
    """Make `info` the request's key: ``request.auth``, and the key prefix on the request's log
    lines and record (never the key). Called where the request's own context is (not in a thread)."""
    request.auth = request.api_key = info
    key_prefix_var.set(info.prefix)


def check_scope(info: KeyInfo, required: str) -> None:
    """PermissionDenied (403) unless the key has the `required` scope."""
    if info.scope != required:
        raise PermissionDenied(
            f"This API key has scope '{info.scope}'; this action needs scope '{required}'. "
            "Create a key with that scope (manage.py create_api_key --scope ...)."
        )


def count_request(info: KeyInfo, *, model: str = "", may_block: bool = True) -> None:
    """Count this request against its key's rate; RateLimited (429) over the limit."""
    if not hot.RATELIMIT_ENABLE:
        return
    try:
        usage = limiter.hit("api", info.prefix, info.rate or hot.INFERENCE_DEFAULT_RATE, may_block=may_block)
    except CacheUnavailable as exc:  # documented fail-open
        logger.warning("rate limit not enforced: the cache is unreachable (%s)", exc)
        metrics.RATELIMIT_FAIL_OPEN.inc()
        return
    if not usage.allowed:
        metrics.RATELIMIT_REJECTED.labels(model).inc()
        raise RateLimited(wait=max(1, usage.time_left))


async def authorize(request: Any, *, scope: str = APIKey.Scope.INFER, model: str = "") -> KeyInfo:
    """The key of the request, allowed `scope` and counted against its rate (401, 403, 429 otherwise)."""
    info = await without_blocking(authenticate, request)
    bind(request, info)
    check_scope(info, scope)
    await without_blocking(count_request, info, model=model)
    return info
