"""Admin for the registry: upload versions, see validation, move aliases with history, release
(split, promote, roll back) from a model's page.

Every write goes through ``registry.services``; versions are immutable once registered
(their change page is read-only, with actions to re-validate or archive).
"""

from .aliases import AliasEventAdmin, AliasForm, ModelAliasAdmin, RegistryEventAdmin
from .model_page import RegisteredModelAdmin
from .versions import CODE_FORMAT_WARNING, HardwareTargetAdmin, ModelVersionAdmin, ModelVersionUploadForm

__all__ = [
    "CODE_FORMAT_WARNING", "AliasEventAdmin", "AliasForm", "HardwareTargetAdmin", "ModelAliasAdmin",
    "ModelVersionAdmin", "ModelVersionUploadForm", "RegisteredModelAdmin", "RegistryEventAdmin",
]
