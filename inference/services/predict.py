"""A prediction, end to end: one async path for every protocol and every server.

    apis.v1.predict / apis.v2.infer   parse HTTP, call access.authorize (key, scope, rate)
      -> predict() / infer()          this module
           selectors.serving_version  which version answers (404 / 503, decided once)
           pool.loaded                the version's pipelines, runtime and batcher in this process
           ServedVersion.prepare      decode + preprocess + schema checks
           Batcher.run                one forward per batch, on the batcher's thread
           ServedVersion.finish       postprocess: on the batcher's thread for the whole batch (v1
                                      requests without parameters), else per request (v2:
                                      postprocess_tensors, the tensor steps only)
           shadow.sample / offer      a drawn share of an alias's requests copied to its shadow, once
                                      answered (a non-blocking put; services.shadow runs it elsewhere)
      -> the protocol's renderer      apis.v1 / apis.v2 (apis.errors for refusals; oip_outputs for v2's tensors)

The event loop that awaits this only parses, authenticates and waits: a read that misses this
process's memos and a model load go to a thread (``offload.without_blocking``), decoding and
pre/post-processing above the budget (INFERENCE_INLINE_BYTES of body, INFERENCE_INLINE_ELEMENTS
of output, and every input that a step decodes, such as images) to the compute pool
(``offload.compute``), and every forward pass to the batcher's thread.

The same functions serve the WSGI deployment (Django runs these async views through
``async_to_sync``) and background jobs (``predict_instances``, one ``asyncio.run`` per chunk).
Every request is observed once, however it ends (``observed``): metrics, the access log line,
the request record, and the operator's INFERENCE_HOOKS.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from registry.models import ModelVersion

from .. import offload, oip, oip_outputs, selectors
from ..conf import hot
from ..errors import APIError, ErrorCode, InvalidInput, ModelFailed, PayloadTooLarge, ServiceUnavailable
from ..monitoring.logs import key_prefix_var, request_id_var
from ..monitoring.observe import observe, report
from ..pipeline.served import Prepared
from ..pool import Loaded, get_pool
from ..routing import Route
from ..runtime.base import ModelNotReady
from ..runtime.batcher import BatcherStopped, Finish, Overloaded
from ..tensors import InputError, MaybeBools
from . import shadow

logger = logging.getLogger("inference.predict")

PREDICT_BODY_KEYS = {"instances", "parameters", "id"}
CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection first


@dataclass
class PredictOutcome:
    """What observers (hooks, metrics, request records) learn about one request."""

    model: str
    version: int | None
    status: int
    instances: int = 0
    batch_size: int = 0
    error_code: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    loaded: Any = None  # the Loaded entry, once resolved
    request_id: str = ""  # else the current request's (monitoring.logs.request_id_var)
    key_prefix: str = ""  # else the current request's key's
    queue_depth: int = 0  # requests queued ahead of this one in its batcher
    payload: tuple[Any, Any] | None = None  # (request, response) kept when the model captures payloads
    finished_at: float = 0.0  # time.time() as the request ended (its report may run later)


# ---- observation --------------------------------------------------------------------------------

_hooks: list[Callable[..., Any]] | None = None


def _load_hooks() -> list[Callable[..., Any]]:
    global _hooks
    if _hooks is None:
        _hooks = [import_string(p) if isinstance(p, str) else p for p in settings.INFERENCE_HOOKS]
    return _hooks


def _reset_hooks(*, setting: str, **_: Any) -> None:
    global _hooks
    if setting == "INFERENCE_HOOKS":
        _hooks = None


setting_changed.connect(_reset_hooks, dispatch_uid="inference.services.predict.reset_hooks")


def run_hooks(outcome: PredictOutcome) -> None:
    """Call every INFERENCE_HOOKS callable; a failing hook is logged, never fails the request."""
    for hook in _load_hooks():
        try:
            hook(model=outcome.model, version=outcome.version, timings=outcome.timings, outcome=outcome)
        except Exception:  # noqa: BLE001
            logger.exception("inference hook %r failed", hook)


@contextmanager
def observed(model_name: str, request_id: str = "") -> Iterator[PredictOutcome]:
    """Time one inference request and report it (metrics, access log, record, hooks) however it ends:
    at once, or after its response where the server holds reports (``observe.reports_after_response``);
    the caller sets ``outcome.version`` and ``outcome.loaded`` once it knows them."""
    t0 = time.perf_counter()
    outcome = PredictOutcome(model=model_name, version=None, status=200, request_id=request_id)
    try:
        yield outcome
    except asyncio.CancelledError:  # the client went away while the request waited
        outcome.status, outcome.error_code = CLIENT_CLOSED, ErrorCode.CANCELLED
        raise
    except Exception as exc:
        outcome.status = getattr(exc, "status_code", 500)
        outcome.error_code = getattr(exc, "error_code", ErrorCode.SERVER_ERROR)
        raise
    finally:
        outcome.timings["total"] = time.perf_counter() - t0
        outcome.finished_at = time.time()
        # Named now: the report may run after the response, when the request's context has ended.
        outcome.request_id = outcome.request_id or request_id_var.get()
        outcome.key_prefix = outcome.key_prefix or key_prefix_var.get()
        report(lambda: _report(outcome))


def _report(outcome: PredictOutcome) -> None:
    observe(outcome)
    run_hooks(outcome)


# ---- the steps of a request ------------------------------------------------------------------------

async def serving(*, model_name: str, ref: str | int | None, key: Any,
                  routing_key: str | None = None) -> tuple[ModelVersion, Loaded, Route]:
    """The version that answers (one pick of a split alias, sticky by `routing_key`), its loaded form in
    this process and the route it was picked from (with the alias's shadow); 404, 503 with the reason."""
    route = await offload.without_blocking(selectors.serving_route, model_name=model_name, ref=ref, key=key)
    version = route.pick(routing_key)
    loaded = get_pool().loaded_now(version)  # the common case: loaded, one lookup
    if loaded is not None:
        return version, loaded, route
    try:
        loaded = await loaded_version(version, key=key)
    except ModelNotReady as exc:
        raise ServiceUnavailable(f"model not ready: {exc}", retry_after=30,
                                 details={"model": model_name, "version": version.version}) from exc
    return version, loaded, route


async def loaded_version(version: ModelVersion, *, key: Any) -> Loaded:
    """The loaded form of `version` in this process; it is loaded now only when a request with `key` may
    make it load (``selectors.may_load_on_demand``), else ModelNotReady says how to have it loaded."""
    pool = get_pool()
    if version.status == ModelVersion.Status.READY and not pool.is_loaded(version) and not await offload.without_blocking(
            selectors.may_load_on_demand, version=version, key=key):
        raise ModelNotReady(
            f"version {version.version} is not loaded in this process, and no alias points at it: move an alias "
            "to it (or use a key restricted to this model) to have it loaded on demand")
    return await offload.without_blocking(pool.loaded, version)


def input_error(exc: InputError) -> APIError:
    """The API error of a bad input: 400 with the field's path, 413 for a request over a budget."""
    if exc.status == 413:
        return PayloadTooLarge(str(exc), details={"path": exc.path} if exc.path else None)
    return InvalidInput(str(exc), path=exc.path, code=exc.code)


async def prepare(prepare_fn: Callable[[], Prepared], *, heavy: bool, timings: dict[str, float]) -> Prepared:
    """Decode and preprocess a request's input (off the loop when `heavy`), timed; bad input: 400/413."""
    t0 = time.perf_counter()
    try:
        prepared = await offload.compute(prepare_fn, heavy=heavy)
    except InputError as exc:
        raise input_error(exc) from exc
    timings["preprocess"] = time.perf_counter() - t0
    return prepared


def _output_elements(outputs: dict[str, np.ndarray]) -> int:
    return sum(arr.size for arr in outputs.values())


def _batch_finish(served: Any, finish: Callable[[Any, Prepared], Any], prepared: Prepared) -> Finish | None:
    """A v1 request's postprocess, run by its batcher for the whole batch (``runtime.batcher.Finish``):
    for requests without parameters, whose postprocess is then the same function of each row. One
    vectorised call per batch costs far less than one per request (docs/benchmarks.md), and takes
    the work off the event loop."""
    if prepared.ctx.parameters or finish != served.finish:  # v2's postprocess_tensors, or parameters
        return None
    ctx = prepared.ctx
    return Finish(key=(id(served), "finish"), fn=lambda outputs, n: served.finish(outputs, Prepared({}, ctx, n)),
                  max_elements=hot.INFERENCE_INLINE_ELEMENTS)


async def compute(loaded: Loaded, prepared: Prepared, finish: Callable[[Any, Prepared], Any], *,
                  outcome: PredictOutcome | None = None, timeout: float | None = None,
                  raw_outputs: dict[str, np.ndarray] | None = None) -> Any:
    """Batch and compute prepared inputs on the batcher's thread, then finish (postprocess, off the
    loop above INFERENCE_INLINE_ELEMENTS of output); every failure mapped to its API error. The
    model's own outputs are also put in `raw_outputs` when given (a copy for the shadow)."""
    timings = outcome.timings if outcome is not None else {}
    timeout = timeout if timeout is not None else hot.INFERENCE_PREDICT_TIMEOUT
    if outcome is not None:
        outcome.queue_depth = loaded.batcher.queue_depth
    try:
        pending = await loaded.batcher.run(prepared.arrays, timeout=timeout,
                                           finish=_batch_finish(loaded.served, finish, prepared))
        outputs = pending.outputs()
    except Overloaded as exc:
        raise ServiceUnavailable(str(exc), retry_after=exc.retry_after, code=ErrorCode.OVERLOADED) from exc
    except BatcherStopped as exc:
        raise ServiceUnavailable("The model is being unloaded; retry.", retry_after=1) from exc
    except TimeoutError as exc:
        raise ServiceUnavailable(
            f"The model did not answer within {timeout:.0f} s (INFERENCE_PREDICT_TIMEOUT); it is overloaded.",
            retry_after=5, code=ErrorCode.TIMEOUT,
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the model's own error, for this batch only
        raise ModelFailed(f"The model failed on this batch: {type(exc).__name__}: {exc}") from exc
    if raw_outputs is not None:
        raw_outputs.update(outputs)
    t2 = time.perf_counter()
    timings["queue"] = max(0.0, pending.started - pending.enqueued)
    timings["compute"] = pending.finished - pending.started
    if pending.results is not None:  # postprocessed on the batcher's thread, with its batch
        result = pending.results
        timings["postprocess"] = pending.finish_seconds
    else:
        heavy = _output_elements(outputs) > hot.INFERENCE_INLINE_ELEMENTS
        try:
            result = await offload.compute(finish, outputs, prepared, heavy=heavy)
        except InputError as exc:
            raise input_error(exc) from exc
        except APIError:
            raise
        except Exception as exc:  # noqa: BLE001 - a postprocess step or schema mismatch
            raise ModelFailed(f"Postprocessing failed: {type(exc).__name__}: {exc}") from exc
        timings["postprocess"] = time.perf_counter() - t2
    if outcome is not None:
        outcome.instances = prepared.n
        outcome.batch_size = pending.batch_size
    return result


# ---- the protocols -------------------------------------------------------------------------------------

def parse_predict_body(body: Any) -> tuple[Any, Any]:
    """Return (instances, parameters) from a predict body, or InvalidInput."""
    if not isinstance(body, dict):
        raise InvalidInput('The body must be a JSON object: {"instances": [...]}.', path="")
    unknown = set(body) - PREDICT_BODY_KEYS
    if unknown:
        raise InvalidInput(f"Unknown field(s) {sorted(unknown)}; expected instances and optional parameters.",
                           path=sorted(unknown)[0])
    if "instances" not in body:
        raise InvalidInput('The body needs "instances": a list of inputs, one per prediction.', path="instances")
    return body["instances"], body.get("parameters")


async def predict(*, model_name: str, ref: str | int | None, key: Any, body: Any, size: int = 0,
                  request_id: str = "", maybe_bools: MaybeBools = True,
                  routing_key: str | None = None) -> dict[str, Any]:
    """Answer a v1 predict request (its parsed JSON `body`, `size` bytes on the wire): the response body."""
    with observed(model_name, request_id) as outcome:
        instances, parameters = parse_predict_body(body)
        version, loaded, route = await serving(model_name=model_name, ref=ref, key=key, routing_key=routing_key)
        outcome.version, outcome.loaded = version.version, loaded
        capture = version.model.capture_payloads  # RegisteredModel.capture_payloads, from the memo
        if capture:
            outcome.payload = (body, None)  # a failed request keeps its input
        served = loaded.served
        heavy = served.decodes_input or size > hot.INFERENCE_INLINE_BYTES
        prepared = await prepare(lambda: served.prepare(instances, parameters, maybe_bools=maybe_bools),
                                 heavy=heavy, timings=outcome.timings)
        copy = shadow.sample(route, version)  # None unless this request is also sent to the alias's shadow
        if copy is not None:
            copy.keep_instances(instances, parameters, maybe_bools=maybe_bools)
        if not capture:
            # The parsed JSON holds a Python object per number: drop it now rather than keep it
            # while the request waits for its batch.
            body = instances = None
        raw = {} if copy is not None else None
        predictions = await compute(loaded, prepared, served.finish, outcome=outcome, raw_outputs=raw)
        response = {"id": request_id, "model": model_name, "version": version.version, "predictions": predictions}
        if capture:
            outcome.payload = (body, response)
        if copy is not None and raw:
            copy.offer(served=served, prepared=prepared, outputs=raw, numeric=False)  # never waits
        return response


async def infer(*, model_name: str, ref: str | int | None, key: Any, body: Callable[[], bytes], size: int,
                header_length: int | None, request_id: str = "",
                routing_key: str | None = None) -> tuple[bytes, int | None]:
    """Answer an Open Inference Protocol infer request, whose body (`size` bytes on the wire) `body()`
    returns (decompressed, checked against the size limit): (response body, Inference-Header-Content-Length)."""
    with observed(model_name, request_id) as outcome:
        version, loaded, route = await serving(model_name=model_name, ref=ref, key=key, routing_key=routing_key)
        outcome.version, outcome.loaded = version.version, loaded
        served = loaded.served
        heavy = size > hot.INFERENCE_INLINE_BYTES
        parsed = await offload.compute(lambda: oip.parse_infer_request(body(), header_length), heavy=heavy)
        parameters = {k: v for k, v in parsed.parameters.items() if k != "binary_data_output"} or None
        prepared = await prepare(lambda: served.prepare_arrays(parsed.inputs, parameters),
                                 heavy=heavy or served.decodes_input, timings=outcome.timings)
        copy = shadow.sample(route, version)  # None unless this request is also sent to the alias's shadow
        if copy is not None:
            copy.keep_arrays(parsed.inputs, parameters)
        result = await compute(loaded, prepared, served.postprocess_tensors, outcome=outcome)
        labels = served.class_labels

        def respond() -> tuple[bytes, int | None]:
            tensors = oip_outputs.output_tensors(result, labels, parsed.outputs)
            return oip.encode_infer_response(
                model_name=model_name, model_version=str(version.version), request_id=parsed.id, tensors=tensors,
                requested=parsed.outputs, binary_default=parsed.binary_output)

        answer = await offload.compute(
            respond, heavy=sum(t.size for t in result.values()) > hot.INFERENCE_INLINE_ELEMENTS)
        if copy is not None:
            copy.offer(served=served, prepared=prepared, outputs=result, numeric=True)  # never waits
        return answer


async def predict_instances(loaded: Loaded, instances: list[Any], parameters: Any = None, *,
                            timeout: float | None = None) -> list[Any]:
    """Predict a chunk of a background job's instances with a loaded version: one prediction each."""
    served = loaded.served
    prepared = await prepare(lambda: served.prepare(instances, parameters), heavy=True, timings={})
    return await compute(loaded, prepared, served.finish, timeout=timeout)
