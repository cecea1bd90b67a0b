"""Failed admin logins, counted per client address and per username (``INFERENCE_ADMIN_LOGIN_RATE``).

A login form posted while the address or the username has used up its failures for the window
is refused before any password is checked: guessing a staff password costs a window per
``limit`` guesses, from any number of addresses for one user, or for any users from one address.
The counts live in the shared cache (``RATELIMIT_USE_CACHE``), in fixed windows; an unreachable
cache lets logins through (logged): the admin never locks everyone out because Redis is down.
Only digests of addresses and usernames are stored.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger("inference.admin_login")

RATE = re.compile(r"^(?P<limit>[1-9][0-9]*)/(?P<count>[1-9][0-9]*)?(?P<unit>[smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """'10/m' -> (10, 60); '5/15m' -> (5, 900)."""
    match = RATE.match(rate)
    if match is None:
        raise ImproperlyConfigured(
            f'INFERENCE_ADMIN_LOGIN_RATE={rate!r} is not "<count>/<period>" with a period of s, m, h or d, '
            'optionally with a number ("10/m", "20/15m"); leave it empty for no limit.'
        )
    return int(match["limit"]), int(match["count"] or 1) * UNIT_SECONDS[match["unit"]]


def client_address(request: Any) -> str:
    """The client's address: behind the TLS proxy (DJANGO_BEHIND_TLS_PROXY) the one it appended to
    X-Forwarded-For (the last: earlier ones are the client's word), else the peer's."""
    if settings.SECURE_PROXY_SSL_HEADER:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").rsplit(",", 1)[-1].strip()
        if forwarded:
            return forwarded
    return request.META.get("REMOTE_ADDR", "")


@dataclass(frozen=True)
class Refusal:
    message: str
    retry_after: int  # seconds until the window ends


def _counters(request: Any, username: str) -> tuple[int, int, list[str]]:
    limit, period = parse_rate(settings.INFERENCE_ADMIN_LOGIN_RATE)
    window = int(time.time()) // period
    names = []
    for kind, value in (("address", client_address(request)), ("user", username.strip().casefold())):
        digest = hashlib.sha256(value.encode()).hexdigest()[:32]
        names.append(f"admin-login:{kind}:{digest}:{period}:{window}")
    return limit, period, names


def refusal(request: Any, username: str) -> Refusal | None:
    """A Refusal when this address or this username has no failed login left in the window."""
    if not settings.INFERENCE_ADMIN_LOGIN_RATE:
        return None
    limit, period, names = _counters(request, username)
    try:
        counts = caches[settings.RATELIMIT_USE_CACHE].get_many(names)
    except Exception as exc:  # noqa: BLE001 - fail open: never lock every admin out
        logger.warning("admin login throttle not enforced: the cache is unreachable (%s); check REDIS_URL",
                       type(exc).__name__)
        return None
    spent = [kind for kind, name in zip(("address", "username"), names) if counts.get(name, 0) >= limit]
    if not spent:
        return None
    retry_after = max(1, period - int(time.time()) % period)
    logger.warning("admin login refused without checking the password: %d failed logins for this %s (address %s, "
                   "username %r) in %d s (INFERENCE_ADMIN_LOGIN_RATE=%s); it may try again in %d s", limit,
                   " and ".join(spent), client_address(request), username[:150], period,
                   settings.INFERENCE_ADMIN_LOGIN_RATE, retry_after)
    return Refusal(f"Too many failed logins from this address or for this username. Try again in {retry_after} "
                   "seconds.", retry_after)


def record_failure(request: Any, username: str) -> None:
    """Count one failed login for the address and for the username."""
    if not settings.INFERENCE_ADMIN_LOGIN_RATE:
        return
    _, period, names = _counters(request, username)
    cache = caches[settings.RATELIMIT_USE_CACHE]
    for name in names:
        try:
            if not cache.add(name, 1, period + 5):
                cache.incr(name)
        except ValueError:  # the counter expired between add and incr
            cache.add(name, 1, period + 5)
        except Exception as exc:  # noqa: BLE001 - see refusal(): fail open
            logger.warning("failed admin login not counted: the cache is unreachable (%s)", type(exc).__name__)
            return
