"""The bad-input corpus: every front door (v1 predict, v2 infer, jobs, the registry API) against
malformed, truncated, oversized, deeply nested, mistyped, mis-shaped and lying requests.

Each case asserts the status, the error shape (the platform's ``{"error": {"code", "message",
"details"}}`` on /api/v1, the protocol's ``{"error": "..."}`` on /v2), that the server answers
the next good request, and that nothing was half-written (no job, model or version row, no
stored file, no queued task).
"""

from __future__ import annotations

import gzip
import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from inference.jobs.models import InferenceJob
from inference.keys import APIKey
from registry.models import AliasEvent, ModelAlias, ModelVersion, RegisteredModel, RegistryEvent
from tests.conftest import safetensors_bytes, small_mlp
from tests.helpers import stored_files
from tests.inference.support import ROWS, config, error_of, make_key

GOOD_PREDICT = {"instances": ROWS}
DEEP = "[" * 100_000 + "]" * 100_000


def _deep_in(prefix: str, suffix: str) -> str:
    return prefix + DEEP + suffix


@dataclass
class Case:
    """One bad request: how to send it and what must come back."""

    method: str
    path: str
    status: int
    code: str | None = None  # the platform error code (v1); None: only the status and shape
    raw: bytes | str | None = None  # the body as sent
    body: Any = None  # else this, as JSON
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    multipart: dict[str, Any] | None = None  # a multipart form (files as SimpleUploadedFile factories)
    settings: dict[str, Any] = field(default_factory=dict)
    key: str = "infer"  # which key sends it: infer, manage
    path_detail: str | None = None  # details.path expected (v1)


def _send(client, case: Case, keys: dict[str, str]):
    headers = {"Authorization": f"Api-Key {keys[case.key]}", **case.headers}
    if case.method == "GET":
        return client.get(case.path, headers=headers)
    if case.multipart is not None:
        data = {k: (v() if callable(v) else v) for k, v in case.multipart.items()}
        return client.generic(case.method, case.path, **_multipart(data), headers=headers) \
            if case.method != "POST" else client.post(case.path, data, headers=headers)
    data = case.raw if case.raw is not None else json.dumps(case.body)
    # Django's client leaves out the Content-Type of an empty body; a real client sends it.
    extra = {"CONTENT_TYPE": case.content_type} if not data else {}
    return client.generic(case.method, case.path, data, content_type=case.content_type, headers=headers, **extra)


def _multipart(data):  # pragma: no cover - only POST sends multipart here
    raise AssertionError("multipart with a method other than POST")


# --- the corpus ---------------------------------------------------------------------------------------------

PREDICT_PATHS = {
    "v1": "/api/v1/models/iris/predict",
    "v1-version": "/api/v1/models/iris/versions/1/predict",
    "v1-alias": "/api/v1/models/iris/versions/staging/predict",
}


