"""Which version of a weighted alias (a canary split) answers one request.

``Route`` is what the request path keeps of an alias (in ``selectors.RegistryMemo``): its versions
and their cumulative weights, read from the registry once per registry change. Picking one is pure
arithmetic on that tuple (no database, no lock, nothing that blocks the event loop): a random bucket
in 0..99, or, for a request with a routing key (the ``X-Routing-Key`` header), a stable hash of the
key, so that the same key always lands on the same version while the split stays as it is.

A route may carry a shadow, (version, percent): ``shadows()`` says whether one request is also sent
to it (a random draw per request, never the routing key: a sticky client is not always or never
shadowed). What is then done with the request is ``inference.shadow``'s business.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from typing import Any

ROUTING_HEADER = "X-Routing-Key"
_ROUTING_META = "HTTP_" + ROUTING_HEADER.upper().replace("-", "_")


def routing_key_of(request: Any) -> str | None:
    """The request's X-Routing-Key, if any (from META: ``request.headers`` builds a mapping of every header)."""
    return request.META.get(_ROUTING_META)
_random = random.Random()  # noqa: S311 - traffic splitting, not security


def key_bucket(key: str, total: int = 100) -> int:
    """The stable bucket of a routing key in 0..total-1 (the same in every process and release)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % total


class Route:
    """The versions an alias (or a version number) sends requests to, with their weights."""

    __slots__ = ("versions", "weights", "bounds", "shadow")

    def __init__(self, targets: Sequence[tuple[Any, int]], shadow: tuple[Any, int] | None = None) -> None:
        if not targets:
            raise ValueError("a route needs at least one version")
        self.shadow = (shadow[0], int(shadow[1])) if shadow is not None else None
        self.versions = tuple(version for version, _ in targets)
        self.weights = tuple(int(weight) for _, weight in targets)
        bounds, total = [], 0
        for weight in self.weights:
            total += weight
            bounds.append(total)
        self.bounds = tuple(bounds)

    @property
    def primary(self) -> Any:
        return self.versions[0]

    @property
    def total(self) -> int:
        return self.bounds[-1]

    def at(self, bucket: int) -> Any:
        """The version of bucket `bucket` (0..total-1): buckets [0, w0) go to the first version, and so on."""
        return self.versions[bisect.bisect_right(self.bounds, bucket % self.total)]

    def pick(self, routing_key: str | None = None) -> Any:
        """The version that answers one request: by weight, or by the routing key's stable bucket."""
        if len(self.versions) == 1:
            return self.versions[0]
        if routing_key:
            return self.at(key_bucket(routing_key, self.total))
        return self.at(_random.randrange(self.total))

    def shadows(self) -> bool:
        """Whether one request is also sent to the shadow: with probability percent/100 (False without one)."""
        shadow = self.shadow
        return shadow is not None and (shadow[1] >= 100 or _random.randrange(100) < shadow[1])

    def __contains__(self, version: Any) -> bool:
        return any(v.pk == version.pk for v in self.versions)
