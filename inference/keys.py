"""API keys: the key model (hashed, scoped, expiring, revocable).

Keys are djangorestframework-api-key keys: only a prefix and a SHA-512 hash of the key
are stored, and the plain key is shown once, at creation. On top of the library's
model a key carries a scope (``infer`` or ``manage``), an optional list of models it may
see (empty = all), and its own rate limit.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from datetime import datetime
from functools import partial
from typing import Any

from django.core.cache import cache
from django.core.validators import RegexValidator
from django.db import models, transaction
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey, BaseAPIKeyManager

logger = logging.getLogger("inference.keys")

# Authentication caches what it needs of a key for this long (seconds); a change to the
# key drops the entry at once (key_info_forget), this bounds any missed invalidation.
KEY_CACHE_SECONDS = 30


def key_cache_name(prefix: str) -> str:
    return f"apikey:{prefix}"


class VerifiedKeys:
    """This process's memo of keys it verified lately: prefix -> (until, SHA-256 of the key, info).

    A request whose key was verified less than ``INFERENCE_KEY_MEMO_SECONDS`` ago in this process
    skips the shared cache's read and the SHA-512 check: the event loop authenticates it from
    memory, without a thread (``inference.access``). A change to a key drops its entry here at once (``key_info_forget``); the other
    web processes see the change when their entry ends, within those seconds. Only keys that passed
    the hash check are kept (a wrong key never enters), and never the key itself, only its digest.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._entries: dict[str, tuple[float, bytes, Any]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.sha256(key.encode()).digest()

    def get(self, prefix: str, digest: bytes) -> Any | None:
        entry = self._entries.get(prefix)
        if entry is None or entry[0] <= time.monotonic() or not hmac.compare_digest(entry[1], digest):
            return None
        return entry[2]

    def put(self, prefix: str, digest: bytes, info: Any, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[prefix] = (time.monotonic() + seconds, digest, info)

    def forget(self, prefix: str | None = None) -> None:
        with self._lock:
            if prefix is None:
                self._entries.clear()
            else:
                self._entries.pop(prefix, None)


verified_keys = VerifiedKeys()


def _drop_cached(prefix: str) -> None:
    verified_keys.forget(prefix)
    try:
        cache.delete(key_cache_name(prefix))
    except Exception:  # noqa: BLE001 - the entry expires on its own within KEY_CACHE_SECONDS
        logger.warning("could not drop cached API key info for prefix %s: the change reaches requests within "
                       "%s s; check the cache (REDIS_URL)", prefix, KEY_CACHE_SECONDS)


def key_info_forget(prefix: str) -> None:
    """Drop a key's cached info (after it is revoked, re-scoped or deleted): now, and again when the
    current transaction commits. Until the commit, another request reads the old row and may cache it
    again (for KEY_CACHE_SECONDS); the second drop, after the commit, leaves only the new row to read."""
    _drop_cached(prefix)
    if transaction.get_connection().in_atomic_block:
        transaction.on_commit(partial(_drop_cached, prefix), robust=True)


rate_validator = RegexValidator(
    r"^[1-9][0-9]*/[1-9]?[0-9]*[smhd]$",
    'A rate is "<count>/<period>" with a period of s, m, h or d, optionally with a number: "100/s", "5000/h", "10/5m".',
)


class APIKeyQuerySet(models.QuerySet):
    """Bulk changes (the admin's "Delete selected", ``update()``) drop the keys' cached info too."""

    def _prefixes(self) -> list[str]:
        return list(self.values_list("prefix", flat=True))

    def delete(self) -> tuple[int, dict[str, int]]:
        prefixes = self._prefixes()
        result = super().delete()
        for prefix in prefixes:
            key_info_forget(prefix)
        return result

    delete.alters_data = True  # type: ignore[attr-defined]
    delete.queryset_only = True  # type: ignore[attr-defined]

    def update(self, **kwargs: Any) -> int:
        prefixes = self._prefixes()
        count = super().update(**kwargs)
        for prefix in prefixes:
            key_info_forget(prefix)
        return count

    update.alters_data = True  # type: ignore[attr-defined]


class APIKeyManager(BaseAPIKeyManager.from_queryset(APIKeyQuerySet)):  # type: ignore[misc]
    def get_usable_keys(self) -> models.QuerySet:
        """Return keys that are neither revoked nor expired (the library checks only revocation)."""
        now = timezone.now()
        return super().get_usable_keys().filter(models.Q(expiry_date__isnull=True) | models.Q(expiry_date__gt=now))


class APIKey(AbstractAPIKey):
    """A client's key: scope, visible models, rate, expiry, revocation."""

    class Scope(models.TextChoices):
        INFER = "infer", "infer: predictions and jobs"
        MANAGE = "manage", "manage: register versions and move aliases"

    objects = APIKeyManager()

    scope = models.CharField(max_length=8, choices=Scope.choices, default=Scope.INFER)
    allowed_models = models.ManyToManyField(
        "registry.RegisteredModel",
        blank=True,
        related_name="api_keys",
        help_text="The models this key may see and use. Leave empty for all models.",
    )
    rate = models.CharField(
        max_length=20,
        blank=True,
        validators=[rate_validator],
        help_text='Requests allowed per period, e.g. "100/s". Empty: the platform default (INFERENCE_DEFAULT_RATE).',
    )
    created_by = models.ForeignKey(
        "auth.User", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", editable=False
    )
    may_upload_code = models.BooleanField(
        "may upload code artifacts",
        default=False,
        help_text=(
            "Manage keys only: may upload TorchScript / torch.export artifacts through the registry API. "
            "Those files run code on this server when loaded; the platform must also allow them "
            "(INFERENCE_ALLOW_CODE_ARTIFACTS)."
        ),
    )

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def clean(self) -> None:
        super().clean()
        if self.may_upload_code and self.scope != self.Scope.MANAGE:
            from django.core.exceptions import ValidationError

            raise ValidationError(
                {"may_upload_code": "Only a manage key uploads artifacts; an infer key cannot hold this flag."}
            )

    def save(self, *args: Any, **kwargs: Any) -> None:
        super().save(*args, **kwargs)
        key_info_forget(self.prefix)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        prefix = self.prefix
        result = super().delete(*args, **kwargs)
        key_info_forget(prefix)
        return result


def api_key_create(
    *,
    name: str,
    scope: str = APIKey.Scope.INFER,
    model_names: list[str] | None = None,
    rate: str = "",
    expires: datetime | None = None,
    created_by: Any = None,
    may_upload_code: bool = False,
) -> tuple[APIKey, str]:
    """Create a key and return it with the plain key (shown once, never stored)."""
    from django.core.exceptions import ValidationError
    from django.db import transaction

    from registry.models import RegisteredModel

    model_names = model_names or []
    found = list(RegisteredModel.objects.filter(name__in=model_names))
    missing = sorted(set(model_names) - {m.name for m in found})
    if missing:
        raise ValidationError(f"Unknown model(s): {', '.join(missing)}.", code="unknown_model")
    if expires is not None and expires <= timezone.now():
        raise ValidationError("The expiry date is in the past.", code="invalid_expiry")
    with transaction.atomic():
        key = APIKey(name=name, scope=scope, rate=rate, expiry_date=expires, created_by=created_by,
                     may_upload_code=may_upload_code)
        plain = APIKey.objects.assign_key(key)
        key.full_clean()
        key.save()
        key.allowed_models.set(found)
    key_info_forget(key.prefix)
    return key, plain


def api_keys_revoke(keys: models.QuerySet) -> int:
    """Revoke `keys` (a queryset of APIKey); return how many were not revoked before.

    Revocation cannot be undone. Requests with these keys are refused as soon as the transaction
    commits (the cached info is dropped then, ``key_info_forget``)."""
    revoked = keys.filter(revoked=False).update(revoked=True)
    logger.info("revoked %d API key(s)", revoked)
    return revoked


def keys_only_for_model_revoke(model: Any) -> int:
    """Revoke the keys whose one allowed model is `model`, which is being deleted: without it their list
    of allowed models would be empty, and an empty list means every model. Keys that allow other
    models too keep those; keys for every model are not touched. Return how many were revoked."""
    from django.db.models import Count

    restricted = APIKey.objects.filter(allowed_models=model).values_list("pk", flat=True)
    only = list(APIKey.objects.filter(pk__in=list(restricted)).annotate(models_count=Count("allowed_models"))
                .filter(models_count=1).values_list("pk", flat=True))
    if not only:
        return 0
    prefixes = list(APIKey.objects.filter(pk__in=only).values_list("prefix", flat=True))
    revoked = api_keys_revoke(APIKey.objects.filter(pk__in=only))
    logger.warning("model %s deleted: revoked the API key(s) %s, which were allowed that model only "
                   "(an empty list of allowed models would mean every model)", model.name, ", ".join(prefixes))
    return revoked


CODE_UPLOAD_PERMISSION = "registry.upload_code_artifact"


def may_grant_code_upload(user: Any) -> bool:
    """Only a user who may upload code artifacts may give a key that right (``may_upload_code``)."""
    return bool(user is not None and user.has_perm(CODE_UPLOAD_PERMISSION))


def check_code_upload_grant(user: Any, key: APIKey) -> None:
    """PermissionDenied if `user` would change `key`'s ``may_upload_code`` without holding
    ``registry.upload_code_artifact`` (whatever the form showed: a forged POST included)."""
    from django.core.exceptions import PermissionDenied

    if may_grant_code_upload(user):
        return
    stored = APIKey.objects.filter(pk=key.pk).values_list("may_upload_code", flat=True).first() if key.pk else None
    if bool(key.may_upload_code) != bool(stored):
        logger.warning("refused: user %s tried to change may_upload_code of API key %s without the %s permission",
                       getattr(user, "pk", None), key.prefix, CODE_UPLOAD_PERMISSION)
        raise PermissionDenied(f"Only a user with the {CODE_UPLOAD_PERMISSION} permission may change "
                               "whether a key may upload code artifacts.")
