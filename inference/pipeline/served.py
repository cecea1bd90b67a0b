"""A version as it is served: its pipelines and schema checks around a runtime, built once at load.

The request path, background jobs and registration-time validation all go through this one
class, so they decode, preprocess, check and postprocess identically:

    prepared = served.prepare(instances, parameters)   # decode + preprocess + check
    outputs = <batcher or served.runtime>.predict(prepared.arrays)
    predictions = served.finish(outputs, prepared)      # check + postprocess

The runtime holds tensors only (``inference.runtime``); which runtime class serves a format is
a setting (INFERENCE_RUNTIMES: format -> dotted path), so tests serve a fake one the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.utils.module_loading import import_string

from registry.schemas import CODE_FORMATS, Batching, TensorSpec, parse_tensor_schema

from ..runtime.base import LoadSpec, Runtime
from ..tensors import InputError, Limits, MaybeBools, check_input_arrays, check_model_inputs, decode_instances
from .base import Pipeline, StepContext, StepInputError, clean_parameters, per_instance


@dataclass
class Prepared:
    arrays: dict[str, np.ndarray]
    ctx: StepContext
    n: int


def _shape_ok(actual: Sequence[int], declared: Sequence[int]) -> bool:
    return len(actual) == len(declared) and all(d == -1 or a == d for a, d in zip(actual, declared))


def optimizer_for(*, target_name: str, device_type: str) -> str:
    """The load-time optimiser of a hardware target (``inference.runtime.optimizers``): INFERENCE_OPTIMIZERS's
    entry for the target's name, else for its device type, else "none"."""
    chosen = settings.INFERENCE_OPTIMIZERS
    for key in (target_name, device_type):
        if key in chosen:
            return chosen[key]
    return "none"


def runtime_class(format: str) -> type[Runtime]:
    """The runtime class that serves `format` (settings.INFERENCE_RUNTIMES)."""
    try:
        path = settings.INFERENCE_RUNTIMES[format]
    except KeyError:
        raise ValueError(f"no runtime serves the format {format!r} (INFERENCE_RUNTIMES)") from None
    return import_string(path) if isinstance(path, str) else path


def class_labels(post: Pipeline, output_names: Sequence[str]) -> dict[str, list[str]]:
    """Output name -> class names of the first ``labels`` step: the output it names, else the one a
    ``topk`` before it names, else the only output (several outputs and no name: none)."""
    named = None
    for step in post.steps:
        if step.name == "topk":
            named = getattr(step, "output", None)
        if step.name == "labels" and isinstance(labels := getattr(step, "labels", None), list):
            target = getattr(step, "output", None) or named or (output_names[0] if len(output_names) == 1 else None)
            return {target: labels} if target in output_names else {}
    return {}


