"""What every registry write shares: who acted, and the model's history entry."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError

from ..models import RegisteredModel, RegistryEvent
from ..selectors import is_registry_name


def actor_for(*, user: Any = None, api_key: Any = None, default: str = "system") -> str:
    """Return how history records name who acted: 'user:<name>' or 'key:<name> (<prefix>)'."""
    if user is not None and getattr(user, "is_authenticated", False):
        return f"user:{user.get_username()}"
    if api_key is not None:
        return f"key:{api_key.name} ({api_key.prefix})"
    return default


def record(model: RegisteredModel, action: str, actor: str, *, version: int | None = None, detail: str = "") -> None:
    """Add one entry to the model's history (RegistryEvent); call inside the change's transaction."""
    RegistryEvent.objects.create(model=model, version=version, action=action, actor=actor or "system",
                                 detail=detail[:500])


def check_name(value: str, what: str) -> None:
    """The field's RegexValidator ends in `$`, which also matches before a final newline: refuse
    "name\n" here (the same rule, matched in full)."""
    if not is_registry_name(value):
        raise ValidationError(
            f"{what} name {value!r}: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit.",
            code="invalid",
        )
