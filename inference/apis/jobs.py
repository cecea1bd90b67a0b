"""Background jobs over REST: submit, list, status, result, cancel, retry (a key sees only its own)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from registry.selectors import version_resolve

from .. import services
from ..errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, ServiceUnavailable
from ..jobs.models import InferenceJob
from ..jobs.services import (
    JobConflict,
    JobInputError,
    JobInputTooLarge,
    job_cancel,
    job_predictions,
    job_retry,
    job_submit,
)
from . import serializers as s
from .parsing import OrjsonParser, refuse_oversized_upload
from .v1 import PlatformAPIView

E = s.ErrorSerializer
JOB_BODY_KEYS = {"instances", "parameters", "callback_url", "version"}


def job_url(job: InferenceJob) -> str:
    return f"/api/v1/jobs/{job.pk}"


def job_status_body(job: InferenceJob) -> dict[str, Any]:
    return {
        "id": str(job.pk),
        "status": job.status,
        "model": job.model.name,
        "version": job.version.version,
        "progress": {"done": job.progress_done, "total": job.progress_total},
        "attempts": job.attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "error": job.error or None,
        "url": job_url(job),
        "result_url": f"{job_url(job)}/result" if job.status == InferenceJob.Status.SUCCEEDED else None,
    }


def own_job(request: Request, job_id: str) -> InferenceJob:
    """Return the key's job; another key's job is 404, like one that does not exist."""
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound(f"No job {job_id!r}.") from None
    job = InferenceJob.objects.select_related("model", "version").filter(pk=pk, key_prefix=request.auth.prefix).first()
    if job is None:
        raise NotFound(f"No job {job_id!r}.")
    return job


def _check_parameters(version: Any, parameters: Any) -> None:
    """400 now for request parameters the version's pipeline does not take (not a failed job later)."""
    from ..pipeline.base import Pipeline, StepConfigError, StepInputError, clean_parameters

    try:
        pre, post = Pipeline(version.preprocess, stage="preprocess"), Pipeline(version.postprocess, stage="postprocess")
    except (StepConfigError, ImportError):
        return  # the job fails with the pipeline's own error
    try:
        clean_parameters(parameters, {**pre.request_parameters, **post.request_parameters})
    except StepInputError as exc:
        raise InvalidInput(str(exc), path=exc.path) from None


class JobSubmitView(PlatformAPIView):
    parser_classes = [OrjsonParser, MultiPartParser]

    @extend_schema(
        operation_id="jobs_submit",
        summary="Submit a background job: JSON instances, or a JSONL/CSV file (multipart field `file`)",
        parameters=[
            OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
                             description="The same key and body return the same job."),
            OpenApiParameter("version", str, OpenApiParameter.QUERY, required=False,
                             description="Version number or alias (default: production, else newest ready)."),
        ],
        request={"application/json": s.JobSubmitSerializer, "multipart/form-data": s.JobUploadSerializer},
        responses={202: s.JobAcceptedSerializer, 200: s.JobAcceptedSerializer, 400: E, 401: E, 403: E, 404: E,
                   409: E, 413: E, 415: E, 429: E, 503: E},
    )
    def post(self, request: Request, name: str) -> Response:
        model = services.visible_model(model_name=name, key=request.auth)
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        upload = None
        if content_type == "multipart/form-data":
            refuse_oversized_upload(request, limit=settings.INFERENCE_JOB_MAX_FILE_BYTES, what="job files",
                                    setting="INFERENCE_JOB_MAX_FILE_BYTES", details={"path": "file"})
            fields = request.data
            upload = request.FILES.get("file")
            if upload is None:
                raise InvalidInput('Send the file in the multipart field "file".', path="file")
            filename = (upload.name or "").lower()
            fmt = fields.get("format") or ("csv" if filename.endswith(".csv") else "jsonl")
            if fmt not in ("jsonl", "csv"):
                raise InvalidInput('format must be "jsonl" or "csv".', path="format")
            try:
                parameters = orjson.loads(fields["parameters"]) if fields.get("parameters") else None
            except orjson.JSONDecodeError:
                raise InvalidInput("parameters must be a JSON object.", path="parameters") from None
            instances, callback_url, ref = None, fields.get("callback_url", ""), fields.get("version")
        elif content_type == "application/json":
            body, _ = self.json_body(request)
            if not isinstance(body, dict):
                raise InvalidInput('The body must be a JSON object: {"instances": [...]}.')
            unknown = set(body) - JOB_BODY_KEYS
            if unknown:
                raise InvalidInput(f"Unknown field(s) {sorted(unknown)}.", path=sorted(unknown)[0])
            if not isinstance(body.get("instances"), list) or not body["instances"]:
                raise InvalidInput("instances must be a non-empty list.", path="instances")
            instances, parameters = body["instances"], body.get("parameters")
            callback_url, ref, fmt = body.get("callback_url") or "", body.get("version"), "json"
        else:
            raise exceptions.UnsupportedMediaType(content_type or "(none)",
                                                  detail="Send JSON instances or a multipart file upload.")
        ref = ref or request.query_params.get("version")
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (str, int))):
            raise InvalidInput("version must be a version number or an alias name.", path="version")
        if not isinstance(callback_url, str):
            raise InvalidInput("callback_url must be a URL (a string).", path="callback_url")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidInput("parameters must be a JSON object.", path="parameters")
        version = version_resolve(model=model, ref=ref)
        if version is None:
            if ref:
                raise NotFound(f"Model {name!r} has no version or alias {str(ref)!r}.")
            raise ServiceUnavailable(f"Model {name!r} has no ready version yet.", retry_after=30)
        _check_parameters(version, parameters)
        idempotency_key = request.headers.get("Idempotency-Key", "")[:200]
        if not idempotency_key.isprintable():
            raise InvalidInput("Idempotency-Key must be printable text.", path="Idempotency-Key")
        key = request.auth
        try:
            job, created = job_submit(
                version=version, instances=instances, upload=upload, input_format=fmt, parameters=parameters,
                api_key=key, submitted_by=f"key:{key.name} ({key.prefix})",
                idempotency_key=idempotency_key, callback_url=callback_url,
            )
        except JobInputTooLarge as exc:
            raise PayloadTooLarge(str(exc), details={"path": "file",
                                                     "limit": settings.INFERENCE_JOB_MAX_FILE_BYTES}) from exc
        except JobInputError as exc:
            raise InvalidInput(str(exc), path="file" if upload is not None else "instances") from exc
        except ValidationError as exc:
            raise InvalidInput("; ".join(exc.messages), path="callback_url") from exc
        except JobConflict as exc:
            raise Conflict(str(exc)) from exc
        body = {"id": str(job.pk), "status": job.status, "url": job_url(job)}
        return Response(body, status=202 if created else 200, headers={"Location": job_url(job)})


