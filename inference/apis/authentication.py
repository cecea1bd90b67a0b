"""DRF's side of API-key access for the DRF views (the registry API, jobs, model listings).

These adapt ``inference.access`` (the one place keys, scopes and rates are checked) to DRF's
pipeline: ``APIKeyAuthentication`` (401 with ``WWW-Authenticate: Api-Key``), ``HasScope`` (403 when the
key lacks the view's ``required_scope``) and ``PlatformAPIView.check_throttles`` (429). The async
predict and infer views call ``access.authorize`` instead, with the same three checks in the same
order.
"""

from __future__ import annotations

from typing import Any

from rest_framework import authentication, permissions

from .. import access
from ..keys import APIKey


class APIKeyAuthentication(authentication.BaseAuthentication):
    """Authenticate a request by its API key; `request.auth` becomes the KeyInfo."""

    keyword = "Api-Key"

    def authenticate(self, request: Any) -> tuple[access.KeyInfo, access.KeyInfo]:
        info = access.authenticate(request)
        access.bind(request, info)
        return info, info

    def authenticate_header(self, request: Any) -> str:
        return self.keyword


class HasScope(permissions.BasePermission):
    """Allow a view's action only to keys with the view's `required_scope`."""

    def has_permission(self, request: Any, view: Any) -> bool:
        info = getattr(request, "auth", None)
        if not isinstance(info, access.KeyInfo):
            return False
        access.check_scope(info, getattr(view, "required_scope", APIKey.Scope.INFER))  # raises PermissionDenied
        return True