class ServedVersion:
    """One loaded version: everything decided once, at load."""

    def __init__(
        self,
        spec: LoadSpec,
        *,
        preprocess: Sequence[dict] = (),
        postprocess: Sequence[dict] = (),
        batching: Batching | None = None,
        model_name: str = "",
        version: int = 0,
        key: Any = None,
        limits: Limits | None = None,
    ):
        self.spec = spec
        self.inputs: Sequence[TensorSpec] = spec.inputs
        self.outputs: Sequence[TensorSpec] = spec.outputs
        self.pre = Pipeline(preprocess, stage="preprocess")  # StepConfigError for a bad config
        self.post = Pipeline(postprocess, stage="postprocess")
        # output name -> class names, from the ``labels`` step (v2's label outputs and classification)
        self.class_labels = class_labels(self.post, [s.name for s in self.outputs])
        self.raw_inputs = self.pre.decoded_inputs([s.name for s in self.inputs])
        self.parameters = {**self.pre.request_parameters, **self.post.request_parameters}
        self.batching = batching or Batching()
        self.model_name = model_name
        self.version = version
        self.key = key
        self.limits = limits
        self.runtime = runtime_class(spec.format)(spec)

    @classmethod
    def from_version(cls, version: Any, *, limits: Limits | None = None) -> ServedVersion:
        """Return the served form of a registry ModelVersion row (not yet loaded)."""
        artifact = version.artifact

        def read() -> bytes:
            with artifact.open("rb") as fh:
                return fh.read()

        target = version.hardware
        spec = LoadSpec(
            label=f"{version.model.name} v{version.version}",
            read_artifact=read,
            format=version.format,
            inputs=parse_tensor_schema(version.input_schema, where="inputs"),
            outputs=parse_tensor_schema(version.output_schema, where="outputs"),
            sha256=version.sha256,
            architecture=version.architecture,
            architecture_args=version.architecture_args,
            device_type=target.device_type,
            device_index=target.device_index,
            cpu_threads=target.cpu_threads,
            optimizer=optimizer_for(target_name=target.name, device_type=target.device_type),
        )
        return cls(
            spec,
            preprocess=version.preprocess,
            postprocess=version.postprocess,
            batching=Batching(version.max_batch_size, version.max_batch_delay_ms, version.max_queue_size),
            model_name=version.model.name,
            version=version.version,
            key=(version.pk, target.device),
            limits=limits,
        )

    @property
    def runs_code(self) -> bool:
        return self.spec.format in CODE_FORMATS

    @property
    def decodes_input(self) -> bool:
        """Whether a step decodes raw request values (images): never cheap enough for an event loop."""
        return bool(self.raw_inputs)

    def load(self) -> None:
        self.runtime.load()

    def unload(self) -> None:
        self.runtime.unload()

    @property
    def nbytes(self) -> int:
        return self.runtime.nbytes

    def prepare(self, instances: Any, parameters: Any = None, *, maybe_bools: MaybeBools = True) -> Prepared:
        """Decode and preprocess a request's instances; raise InputError for bad input."""
        limits = self.limits or Limits.from_settings()
        try:
            ctx = StepContext(self.inputs, self.outputs, clean_parameters(parameters, self.parameters))
            arrays = decode_instances(
                instances, self.inputs, limits=limits, raw_inputs=self.raw_inputs, maybe_bools=maybe_bools
            )
            n = len(instances)
            arrays = self.pre(arrays, ctx)
        except StepInputError as exc:
            raise InputError(str(exc), path=exc.path, code=exc.code, status=exc.status) from exc
        check_model_inputs(arrays, self.inputs)
        return Prepared(arrays, ctx, n)

    def prepare_arrays(self, arrays: dict[str, np.ndarray], parameters: Any = None) -> Prepared:
        """Validate already-decoded input tensors (batch first) and preprocess them."""
        limits = self.limits or Limits.from_settings()
        try:
            ctx = StepContext(self.inputs, self.outputs, clean_parameters(parameters, self.parameters))
            n = check_input_arrays(arrays, self.inputs, limits=limits, raw_inputs=self.raw_inputs)
            arrays = self.pre(dict(arrays), ctx)
        except StepInputError as exc:
            raise InputError(str(exc), path=exc.path, code=exc.code, status=exc.status) from exc
        check_model_inputs(arrays, self.inputs)
        return Prepared(arrays, ctx, n)

    def postprocess_tensors(self, outputs: dict[str, np.ndarray], prepared: Prepared) -> dict[str, np.ndarray]:
        """Return the outputs as tensors, after the postprocess steps before the first structuring one
        (softmax, argmax, round ...; not labels, topk): what the Open Inference Protocol answers."""
        self.check_outputs(outputs, prepared.n)
        return self.post.run_tensor_steps(dict(outputs), prepared.ctx)

    def check_outputs(self, outputs: dict[str, np.ndarray], n: int) -> None:
        """Raise RuntimeError unless the model's outputs match the declared schema."""
        for spec in self.outputs:
            arr = outputs[spec.name]
            if arr.shape[:1] != (n,) or not _shape_ok(arr.shape[1:], spec.shape):
                raise RuntimeError(
                    f"the model returned {spec.name!r} with shape {list(arr.shape)}; the schema declares "
                    f"{list(spec.shape)} per instance for a batch of {n}"
                )

    def finish(self, outputs: dict[str, np.ndarray], prepared: Prepared) -> list[Any]:
        """Return one JSON-ready prediction per instance."""
        self.check_outputs(outputs, prepared.n)
        return per_instance(self.post(outputs, prepared.ctx), prepared.n)

    def predict_direct(self, instances: Any, parameters: Any = None) -> list[Any]:
        """Run instances through pipeline and model without a batcher (registration-time validation)."""
        prepared = self.prepare(instances, parameters)
        return self.finish(self.runtime.predict(prepared.arrays), prepared)