def _predict_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for where, path in PREDICT_PATHS.items():
        def c(name: str, status: int, code: str | None = None, *, where: str = where, path: str = path,
              **kw: Any) -> None:
            cases[f"{where}: {name}"] = Case("POST", path, status, code, **kw)

        c("truncated JSON", 400, "malformed_json", raw='{"instances": [[5.1, 3.5, 1.4')
        c("truncated in a string", 400, "malformed_json", raw='{"instances": "ab')
        c("not JSON", 400, "malformed_json", raw="instances=1,2,3")
        c("empty body", 400, "malformed_json", raw="")
        c("only whitespace", 400, "malformed_json", raw="   \n")
        c("invalid UTF-8", 400, "malformed_json", raw=b'{"instances": [[1, 2, 3, "\xff\xfe"]]}')
        c("text/plain", 415, "unsupported_media_type", raw=json.dumps(GOOD_PREDICT), content_type="text/plain")
        c("form-encoded", 415, "unsupported_media_type", raw="instances=1", content_type="application/x-www-form-urlencoded")
        c("no content type", 415, "unsupported_media_type", raw=json.dumps(GOOD_PREDICT), content_type="")
        c("over the body limit", 413, "payload_too_large", body={"instances": ROWS * 200},
          settings={"INFERENCE_MAX_BODY_BYTES": 4096})
        c("100k-deep array as the body", 400, "malformed_json", raw=DEEP)
        c("100k-deep array as an instance", 400, "malformed_json", raw=_deep_in('{"instances": [', "]}"))
        c("1e400", 400, "malformed_json", raw='{"instances": [[1e400, 3.5, 1.4, 0.2]]}')
        c("10**400 as a literal", 400, "malformed_json", raw='{"instances": [[1' + "0" * 400 + ', 3.5, 1.4, 0.2]]}')
        c("1e300 (finite, beyond FP32)", 400, "non_finite", raw='{"instances": [[1e300, 1, 1, 1]]}',
          path_detail="instances[0][0]")
        c("NaN literal", 400, "malformed_json", raw='{"instances": [[NaN, 3.5, 1.4, 0.2]]}')
        c("Infinity literal", 400, "malformed_json", raw='{"instances": [[Infinity, 3.5, 1.4, 0.2]]}')
        c("a string where a number goes", 400, "invalid_datatype", body={"instances": [[5.1, "3.5", 1.4, 0.2]]},
          path_detail="instances[0][1]")
        c("a bool where a number goes", 400, "invalid_datatype", body={"instances": [[5.1, True, 1.4, 0.2]]},
          path_detail="instances[0][1]")
        c("all bools", 400, "invalid_datatype", body={"instances": [[True, False, True, False]]})
        c("a null where a number goes", 400, "invalid_datatype", body={"instances": [[5.1, None, 1.4, 0.2]]})
        c("an object where a number goes", 400, None, body={"instances": [[5.1, {"x": 1}, 1.4, 0.2]]})
        c("ragged instances", 400, "invalid_shape", body={"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0]]},
          path_detail="instances[1]")
        c("ragged inside an instance", 400, "invalid_shape", body={"instances": [[[5.1], 3.5, 1.4, 0.2]]})
        c("wrong rank (scalar instances)", 400, "invalid_shape", body={"instances": [5.1, 3.5, 1.4, 0.2]})
        c("wrong rank (one more dim)", 400, "invalid_shape", body={"instances": [[[5.1, 3.5, 1.4, 0.2]]]})
        c("wrong shape", 400, "invalid_shape", body={"instances": [[5.1, 3.5, 1.4]]})
        c("empty instance", 400, "invalid_shape", body={"instances": [[]]})
        c("instances empty", 400, "invalid_input", body={"instances": []}, path_detail="instances")
        c("instances an object", 400, "invalid_input", body={"instances": {"input": [1, 2, 3, 4]}})
        c("instances a string", 400, "invalid_input", body={"instances": "1,2,3,4"})
        c("instances missing", 400, "invalid_input", body={"parameters": {}}, path_detail="instances")
        c("body a list", 400, "invalid_input", body=ROWS)
        c("body a number", 400, "invalid_input", raw="42")
        c("body null", 400, "invalid_input", raw="null")
        c("unknown field", 400, "invalid_input", body={**GOOD_PREDICT, "instancse": []}, path_detail="instancse")
        c("parameters a list", 400, "invalid_input", body={**GOOD_PREDICT, "parameters": [1]},
          path_detail="parameters")
        c("unknown parameter", 400, "invalid_input", body={**GOOD_PREDICT, "parameters": {"top_k": 3}})
        c("too many instances", 400, "too_many_instances", body={"instances": ROWS * 2},
          settings={"INFERENCE_MAX_INSTANCES": 4})
        c("too many elements", 400, "too_many_elements", body={"instances": ROWS},
          settings={"INFERENCE_MAX_TENSOR_ELEMENTS": 8})
        c("duplicate keys, last one bad", 400, "invalid_shape",
          raw='{"instances": [[5.1, 3.5, 1.4, 0.2]], "instances": [[1]]}')
    # unknown models, versions and aliases (and names no model can have)
    unknown = {
        "unknown model": "/api/v1/models/ghost/predict",
        "unknown version": "/api/v1/models/iris/versions/9/predict",
        "version 0": "/api/v1/models/iris/versions/0/predict",
        "negative version": "/api/v1/models/iris/versions/-1/predict",
        "version beyond 64 bits": "/api/v1/models/iris/versions/99999999999999999999999/predict",
        "version of unicode digits": "/api/v1/models/iris/versions/%C2%B2/predict",
        "nonexistent alias": "/api/v1/models/iris/versions/canary/predict",
        "alias with a NUL": "/api/v1/models/iris/versions/prod%00uction/predict",
        "model name with a NUL": "/api/v1/models/ir%00is/predict",
        "model name with RTL override": "/api/v1/models/%E2%80%AEsiri/predict",
        "model name with an emoji": "/api/v1/models/iris%F0%9F%94%A5/predict",
        "model name with a newline": "/api/v1/models/iris%0A/predict",
        "model name with invalid UTF-8": "/api/v1/models/iris%FF/predict",
        "model name of 10k characters": "/api/v1/models/" + "a" * 10_000 + "/predict",
    }
    for name, path in unknown.items():
        cases[f"v1: {name}"] = Case("POST", path, 404, "not_found", body=GOOD_PREDICT)
    return cases


def _v2_input(**changes: Any) -> dict:
    tensor = {"name": "input", "shape": [3, 4], "datatype": "FP32", "data": ROWS}
    tensor.update(changes)
    return tensor


def _binary(inputs: list[dict], payload: bytes, header_length: int | None = None, *,
            declared: str | None = None) -> dict[str, Any]:
    header = json.dumps({"inputs": inputs}).encode()
    length = str(len(header) if header_length is None else header_length)
    return {"raw": header + payload, "content_type": "application/octet-stream",
            "headers": {"Inference-Header-Content-Length": declared if declared is not None else length}}


ROWS_BYTES = np.asarray(ROWS, dtype=np.float32).tobytes()


def _v2_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for where, path in {"v2": "/v2/models/iris/infer", "v2-version": "/v2/models/iris/versions/1/infer",
                        "v2-alias": "/v2/models/iris/versions/staging/infer"}.items():
        def c(name: str, status: int, *, where: str = where, path: str = path, **kw: Any) -> None:
            cases[f"{where}: {name}"] = Case("POST", path, status, **kw)

        c("truncated JSON", 400, raw='{"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP')
        c("not JSON", 400, raw="inputs")
        c("empty body", 400, raw="")
        c("100k-deep array", 400, raw=DEEP)
        c("100k-deep data", 400, raw=_deep_in('{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", '
                                             '"data": ', "}]}"))
        c("over the body limit", 413, body={"inputs": [_v2_input(data=ROWS * 200, shape=[600, 4])]},
          settings={"INFERENCE_MAX_BODY_BYTES": 4096})
        c("gzip bomb over the limit", 413, raw=gzip.compress(b" " * 100_000), headers={"Content-Encoding": "gzip"},
          settings={"INFERENCE_MAX_BODY_BYTES": 4096})
        c("gzip that is not gzip", 400, raw=b"not gzip", headers={"Content-Encoding": "gzip"})
        c("unknown content encoding", 400, raw=json.dumps({"inputs": [_v2_input()]}), headers={"Content-Encoding": "br"})
        c("1e400 in data", 400, raw='{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", '
                                    '"data": [1e400, 1, 1, 1]}]}')
        c("NaN in data", 400, raw='{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", '
                                  '"data": [NaN, 1, 1, 1]}]}')
        c("1e300 in FP32 data", 400, body={"inputs": [_v2_input(shape=[1, 4], data=[1e300, 1, 1, 1])]})
        c("a string in data", 400, body={"inputs": [_v2_input(shape=[1, 4], data=[1, "2", 3, 4])]})
        c("a bool among numbers", 400, body={"inputs": [_v2_input(shape=[1, 4], data=[1.0, True, 3.0, 4.0])]})
        c("all bools", 400, body={"inputs": [_v2_input(shape=[1, 4], data=[True, False, True, False])]})
        c("a null in data", 400, body={"inputs": [_v2_input(shape=[1, 4], data=[1, None, 3, 4])]})
        c("ragged data", 400, body={"inputs": [_v2_input(shape=[2, 4], data=[[1, 2, 3, 4], [1, 2]])]})
        c("count disagrees with shape", 400, body={"inputs": [_v2_input(shape=[2, 4])]})
        c("wrong rank (no batch dim)", 400, body={"inputs": [_v2_input(shape=[4], data=[1, 2, 3, 4])]})
        c("wrong shape", 400, body={"inputs": [_v2_input(shape=[4, 3])]})
        c("negative dim", 400, body={"inputs": [_v2_input(shape=[-3, 4])]})
        c("enormous dim", 400, body={"inputs": [_v2_input(shape=[10**12, 4])]})
        c("dim beyond 64 bits", 400, body={"inputs": [_v2_input(shape=[2**70, 4])]})
        c("zero dim times an enormous one", 400, body={"inputs": [_v2_input(shape=[0, 2**70], data=[])]})
        c("a float dim", 400, body={"inputs": [_v2_input(shape=[3.0, 4])]})
        c("a string dim", 400, body={"inputs": [_v2_input(shape=["3", 4])]})
        c("rank 100", 400, body={"inputs": [_v2_input(shape=[1] * 100)]})
        c("empty batch", 400, body={"inputs": [_v2_input(shape=[0, 4], data=[])]})
        c("unknown datatype", 400, body={"inputs": [_v2_input(datatype="FP128")]})
        c("datatype a list", 400, body={"inputs": [_v2_input(datatype=["FP32"])]})
        c("empty tensor with dims overflowing numpy", 400,
          **_binary([{"name": "input", "shape": [0, 2**62, 2**62], "datatype": "INT8",
                      "parameters": {"binary_data_size": 0}}], b""))
        c("wrong datatype", 400, body={"inputs": [_v2_input(datatype="INT64", data=[[1, 2, 3, 4]] * 3)]})
        c("unknown input name", 400, body={"inputs": [_v2_input(name="x")]})
        c("input name with a NUL", 400, body={"inputs": [_v2_input(name="in\x00put")]})
        c("input given twice", 400, body={"inputs": [_v2_input(), _v2_input()]})
        c("no inputs", 400, body={"inputs": []})
        c("inputs an object", 400, body={"inputs": {"input": ROWS}})
        c("no data", 400, body={"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32"}]})
        c("id a number", 400, body={"id": 7, "inputs": [_v2_input()]})
        c("unknown output requested", 400, body={"inputs": [_v2_input()], "outputs": [{"name": "nope"}]})
        c("parameters a list", 400, body={"inputs": [_v2_input()], "parameters": [1]})
        binary = [{"name": "input", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": 48}}]
        c("binary: header length past the body", 400, **_binary(binary, ROWS_BYTES, 10_000))
        c("binary: negative header length", 400, **_binary(binary, ROWS_BYTES, -5))
        c("binary: header length not a number", 400, **_binary(binary, ROWS_BYTES, declared="forty"))
        c("binary: header length beyond 64 bits", 400, **_binary(binary, ROWS_BYTES, declared="9" * 30))
        c("binary: header length cuts the JSON", 400, **_binary(binary, ROWS_BYTES, 20))
        c("binary: size says less than the shape needs", 400,
          **_binary([{**binary[0], "parameters": {"binary_data_size": 16}}], ROWS_BYTES[:16]))
        c("binary: size past the end", 400,
          **_binary([{**binary[0], "parameters": {"binary_data_size": 4800}}], ROWS_BYTES))
        c("binary: bytes left over", 400, **_binary(binary, ROWS_BYTES + b"\x00" * 8))
        c("binary: negative size", 400, **_binary([{**binary[0], "parameters": {"binary_data_size": -48}}], b""))
        c("binary: both data and size", 400, **_binary([{**binary[0], "data": ROWS}], ROWS_BYTES))
        c("binary: BYTES claims a billion elements", 400,
          **_binary([{"name": "input", "shape": [10**9], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}],
                    struct.pack("<I", 4) + b"abcd"))
        c("binary: BYTES element past the end", 400,
          **_binary([{"name": "input", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}],
                    struct.pack("<I", 400) + b"abcd"))
    unknown = {
        "unknown model": "/v2/models/ghost/infer",
        "unknown version": "/v2/models/iris/versions/9/infer",
        "version beyond 64 bits": "/v2/models/iris/versions/99999999999999999999999/infer",
        "nonexistent alias": "/v2/models/iris/versions/canary/infer",
        "model name with a NUL": "/v2/models/ir%00is/infer",
        "model name with RTL and emoji": "/v2/models/%E2%80%AEiris%F0%9F%94%A5/infer",
    }
    for name, path in unknown.items():
        cases[f"v2: {name}"] = Case("POST", path, 404, body={"inputs": [_v2_input()]})
    return cases


JOBS = "/api/v1/models/iris/jobs"


def _file(name: str, data: bytes):
    return lambda: SimpleUploadedFile(name, data)


def _jobs_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def c(name: str, status: int, code: str | None = None, *, method: str = "POST", path: str = JOBS,
          **kw: Any) -> None:
        cases[f"jobs: {name}"] = Case(method, path, status, code, **kw)

    c("truncated JSON", 400, "malformed_json", raw='{"instances": [[1, 2')
    c("empty body", 400, "malformed_json", raw="")
    c("text/plain", 415, "unsupported_media_type", raw=json.dumps(GOOD_PREDICT), content_type="text/plain")
    c("over the body limit", 413, "payload_too_large", body={"instances": ROWS * 200},
      settings={"INFERENCE_MAX_BODY_BYTES": 4096})
    c("100k-deep instances", 400, "malformed_json", raw=_deep_in('{"instances": [', "]}"))
    c("1e400", 400, "malformed_json", raw='{"instances": [[1e400, 1, 1, 1]]}')
    c("NaN literal", 400, "malformed_json", raw='{"instances": [[NaN, 1, 1, 1]]}')
    c("instances empty", 400, "invalid_input", body={"instances": []}, path_detail="instances")
    c("instances not a list", 400, "invalid_input", body={"instances": "x"}, path_detail="instances")
    c("body a list", 400, "invalid_input", body=ROWS)
    c("unknown field", 400, "invalid_input", body={**GOOD_PREDICT, "priority": 1}, path_detail="priority")
    c("version an object", 400, "invalid_input", body={**GOOD_PREDICT, "version": {"n": 1}}, path_detail="version")
    c("version a bool", 400, "invalid_input", body={**GOOD_PREDICT, "version": True}, path_detail="version")
    c("parameters a list", 400, "invalid_input", body={**GOOD_PREDICT, "parameters": [1]}, path_detail="parameters")
    c("parameters with a NUL", 400, "invalid_input", body={**GOOD_PREDICT, "parameters": {"top_k": "\x00"}},
      path_detail="parameters.top_k")
    c("Idempotency-Key with a NUL", 400, "invalid_input", body=GOOD_PREDICT, headers={"Idempotency-Key": "a\x00b"},
      path_detail="Idempotency-Key")
    c("callback_url a list", 400, "invalid_input", body={**GOOD_PREDICT, "callback_url": ["http://x"]},
      path_detail="callback_url")
    c("callback_url to a host not allowed", 400, "invalid_input",
      body={**GOOD_PREDICT, "callback_url": "http://169.254.169.254/latest"}, path_detail="callback_url")
    c("unknown version", 404, "not_found", body={**GOOD_PREDICT, "version": 9})
    c("version beyond 64 bits (a float to JSON)", 400, "invalid_input", body={**GOOD_PREDICT, "version": 2**70},
      path_detail="version")
    c("version beyond 32 bits", 404, "not_found", body={**GOOD_PREDICT, "version": 2**40})
    c("version as a huge string", 404, "not_found", body={**GOOD_PREDICT, "version": "9" * 30})
    c("version of unicode digits", 404, "not_found", body={**GOOD_PREDICT, "version": "\u00b2"})
    c("nonexistent alias", 404, "not_found", body={**GOOD_PREDICT, "version": "canary"})
    c("alias with a NUL", 404, "not_found", body={**GOOD_PREDICT, "version": "prod\x00uction"})
    c("unknown version in the query", 404, "not_found", body=GOOD_PREDICT, path=f"{JOBS}?version=9")
    c("unknown model", 404, "not_found", body=GOOD_PREDICT, path="/api/v1/models/ghost/jobs")
    c("model name with a NUL", 404, "not_found", body=GOOD_PREDICT, path="/api/v1/models/ir%00is/jobs")
    c("model name with RTL, emoji and a newline", 404, "not_found", body=GOOD_PREDICT,
      path="/api/v1/models/%E2%80%AEiris%F0%9F%94%A5%0A/jobs")
    # files
    c("file: missing", 400, "invalid_input", multipart={"format": "csv"}, path_detail="file")
    c("file: empty", 400, "invalid_input", multipart={"file": _file("rows.jsonl", b"")}, path_detail="file")
    c("file: a bad JSONL line", 400, "invalid_input",
      multipart={"file": _file("rows.jsonl", b"[1, 2, 3, 4]\n[1, 2,\n")}, path_detail="file")
    c("file: 100k-deep JSONL line", 400, "invalid_input",
      multipart={"file": _file("rows.jsonl", DEEP.encode() + b"\n")}, path_detail="file")
    c("file: CSV with a word in a row", 400, "invalid_input",
      multipart={"file": _file("rows.csv", b"a,b,c,d\n1,2,3,4\n1,two,3,4\n")}, path_detail="file")
    c("file: CSV that is not UTF-8", 400, "invalid_input",
      multipart={"file": _file("rows.csv", b"\xff\xfe1,2,3,4\n\x80\x81,2\n")}, path_detail="file")
    c("file: JSONL that is not UTF-8", 400, "invalid_input",
      multipart={"file": _file("rows.jsonl", b"[1, 2, 3, \xff]\n")}, path_detail="file")
    c("file: binary garbage", 400, "invalid_input",
      multipart={"file": _file("rows.jsonl", bytes(range(256)) * 4)}, path_detail="file")
    c("file: unknown format", 400, "invalid_input", multipart={"file": _file("rows.xml", b"<a/>"), "format": "xml"},
      path_detail="format")
    c("file: parameters not JSON", 400, "invalid_input",
      multipart={"file": _file("rows.jsonl", b"[1, 2, 3, 4]\n"), "parameters": "{top_k"}, path_detail="parameters")
    c("file: over the file limit", 413, "payload_too_large",
      multipart={"file": _file("rows.jsonl", b"[1, 2, 3, 4]\n" * 100)}, settings={"INFERENCE_JOB_MAX_FILE_BYTES": 512})
    c("multipart without a boundary", 400, "malformed_json", raw=b"--x\r\n\r\n",
      content_type="multipart/form-data")
    # the list and the job ids
    for query, path in {"bad status": "status=lost", "limit not a number": "limit=ten", "limit 0": "limit=0",
                        "limit huge": "limit=" + "9" * 30, "negative offset": "offset=-1",
                        "offset beyond 64 bits": "offset=" + "9" * 30, "offset a float": "offset=1.5",
                        "status with a NUL": "status=queued%00", "unknown parameter": "sort=id"}.items():
        c(f"list: {query}", 400, "invalid_input", method="GET", path=f"/api/v1/jobs?{path}",
          path_detail=path.split("=")[0])
    for name, job_id in {"%00": "%00", "not a uuid": "not-a-uuid", "unicode": "%E2%80%AE%F0%9F%94%A5",
                         "a uuid nobody has": "00000000-0000-0000-0000-000000000000",
                         "10k characters": "a" * 10_000, "newline": "%0A"}.items():
        for action, method in (("", "GET"), ("/result", "GET"), ("/cancel", "POST"), ("/retry", "POST")):
            c(f"job id {name}{action or ' status'}", 404, "not_found", method=method,
              path=f"/api/v1/jobs/{job_id}{action}", raw="")
    return cases


def _weights() -> bytes:
    return safetensors_bytes(small_mlp(5))


def _upload(artifact: Any = None, cfg: Any = None, **extra: Any) -> dict[str, Any]:
    form: dict[str, Any] = {"artifact": artifact if artifact is not None else _file("model.safetensors", _weights()),
                            "config": cfg if isinstance(cfg, str) else json.dumps(cfg if cfg is not None else config())}
    form.update(extra)
    return {k: v for k, v in form.items() if v is not ...}


UPLOAD = "/api/v1/models/iris/versions"


def _registry_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {}

    def c(name: str, status: int, code: str | None = None, *, method: str = "POST", path: str = UPLOAD,
          **kw: Any) -> None:
        cases[f"registry: {name}"] = Case(method, path, status, code, key="manage", **kw)

    create = "/api/v1/models"
    c("create: truncated JSON", 400, "malformed_json", path=create, raw='{"name": "new')
    c("create: empty body", 400, "malformed_json", path=create, raw="")
    c("create: 100k-deep", 400, "malformed_json", path=create, raw=_deep_in('{"name": "x", "description": ', "}"))
    c("create: text/plain", 415, "unsupported_media_type", path=create, raw='{"name": "x"}', content_type="text/plain")
    c("create: over the body limit", 413, "payload_too_large", path=create,
      body={"name": "big", "description": "x" * 10_000}, settings={"INFERENCE_MAX_BODY_BYTES": 4096})
    for label, name in {"RTL override": "\u202eevil", "emoji": "model\U0001f525", "newline": "model\n",
                        "NUL": "mod\x00el", "uppercase": "Model", "64 characters": "m" * 64, "a number": 7,
                        "null": None, "path separator": "a/b", "empty": ""}.items():
        c(f"create: name with {label}", 400, "invalid_input", path=create, body={"name": name}, path_detail="name")
    c("create: description a number", 400, "invalid_input", path=create, body={"name": "x", "description": 1e300},
      path_detail="description")
    # uploads
    c("upload: not multipart", 415, "unsupported_media_type", body={"config": config()})
    c("upload: no artifact", 400, "invalid_input", multipart=_upload(artifact=...), path_detail="artifact")
    c("upload: empty artifact", 400, "invalid_input", multipart=_upload(artifact=_file("m.safetensors", b"")),
      path_detail="artifact")
    c("upload: garbage artifact", 400, "invalid_input",
      multipart=_upload(artifact=_file("m.safetensors", b"\x00\xffgarbage" * 64)), path_detail="artifact")
    c("upload: truncated safetensors", 400, "invalid_input",
      multipart=_upload(artifact=lambda: SimpleUploadedFile("m.safetensors", _weights()[:100])), path_detail="artifact")
    c("upload: safetensors header claiming 2**63 bytes", 400, "invalid_input",
      multipart=_upload(artifact=_file("m.safetensors", struct.pack("<Q", 2**63) + b"{}")), path_detail="artifact")
    c("upload: oversized artifact", 413, "payload_too_large", multipart=_upload(),
      settings={"INFERENCE_MAX_ARTIFACT_BYTES": 256})
    c("upload: no config", 400, "invalid_input", multipart=_upload(config=...), path_detail="config")
    c("upload: truncated config", 400, "invalid_input", multipart=_upload(cfg='{"format": "safetensors", "inp'),
      path_detail="config")
    c("upload: 100k-deep config", 400, "invalid_input", multipart=_upload(cfg=_deep_in('{"example": ', "}")),
      path_detail="config")
    c("upload: config 1e400", 400, "invalid_input", multipart=_upload(cfg='{"batching": {"max_batch_size": 1e400}}'),
      path_detail="config")
    c("upload: config a list", 400, "invalid_input", multipart=_upload(cfg="[]"), path_detail="config")
    for label, shape in {"negative dim": [-4], "zero dim": [0], "enormous dim": [2**40], "float dim": [4.0],
                         "string dim": ["4"], "rank 100": [1] * 100, "bool dim": [True]}.items():
        c(f"upload: input shape with {label}", 400, "invalid_input",
          multipart=_upload(cfg=config(inputs=[{"name": "input", "datatype": "FP32", "shape": shape}])),
          path_detail="config")
    c("upload: input datatype a list", 400, "invalid_input",
      multipart=_upload(cfg=config(inputs=[{"name": "input", "datatype": ["FP32"], "shape": [4]}])),
      path_detail="config")
    c("upload: input name with a NUL", 400, "invalid_input",
      multipart=_upload(cfg=config(inputs=[{"name": "in\x00put", "datatype": "FP32", "shape": [4]}])),
      path_detail="config")
    c("upload: batch size a string", 400, "invalid_input",
      multipart=_upload(cfg=config(batching={"max_batch_size": "8"})), path_detail="config")
    c("upload: batch size beyond 64 bits", 400, "invalid_input",
      multipart=_upload(cfg=config(batching={"max_batch_size": 2**70})), path_detail="config")
    c("upload: architecture outside the allowlist", 400, "invalid_input",
      multipart=_upload(cfg=config(architecture="os.system")), path_detail="config")
    c("upload: unknown field", 400, "invalid_input", multipart=_upload(alias="production"), path_detail="alias")
    c("upload: sha256 not hex", 400, "invalid_input", multipart=_upload(sha256="\u202e" * 64), path_detail="sha256")
    c("upload: unknown model", 404, "not_found", path="/api/v1/models/ghost/versions", multipart=_upload())
    c("upload: model name with a NUL", 404, "not_found", path="/api/v1/models/ir%00is/versions", multipart=_upload())
    c("upload: model name with RTL and emoji", 404, "not_found",
      path="/api/v1/models/%E2%80%AEiris%F0%9F%94%A5/versions", multipart=_upload())
    # versions and aliases
    for label, version in {"beyond 64 bits": "9" * 30, "unicode digits": "%C2%B2", "0": "0", "an alias": "production",
                           "a NUL": "%00"}.items():
        c(f"version read: {label}", 404, "not_found", method="GET", path=f"/api/v1/models/iris/versions/{version}")
        c(f"version archive: {label}", 404, "not_found", path=f"/api/v1/models/iris/versions/{version}/archive",
          raw="")
    alias = "/api/v1/models/iris/aliases/production"
    for label, body in {"a string": {"version": "1"}, "a bool": {"version": True}, "a float": {"version": 1.0},
                        "beyond 64 bits": {"version": 2**70}, "zero": {"version": 0}, "negative": {"version": -1},
                        "an unknown version": {"version": 9}, "extra field": {"version": 1, "force": True},
                        "a list": [1]}.items():
        c(f"alias move: version {label}", 400, "invalid_input", method="PUT", path=alias, body=body)
    c("alias move: truncated JSON", 400, "malformed_json", method="PUT", path=alias, raw='{"version": ')
    c("alias move: 100k-deep", 400, "malformed_json", method="PUT", path=alias, raw=DEEP)
    c("alias move: text/plain", 415, "unsupported_media_type", method="PUT", path=alias, raw='{"version": 1}',
      content_type="text/plain")
    for label, name in {"a NUL": "prod%00", "RTL": "%E2%80%AEprod", "emoji": "prod%F0%9F%94%A5",
                        "uppercase": "Production", "10k characters": "a" * 10_000}.items():
        c(f"alias move: name with {label}", 400, "invalid_input", method="PUT",
          path=f"/api/v1/models/iris/aliases/{name}", body={"version": 1}, path_detail="alias")
        c(f"alias read: name with {label}", 404, "not_found", method="GET", path=f"/api/v1/models/iris/aliases/{name}")
        c(f"alias delete: name with {label}", 404, "not_found", method="DELETE",
          path=f"/api/v1/models/iris/aliases/{name}", raw="")
    return cases


CASES = {**_predict_cases(), **_v2_cases(), **_jobs_cases(), **_registry_cases()}


# --- the test ---------------------------------------------------------------------------------------------------


@pytest.fixture
def keys(db) -> dict[str, str]:
    return {"infer": make_key("robust-infer", rate="100000/s"),
            "manage": make_key("robust-manage", scope=APIKey.Scope.MANAGE, rate="100000/s")}


def _state(media_root) -> tuple:
    return (
        list(RegisteredModel.objects.order_by("pk").values_list("name", flat=True)),
        list(ModelVersion.objects.order_by("pk").values_list("model__name", "version", "status", "archived")),
        list(ModelAlias.objects.order_by("pk").values_list("name", "version__version")),
        AliasEvent.objects.count(),
        RegistryEvent.objects.count(),
        InferenceJob.objects.count(),
        stored_files(media_root),
    )


def _good_request_works(client, case: Case, keys: dict[str, str]) -> None:
    """The server answers the next good request on the same front door."""
    auth = {"Authorization": f"Api-Key {keys['infer']}"}
    if case.path.startswith("/v2/"):
        r = client.post("/v2/models/iris/infer", json.dumps({"inputs": [_v2_input()]}), content_type="application/json",
                        headers=auth)
        assert r.status_code == 200, r.content
        assert np.asarray(r.json()["outputs"][0]["data"]).size == 9
    else:
        r = client.post("/api/v1/models/iris/predict", json.dumps(GOOD_PREDICT), content_type="application/json",
                        headers=auth)
        assert r.status_code == 200, r.content
        assert len(r.json()["predictions"]) == len(ROWS)
    if case.key == "manage":
        r = client.get("/api/v1/models/iris/versions/1", headers={"Authorization": f"Api-Key {keys['manage']}"})
        assert r.status_code == 200 and r.json()["status"] == "ready", r.content


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_bad_input_is_refused_cleanly(case: Case, client, iris, keys, settings, monkeypatch,
                                      django_capture_on_commit_callbacks):
    queued: list = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: queued.append(args))
    changed = dict(case.settings)
    if "INFERENCE_MAX_BODY_BYTES" in changed:
        changed["DATA_UPLOAD_MAX_MEMORY_SIZE"] = changed["INFERENCE_MAX_BODY_BYTES"]
    originals = {name: getattr(settings, name) for name in changed}
    for name, value in changed.items():
        setattr(settings, name, value)
    before = _state(settings.MEDIA_ROOT)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        r = _send(client, case, keys)

    assert r.status_code == case.status, (r.status_code, r.content[:500])
    if case.path.startswith("/v2/"):
        assert r["Content-Type"].startswith("application/json")
        body = r.json()
        assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    else:
        err = error_of(r)
        if case.code is not None:
            assert err["code"] == case.code, err
        if case.path_detail is not None:
            assert err["details"].get("path") == case.path_detail, err
        assert err["message"]
    if case.status == 401:
        assert r["WWW-Authenticate"] == "Api-Key"
    assert keys["infer"] not in r.content.decode("utf-8", "replace")
    assert keys["manage"] not in r.content.decode("utf-8", "replace")
    # nothing half-written: no row, no file, no task
    assert callbacks == [] and queued == []
    assert _state(settings.MEDIA_ROOT) == before
    for name, value in originals.items():
        setattr(settings, name, value)
    _good_request_works(client, case, keys)


def test_the_corpus_covers_every_front_door():
    """A guard on the table itself: each API and each input class is in it."""
    paths = {c.path for c in CASES.values()}
    for prefix in ("/api/v1/models/iris/predict", "/api/v1/models/iris/versions/1/predict",
                   "/api/v1/models/iris/versions/staging/predict", "/v2/models/iris/infer",
                   "/v2/models/iris/versions/1/infer", JOBS, "/api/v1/jobs?", "/api/v1/models", UPLOAD):
        assert any(p.startswith(prefix) for p in paths), prefix
    assert len(CASES) > 250