class JobListView(PlatformAPIView):
    @extend_schema(
        operation_id="jobs_list",
        summary="This key's jobs, newest first",
        parameters=[s.JobListQuerySerializer],
        responses={200: s.JobListSerializer, 400: E, 401: E, 403: E, 429: E},
    )
    def get(self, request: Request) -> Response:
        unknown = sorted(set(request.query_params) - set(s.JobListQuerySerializer().fields))
        if unknown:
            raise InvalidInput(f"Unknown query parameter(s) {unknown}; expected status, limit, offset.", path=unknown[0])
        query = s.JobListQuerySerializer(data=request.query_params.dict())
        if not query.is_valid():
            field, problems = next(iter(query.errors.items()))
            raise InvalidInput(f"{field}: {' '.join(str(p) for p in problems)}", path=field)
        status, limit, offset = query.validated_data.get("status"), query.validated_data["limit"], \
            query.validated_data["offset"]
        qs = InferenceJob.objects.select_related("model", "version").filter(key_prefix=request.auth.prefix)
        if status:
            qs = qs.filter(status=status)
        jobs = list(qs[offset : offset + limit])
        return Response({"jobs": [job_status_body(j) for j in jobs], "limit": limit, "offset": offset})


class JobDetailView(PlatformAPIView):
    @extend_schema(operation_id="jobs_retrieve", summary="One job: status, progress, timings",
                   responses={200: s.JobStatusSerializer, 401: E, 403: E, 404: E, 429: E})
    def get(self, request: Request, job_id: str) -> Response:
        return Response(job_status_body(own_job(request, job_id)))


class JobResultView(PlatformAPIView):
    @extend_schema(
        operation_id="jobs_result",
        summary="The result: JSON for JSON-instance jobs, a JSONL download (one prediction a line) for file jobs",
        responses={200: s.JobResultSerializer, 401: E, 403: E, 404: E, 409: E, 429: E},
    )
    def get(self, request: Request, job_id: str) -> Any:
        job = own_job(request, job_id)
        if job.status != InferenceJob.Status.SUCCEEDED:
            raise Conflict(f"The job is {job.status}; a result exists once it has succeeded.",
                           details={"status": job.status})
        if job.input_format == InferenceJob.InputFormat.JSON:
            return Response({"id": str(job.pk), "model": job.model.name, "version": job.version.version,
                             "predictions": job_predictions(job)})
        return FileResponse(job.result_file.open("rb"), as_attachment=True, filename=f"job-{job.pk}.jsonl",
                            content_type="application/jsonl")


class JobCancelView(PlatformAPIView):
    @extend_schema(operation_id="jobs_cancel", request=None,
                   summary="Cancel: a queued job never runs; a running one stops at its next chunk",
                   responses={200: s.JobStatusSerializer, 401: E, 403: E, 404: E, 409: E, 429: E})
    def post(self, request: Request, job_id: str) -> Response:
        job = own_job(request, job_id)
        try:
            job = job_cancel(job=job)
        except JobConflict as exc:
            raise Conflict(str(exc), details={"status": job.status}) from exc
        return Response(job_status_body(job))


class JobRetryView(PlatformAPIView):
    @extend_schema(operation_id="jobs_retry", request=None, summary="Run a failed or cancelled job again",
                   responses={202: s.JobStatusSerializer, 401: E, 403: E, 404: E, 409: E, 429: E})
    def post(self, request: Request, job_id: str) -> Response:
        job = own_job(request, job_id)
        try:
            job = job_retry(job=job)
        except JobConflict as exc:
            raise Conflict(str(exc), details={"status": job.status}) from exc
        return Response(job_status_body(job), status=202)
