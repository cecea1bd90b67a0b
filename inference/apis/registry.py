"""The registry API (management keys only): create models, upload versions, move aliases, archive.

A deployment pipeline's deploy step: upload a version (202, validated in the background),
poll it until `ready`, point `production` at it, and point `production` back to roll back
(docs/registry-api.md). An inference key gets 403 on every operation here; a key limited
to other models gets 404, as for a model that does not exist. Views parse and render;
``inference.services.registry`` decides.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from registry.models import AliasEvent, ModelAlias, ModelVersion

from ..errors import InvalidInput, PayloadTooLarge
from ..keys import APIKey
from ..services import registry as svc
from . import serializers as s
from .parsing import loads, refuse_oversized_upload
from .v1 import ModelListView, PlatformAPIView, json_bytes, model_summary, version_summary

E = s.ErrorSerializer
MANAGE_ONLY = "Management keys only (scope `manage`); an inference key gets 403."
UPLOAD_FIELDS = {"artifact", "config", "sha256"}


def version_url(version: ModelVersion) -> str:
    return f"/api/v1/models/{version.model.name}/versions/{version.version}"


def version_body(version: ModelVersion) -> dict[str, Any]:
    if version.created_by_key:
        created_by = version.created_by_key
    elif version.created_by is not None:
        created_by = f"user:{version.created_by.get_username()}"
    else:
        created_by = "system"
    return {
        "model": version.model.name,
        **version_summary(version, svc.version_aliases(version)),
        "sha256": version.sha256,
        "size_bytes": version.size_bytes,
        "archived": version.archived,
        "pinned": version.pinned,
        "validated_at": version.validated_at,
        "created_by": created_by,
        "url": version_url(version),
    }


def alias_body(alias: ModelAlias) -> dict[str, Any]:
    """`version` is the primary target; `split` the weighted targets (one at 100 for a plain alias);
    `shadow` the version that gets a copy of a share of the requests, or null."""
    shadow = alias.shadow_target
    return {"model": alias.model.name, "alias": alias.name, "version": alias.version.version,
            "split": [{"version": n, "weight": w} for n, w in alias.targets],
            "shadow": {"version": shadow[0], "percent": shadow[1]} if shadow else None,
            "updated_at": alias.updated_at}


def event_body(event: AliasEvent) -> dict[str, Any]:
    return {"at": event.at, "action": event.action, "from_version": event.from_version,
            "to_version": event.to_version, "from_split": event.from_split, "to_split": event.to_split,
            "from_shadow": event.from_shadow, "to_shadow": event.to_shadow, "actor": event.actor}


ALIAS_BODY_KEYS = ({"version"}, {"split"}, {"version", "shadow"}, {"split", "shadow"})


class ManageAPIView(PlatformAPIView):
    required_scope = APIKey.Scope.MANAGE.value


class ModelCollectionView(ModelListView):
    """GET lists models (inference keys, as before); POST creates one (management keys)."""

    @property
    def required_scope(self) -> str:  # read by HasScope
        method = getattr(getattr(self, "request", None), "method", "GET")
        return APIKey.Scope.MANAGE.value if method == "POST" else APIKey.Scope.INFER.value

    @extend_schema(
        operation_id="models_create",
        summary="Create a model",
        description=MANAGE_ONLY + " A key limited to some models cannot create one (403).",
        request=s.ModelCreateSerializer,
        responses={201: s.ModelSerializer, 400: E, 401: E, 403: E, 409: E, 413: E, 415: E, 429: E},
    )
    def post(self, request: Request) -> Response:
        body = loads(json_bytes(request))
        if not isinstance(body, dict):
            raise InvalidInput('The body must be a JSON object: {"name": ..., "description": ..., "task": ...}.')
        unknown = set(body) - {"name", "description", "task"}
        if unknown:
            raise InvalidInput(f"Unknown field(s) {sorted(unknown)}.", path=sorted(unknown)[0])
        fields = {}
        for field in ("name", "description", "task"):
            value = body.get(field, "")
            if not isinstance(value, str):
                raise InvalidInput(f"{field} must be a string.", path=field)
            fields[field] = value
        if not fields["name"]:
            raise InvalidInput("name is required.", path="name")
        model = svc.managed_model_create(key=request.auth, **fields)
        return Response(model_summary(model), status=201, headers={"Location": f"/api/v1/models/{model.name}"})


class VersionCollectionView(ManageAPIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        operation_id="models_versions_create",
        summary="Upload a version: 202, status `registered`, validated in the background",
        description=MANAGE_ONLY + " Multipart fields: `artifact` (file), `config` (JSON, a field or a file part), "
        "optional `sha256`. Code formats (torchscript, torch_export) need INFERENCE_ALLOW_CODE_ARTIFACTS and a key "
        "with may_upload_code (else 403). Poll the version's URL until its status is `ready` or `failed`.",
        request={"multipart/form-data": s.VersionUploadSerializer},
        responses={202: s.ManagedVersionSerializer, 400: E, 401: E, 403: E, 404: E, 413: E, 415: E, 429: E},
    )
    def post(self, request: Request, name: str) -> Response:
        model = svc.managed_model(name=name, key=request.auth)
        refuse_oversized_upload(request, limit=settings.INFERENCE_MAX_ARTIFACT_BYTES, what="artifacts",
                                setting="INFERENCE_MAX_ARTIFACT_BYTES", details={"reason": "artifact_too_large"})
        data, files = request.data, request.FILES
        unknown = (set(data) | set(files)) - UPLOAD_FIELDS
        if unknown:
            raise InvalidInput(f"Unknown field(s) {sorted(unknown)}; send artifact, config and optionally sha256.",
                               path=sorted(unknown)[0])
        artifact = files.get("artifact")
        if artifact is None:
            raise InvalidInput('Send the artifact as a file in the multipart field "artifact".', path="artifact")
        version = svc.version_upload(key=request.auth, model=model, artifact=artifact,
                                     config=self._config(data, files), expected_sha256=data.get("sha256", ""))
        return Response(version_body(version), status=202, headers={"Location": version_url(version)})

    @staticmethod
    def _config(data: Any, files: Any) -> Any:
        part = files.get("config")
        raw = part.read(settings.INFERENCE_MAX_BODY_BYTES + 1) if part is not None else data.get("config")
        if not raw:
            raise InvalidInput('Send the version config as JSON in the multipart field "config".', path="config")
        if len(raw) > settings.INFERENCE_MAX_BODY_BYTES:
            raise PayloadTooLarge("The config is larger than INFERENCE_MAX_BODY_BYTES.", details={"path": "config"})
        try:
            config = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"config is not valid JSON: {exc}", path="config",
                               details={"reason": "malformed_json"}) from None
        if not isinstance(config, dict):
            raise InvalidInput("config must be a JSON object.", path="config")
        return config


class VersionDetailView(ManageAPIView):
    @extend_schema(
        operation_id="models_versions_retrieve",
        summary="One version: status (`registered`, `ready`, `failed`), validation error, sha256, aliases",
        description=MANAGE_ONLY,
        parameters=[OpenApiParameter("version", int, OpenApiParameter.PATH)],
        responses={200: s.ManagedVersionSerializer, 401: E, 403: E, 404: E, 429: E},
    )
    def get(self, request: Request, name: str, version: str) -> Response:
        model = svc.managed_model(name=name, key=request.auth)
        return Response(version_body(svc.managed_version(model=model, number=version)))


class VersionArchiveView(ManageAPIView):
    @extend_schema(
        operation_id="models_versions_archive",
        summary="Archive a version (it stops serving); 409 while an alias points to it",
        description=MANAGE_ONLY + " Archiving an archived version changes nothing.",
        parameters=[OpenApiParameter("version", int, OpenApiParameter.PATH)],
        request=None,
        responses={200: s.ManagedVersionSerializer, 401: E, 403: E, 404: E, 409: E, 429: E},
    )
    def post(self, request: Request, name: str, version: str) -> Response:
        model = svc.managed_model(name=name, key=request.auth)
        archived = svc.version_archive(key=request.auth, version=svc.managed_version(model=model, number=version))
        return Response(version_body(archived))


class VersionControlView(ManageAPIView):
    """The model control API's views (Triton's load/unload): one registry service (`control`) on one version."""

    control: Any = None  # the registry service: (key=, version=) -> ModelVersion

    def post(self, request: Request, name: str, version: str) -> Response:
        model = svc.managed_model(name=name, key=request.auth)
        row = svc.managed_version(model=model, number=version)
        return Response(version_body(self.control(key=request.auth, version=row)))


class VersionLoadView(VersionControlView):
    """POST .../load: pre-load in every web process."""

    control = staticmethod(svc.version_load)

    @extend_schema(
        operation_id="models_versions_load",
        summary="Pre-load a version in every web process",
        description=MANAGE_ONLY + " Pins the version (`pinned: true`): every web process loads it within about a "
        "second and keeps it although no alias points at it yet (a canary's candidate then has no first-request "
        "stall); 409 unless it is ready and not archived. Idempotent.",
        parameters=[OpenApiParameter("version", int, OpenApiParameter.PATH)],
        request=None,
        responses={200: s.ManagedVersionSerializer, 401: E, 403: E, 404: E, 409: E, 429: E},
    )
    def post(self, request: Request, name: str, version: str) -> Response:
        return super().post(request, name, version)


class VersionUnloadView(VersionControlView):
    """POST .../unload: unload from every process."""

    control = staticmethod(svc.version_unload)

    @extend_schema(
        operation_id="models_versions_unload",
        summary="Unload a version from every process",
        description=MANAGE_ONLY + " Clears the pin: every web process unloads it within about a second, a worker "
        "before its next job; 409 while an alias points at it (requests through the alias would load it "
        "again). Idempotent.",
        parameters=[OpenApiParameter("version", int, OpenApiParameter.PATH)],
        request=None,
        responses={200: s.ManagedVersionSerializer, 401: E, 403: E, 404: E, 409: E, 429: E},
    )
    def post(self, request: Request, name: str, version: str) -> Response:
        return super().post(request, name, version)


class AliasView(ManageAPIView):
    @extend_schema(
        operation_id="models_aliases_retrieve",
        summary="Where an alias points, with its latest moves",
        description=MANAGE_ONLY,
        responses={200: s.AliasSerializer, 401: E, 403: E, 404: E, 429: E},
    )
    def get(self, request: Request, name: str, alias: str) -> Response:
        model = svc.managed_model(name=name, key=request.auth)
        row = svc.alias_get(model=model, alias=alias)
        history = [event_body(e) for e in svc.alias_history(model=model, alias=alias)]
        return Response({**alias_body(row), "history": history})

    @extend_schema(
        operation_id="models_aliases_update",
        summary="Point an alias at a version (promote, roll back) or at a weighted split (a canary), with a shadow",
        description=MANAGE_ONLY + ' Body {"version": N} (409 unless the version is `ready` and not archived) or '
        '{"split": [{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]}: integer weights summing to '
        "100, each version once, all ready, unarchived and with the same input schema (else 400, nothing "
        "changed); the first entry is the primary `version`. Each request through the alias is routed by "
        'weight (sticky with an X-Routing-Key header). Either may add "shadow": {"version": 4, "percent": 20}: '
        "that share of the requests is also run by the shadow version after the client has its answer, off the "
        "request path, and compared with the answer (agreement, mean absolute difference per minute); the "
        "shadow must be ready, unarchived, take the primary's inputs and not be one of the alias's targets "
        "(else 400). A PUT replaces the alias: without `shadow` it has none. Recorded in the alias history "
        "with this key's name.",
        request=s.AliasSetSerializer,
        responses={200: s.AliasSerializer, 400: E, 401: E, 403: E, 404: E, 409: E, 413: E, 415: E, 429: E},
    )
    def put(self, request: Request, name: str, alias: str) -> Response:
        model = svc.managed_model(name=name, key=request.auth)
        body = loads(json_bytes(request))
        if not isinstance(body, dict) or set(body) not in ALIAS_BODY_KEYS:
            raise InvalidInput('The body must be {"version": N} or {"split": [{"version": N, "weight": W}, ...]}, '
                               'optionally with "shadow": {"version": N, "percent": P}.', path="version")
        row, previous = svc.alias_point(key=request.auth, model=model, alias=alias, number=body.get("version"),
                                        split=body.get("split"), shadow=body.get("shadow"))
        return Response({**alias_body(row), "previous_version": previous})

    @extend_schema(
        operation_id="models_aliases_destroy",
        summary="Remove an alias (without `production`, a request that names no version gets the newest ready one)",
        description=MANAGE_ONLY,
        responses={204: None, 401: E, 403: E, 404: E, 429: E},
    )
    def delete(self, request: Request, name: str, alias: str) -> Response:
        model = svc.managed_model(name=name, key=request.auth)
        svc.alias_remove(key=request.auth, model=model, alias=alias)
        return Response(status=204)
