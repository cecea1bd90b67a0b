"""Pre-loading and unloading a version in every serving process (Triton's model control, per version).

``version_load`` marks a version ``pinned``: every web process loads it (``inference.loadctl``)
within INFERENCE_REGISTRY_POLL_SECONDS of the commit, and keeps it loaded although no alias points
at it yet (a canary's candidate, pre-loaded before the split moves, has no first-request stall).
``version_unload`` clears the mark: processes unload it unless an alias (or the default route)
still sends requests to it, which is refused here (409): requests through the alias would load it
again at once. Both bump the registry generation, the broadcast every process already polls.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from .models import ModelVersion, RegisteredModel, RegistryEvent
from .signals import announce_change
from .splits import aliases_naming


@transaction.atomic
def version_load(*, version: ModelVersion, actor: str = "system") -> ModelVersion:
    """Pin `version` (keep it loaded in every process); only a ready, unarchived version. Idempotent."""
    RegisteredModel.objects.select_for_update().filter(pk=version.model_id).first()  # as alias_set
    version.refresh_from_db(fields=["status", "archived", "pinned"])
    if version.archived:
        raise ValidationError(f"{version} is archived: it cannot be loaded.", code="archived")
    if version.status != ModelVersion.Status.READY:
        raise ValidationError(f"{version} is {version.status}, not ready: only a ready version can be loaded.",
                              code="not_ready")
    if not version.pinned:
        version.pinned = True
        version.save(update_fields=["pinned"])
        RegistryEvent.objects.create(model=version.model, version=version.version, actor=actor,
                                     action=RegistryEvent.Action.VERSION_LOADED)
        announce_change()
    return version


@transaction.atomic
def version_unload(*, version: ModelVersion, actor: str = "system") -> ModelVersion:
    """Unpin `version`: every process unloads it. Refused (409) while an alias points at it. Idempotent."""
    RegisteredModel.objects.select_for_update().filter(pk=version.model_id).first()
    names = aliases_naming(version)
    if names:
        raise ValidationError(
            f"{version} is the target of alias(es) {', '.join(sorted(names))}: requests through them would load "
            "it again; move the alias(es) first.", code="alias_target")
    version.refresh_from_db(fields=["pinned"])
    if version.pinned:
        version.pinned = False
        version.save(update_fields=["pinned"])
        RegistryEvent.objects.create(model=version.model, version=version.version, actor=actor,
                                     action=RegistryEvent.Action.VERSION_UNLOADED)
    # Announced even when it was not pinned: a version loaded on demand (a key limited to the model) is
    # unloaded from every process too.
    announce_change()
    return version
