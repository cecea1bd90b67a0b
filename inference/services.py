"""Serving business logic: run a prediction request end to end.

Views parse HTTP and call ``predict()``; background jobs call the same pieces per chunk.
Nothing here writes to the database.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from registry.models import ModelVersion
from registry.selectors import is_registry_name

from .errors import ErrorCode, InvalidInput, ModelFailed, NotFound, ServiceUnavailable
from .monitoring.observe import observe
from .runtime.base import ModelNotReady
from .runtime.batcher import BatcherStopped, Overloaded
from .runtime.cache import Loaded
from .runtime.pool import get_pool
from .steps import Batch, Blocking, Steps, run
from .tensors import InputError

logger = logging.getLogger("inference.predict")

PREDICT_BODY_KEYS = {"instances", "parameters", "id"}


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


# ---- hooks --------------------------------------------------------------------------------------

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


setting_changed.connect(_reset_hooks, dispatch_uid="inference.services.reset_hooks")


def run_hooks(outcome: PredictOutcome) -> None:
    """Call every INFERENCE_HOOKS callable; a failing hook is logged, never fails the request."""
    for hook in _load_hooks():
        try:
            hook(model=outcome.model, version=outcome.version, timings=outcome.timings, outcome=outcome)
        except Exception:  # noqa: BLE001
            logger.exception("inference hook %r failed", hook)


# ---- resolution ---------------------------------------------------------------------------------

def visible_model(*, model_name: str, key: Any) -> Any:
    """Return the model if it exists and the key may see it; else NotFound (same answer for both)."""
    if not is_registry_name(model_name) or (key is not None and not key.may_see(model_name)):
        raise NotFound(f"No model named {model_name!r}.")
    model = get_pool().model(model_name)
    if model is None:
        raise NotFound(f"No model named {model_name!r}.")
    return model


def served_version(*, model_name: str, ref: str | int | None, key: Any) -> tuple[ModelVersion, Loaded]:
    """Return the version a request means and its loaded form, or the right API error."""
    return run(served_version_steps(model_name=model_name, ref=ref, key=key))


def served_version_steps(*, model_name: str, ref: str | int | None, key: Any) -> Steps[tuple[ModelVersion, Loaded]]:
    """``served_version`` as steps: loading a model this process has not loaded yet is a Blocking wait."""
    pool = get_pool()
    model = visible_model(model_name=model_name, key=key)
    version = pool.resolve(model, ref)
    if version is None:
        if ref is None:
            raise ServiceUnavailable(
                f"Model {model_name!r} has no ready version and no production alias yet.", retry_after=30
            )
        raise NotFound(f"Model {model_name!r} has no version or alias {str(ref)!r}.")
    try:
        loaded = pool.loaded_now(version)
        if loaded is None:
            loaded = yield Blocking(lambda: pool.loaded(version))
        return version, loaded
    except ModelNotReady as exc:
        raise ServiceUnavailable(f"model not ready: {exc}", retry_after=30,
                                 details={"model": model_name, "version": version.version}) from exc


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


CLIENT_CLOSED = 499  # nginx's status for a request whose client closed the connection first


@contextmanager
def observed(model_name: str) -> Iterator[PredictOutcome]:
    """Time one inference request and report it (metrics, hooks) however it ends.

    The one place every request (v1 predict, v2 infer) is observed: callers set
    ``outcome.version`` and ``outcome.loaded`` once they know them.
    """
    t0 = time.perf_counter()
    outcome = PredictOutcome(model=model_name, version=None, status=200)
    try:
        yield outcome
    except GeneratorExit:  # the async front's client went away while the request waited
        outcome.status, outcome.error_code = CLIENT_CLOSED, ErrorCode.CANCELLED
        raise
    except Exception as exc:
        outcome.status = getattr(exc, "status_code", 500)
        outcome.error_code = getattr(exc, "error_code", ErrorCode.SERVER_ERROR)
        raise
    finally:
        outcome.timings["total"] = time.perf_counter() - t0
        observe(outcome)  # metrics, access log line, request record
        run_hooks(outcome)


def predict(
    *,
    model_name: str,
    ref: str | int | None,
    body: Any,
    key: Any = None,
    request_id: str = "",
    maybe_bools: bool = True,
) -> dict[str, Any]:
    """Run one predict request through pipeline and batcher; return the response body."""
    return run(predict_steps(model_name=model_name, ref=ref, body=body, key=key, request_id=request_id,
                             maybe_bools=maybe_bools))


def predict_steps(
    *,
    model_name: str,
    ref: str | int | None,
    body: Any,
    key: Any = None,
    request_id: str = "",
    maybe_bools: bool = True,
) -> Steps[dict[str, Any]]:
    """``predict`` as steps (inference.steps): the WSGI view runs them blocking, the async front awaiting."""
    with observed(model_name) as outcome:
        instances, parameters = parse_predict_body(body)
        version, loaded = yield from served_version_steps(model_name=model_name, ref=ref, key=key)
        outcome.version, outcome.loaded = version.version, loaded
        outcome.request_id = request_id
        capture = version.model.capture_payloads  # RegisteredModel.capture_payloads, from the pool's memo
        if capture:
            outcome.payload = (body, None)  # a failed request keeps its input
        served = loaded.served
        prepared = prepare_input(lambda: served.prepare(instances, parameters, maybe_bools=maybe_bools),
                                 outcome.timings)
        if not capture:
            # The parsed JSON holds a Python object per number (24 bytes each): drop it now rather
            # than keep it while the request waits for its batch. With 32 instances of 512
            # values per request and 16 requests waiting per process, the heap's high-water
            # mark is several MB lower.
            body = instances = None
        predictions = yield from compute_steps(loaded, prepared, served.finish, outcome=outcome)
        response = {"id": request_id, "model": model_name, "version": version.version, "predictions": predictions}
        if capture:
            outcome.payload = (body, response)
        return response


def run_instances(
    loaded: Loaded,
    instances: Any,
    parameters: Any = None,
    *,
    outcome: PredictOutcome | None = None,
    maybe_bools: bool = True,
    timeout: float | None = None,
) -> list[Any]:
    """Decode, preprocess, batch, compute and postprocess instances; return one prediction each."""
    served = loaded.served
    return run_prepared(
        loaded,
        lambda: served.prepare(instances, parameters, maybe_bools=maybe_bools),
        served.finish,
        outcome=outcome,
        timeout=timeout,
    )


def run_tensors(
    loaded: Loaded,
    arrays: dict[str, Any],
    parameters: Any = None,
    *,
    outcome: PredictOutcome | None = None,
    timeout: float | None = None,
) -> Any:
    """Run already-decoded input tensors (the Open Inference Protocol's); return the postprocessed outputs."""
    return run(run_tensors_steps(loaded, arrays, parameters, outcome=outcome, timeout=timeout))


def run_tensors_steps(
    loaded: Loaded,
    arrays: dict[str, Any],
    parameters: Any = None,
    *,
    outcome: PredictOutcome | None = None,
    timeout: float | None = None,
) -> Steps[Any]:
    """``run_tensors`` as steps."""
    served = loaded.served
    return run_prepared_steps(
        loaded,
        lambda: served.prepare_arrays(arrays, parameters),
        served.postprocess,
        outcome=outcome,
        timeout=timeout,
    )


def run_prepared(
    loaded: Loaded,
    prepare: Callable[[], Any],
    finish: Callable[[Any, Any], Any],
    *,
    outcome: PredictOutcome | None = None,
    timeout: float | None = None,
) -> Any:
    """Prepare (decode + preprocess), batch and compute, then finish (postprocess); map errors to API errors."""
    return run(run_prepared_steps(loaded, prepare, finish, outcome=outcome, timeout=timeout))


def run_prepared_steps(
    loaded: Loaded,
    prepare: Callable[[], Any],
    finish: Callable[[Any, Any], Any],
    *,
    outcome: PredictOutcome | None = None,
    timeout: float | None = None,
) -> Steps[Any]:
    """``run_prepared`` as steps: waiting for the batch is the one wait."""
    prepared = prepare_input(prepare, outcome.timings if outcome is not None else {})
    return (yield from compute_steps(loaded, prepared, finish, outcome=outcome, timeout=timeout))


def prepare_input(prepare: Callable[[], Any], timings: dict[str, float]) -> Any:
    """Decode and preprocess a request's input (``prepare()``), timed; a bad input is InvalidInput."""
    t0 = time.perf_counter()
    try:
        prepared = prepare()
    except InputError as exc:
        raise InvalidInput(str(exc), path=exc.path, code=exc.code) from exc
    timings["preprocess"] = time.perf_counter() - t0
    return prepared


def compute_steps(
    loaded: Loaded,
    prepared: Any,
    finish: Callable[[Any, Any], Any],
    *,
    outcome: PredictOutcome | None = None,
    timeout: float | None = None,
) -> Steps[Any]:
    """Batch and compute prepared inputs, then finish (postprocess); map errors to API errors."""
    timings = outcome.timings if outcome is not None else {}
    timeout = timeout if timeout is not None else settings.INFERENCE_PREDICT_TIMEOUT
    try:
        depth = loaded.batcher.queue_depth
        if outcome is not None:
            outcome.queue_depth = depth
        if loaded.metrics is not None:
            loaded.metrics.queue_depth.set(depth)
        pending = yield Batch(loaded.batcher, prepared.arrays, timeout)
        outputs = pending.future.result(0)
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
    t2 = time.perf_counter()
    timings["queue"] = max(0.0, pending.started - pending.enqueued)
    timings["compute"] = pending.finished - pending.started
    try:
        result = finish(outputs, prepared)
    except InputError as exc:
        raise InvalidInput(str(exc), path=exc.path, code=exc.code) from exc
    except Exception as exc:  # noqa: BLE001 - a postprocess step or schema mismatch
        raise ModelFailed(f"Postprocessing failed: {type(exc).__name__}: {exc}") from exc
    timings["postprocess"] = time.perf_counter() - t2
    if outcome is not None:
        outcome.instances = prepared.n
        outcome.batch_size = pending.batch_size
    return result
