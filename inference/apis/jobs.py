"""Background jobs over REST: submit, list, status, result, cancel, retry (a key sees only its own)."""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from .. import selectors
from ..errors import Conflict, InvalidInput, TooManyJobs, UnsupportedMediaType
from ..jobs.models import InferenceJob
from ..jobs.selectors import job_predictions, job_state, job_url, jobs_of_key, own_job
from ..routing import ROUTING_HEADER
from ..services import jobs as job_services
from ..services.jobs import JobConflict, job_cancel, job_request_submit, job_retry
from . import serializers as s
from .parsing import OrjsonParser, loads, refuse_oversized_upload
from .v1 import PlatformAPIView, json_bytes

E = s.ErrorSerializer
JOB_BODY_KEYS = {"instances", "parameters", "callback_url", "version"}


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
        selectors.visible_model(model_name=name, key=request.auth)
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        upload = instances = None
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
            callback_url, ref = fields.get("callback_url", ""), fields.get("version")
        elif content_type == "application/json":
            body = loads(json_bytes(request))
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
            raise UnsupportedMediaType("Send JSON instances or a multipart file upload.")
        job, created = job_request_submit(
            key=request.auth, model_name=name, ref=ref or request.query_params.get("version"), instances=instances,
            upload=upload, input_format=fmt, parameters=parameters, callback_url=callback_url,
            idempotency_key=request.headers.get("Idempotency-Key", "")[:200],
            routing_key=request.headers.get(ROUTING_HEADER),
        )
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
        jobs = list(jobs_of_key(key_prefix=request.auth.prefix, status=status)[offset : offset + limit])
        return Response({"jobs": [job_state(j) for j in jobs], "limit": limit, "offset": offset})


class JobDetailView(PlatformAPIView):
    @extend_schema(operation_id="jobs_retrieve", summary="One job: status, progress, timings",
                   responses={200: s.JobStatusSerializer, 401: E, 403: E, 404: E, 429: E})
    def get(self, request: Request, job_id: str) -> Response:
        return Response(job_state(own_job(key_prefix=request.auth.prefix, job_id=job_id)))


class JobResultView(PlatformAPIView):
    @extend_schema(
        operation_id="jobs_result",
        summary="The result: JSON for JSON-instance jobs, a JSONL download (one prediction a line) for file jobs",
        responses={200: s.JobResultSerializer, 401: E, 403: E, 404: E, 409: E, 429: E},
    )
    def get(self, request: Request, job_id: str) -> Any:
        job = own_job(key_prefix=request.auth.prefix, job_id=job_id)
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
        job = own_job(key_prefix=request.auth.prefix, job_id=job_id)
        try:
            job = job_cancel(job=job)
        except JobConflict as exc:
            raise Conflict(str(exc), details={"status": job.status}) from exc
        return Response(job_state(job))


class JobRetryView(PlatformAPIView):
    @extend_schema(operation_id="jobs_retry", request=None, summary="Run a failed or cancelled job again",
                   responses={202: s.JobStatusSerializer, 401: E, 403: E, 404: E, 409: E, 429: E})
    def post(self, request: Request, job_id: str) -> Response:
        job = own_job(key_prefix=request.auth.prefix, job_id=job_id)
        try:
            job = job_retry(job=job, key_limits=True)
        except JobConflict as exc:
            raise Conflict(str(exc), details={"status": job.status}) from exc
        except job_services.TooManyJobs as exc:
            raise TooManyJobs(str(exc), retry_after=exc.details["retry_after"], details=exc.details) from exc
        return Response(job_state(job), status=202)
