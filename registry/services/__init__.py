"""Writes to the registry. The admin, the commands and the registry API all call these.

Every function is keyword-only and atomic. A version is registered in two steps that
never leave a half-written row: the artifact and config are checked (and, for a
synchronous registration, validated in a separate process) *before* anything is
stored; then the file and the row are written in one transaction, and the file is
removed again if that transaction fails.

    versions.py   models and versions: create, register, validate again, archive
    aliases.py    aliases: a version, a weighted split, a shadow; promote, roll back, delete
    common.py     who acted (history entries), names
"""

from .aliases import alias_delete, alias_promote, alias_roll_back, alias_set
from .common import actor_for, check_name, record
from .versions import (
    config_check,
    model_create,
    model_get_or_create,
    model_version_archive,
    model_version_register,
    model_version_validate,
)

__all__ = [
    "actor_for", "alias_delete", "alias_promote", "alias_roll_back", "alias_set", "check_name", "config_check",
    "model_create", "model_get_or_create", "model_version_archive", "model_version_register",
    "model_version_validate", "record",
]
