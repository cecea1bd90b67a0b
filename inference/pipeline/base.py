"""The step contract and the pipeline that chains steps.

A version's ``preprocess`` and ``postprocess`` are lists of step configs such as
``{"step": "normalize", "mean": [...], "std": [...]}``. Each names a ``Step`` class
(the built-ins in ``steps.py`` or an operator's class from
``settings.INFERENCE_PIPELINE_STEPS``) that is built once, when the version is loaded,
and then called per request on that request's instances:

* preprocess steps take and return ``{input_name: ndarray}`` with the batch dimension
  first (one row per instance of the request);
* postprocess steps take ``{output_name: ndarray}`` and return either such a dict or a
  list with one JSON-ready value per instance (labels, top-k lists ...), which later
  steps may refine.

Bad step configs raise ``StepConfigError`` at load; bad per-request input raises
``StepInputError`` (a 400 for the client).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from django.conf import settings
from django.utils.module_loading import import_string

Arrays = dict[str, np.ndarray]


class StepConfigError(ValueError):
    """A step's configuration is invalid (operator error, reported at registration)."""


class StepInputError(ValueError):
    """A request's data cannot go through a step (client error, reported as 400; 413 for a request
    over a per-request budget)."""

    def __init__(self, message: str, *, path: str = "", code: str = "invalid_input", status: int = 400):
        super().__init__(message)
        self.path = path
        self.code = code
        self.status = status


@dataclass
class StepContext:
    """What a step may know about the version and the request it serves."""

    inputs: Sequence[Any] = ()  # TensorSpec of the version's inputs
    outputs: Sequence[Any] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)  # validated request options


class Step:
    """Base class of a pipeline step. Subclasses set `name` and implement `__call__`.

    ``__init__`` receives the step's config (without "step") and must validate it,
    raising StepConfigError. ``request_parameters`` maps the request options the step
    accepts to a validator returning the cleaned value (or raising ValueError).
    """

    name: ClassVar[str] = ""
    request_parameters: ClassVar[dict[str, Any]] = {}
    #: True for steps that turn raw request values (e.g. base64 images) into tensors:
    #: their input is not checked against the tensor schema before the step runs.
    decodes_input: ClassVar[bool] = False
    #: True for steps that turn tensors into per-instance JSON values (labels, top-k lists): the
    #: Open Inference Protocol stops before the first of them and answers tensors (``oip_outputs``).
    structures: ClassVar[bool] = False

    def __init__(self, **config: Any):
        if config:
            raise StepConfigError(f"step {self.name!r} takes no options, got {sorted(config)}")

    def __call__(self, data: Any, ctx: StepContext) -> Any:
        raise NotImplementedError("subclasses of Step must provide a __call__() method")

    # Helpers for steps that act on one named tensor ------------------------------------
    @staticmethod
    def pick(data: Arrays, name: str | None, *, kind: str) -> str:
        """Return the tensor name a step applies to: `name`, or the only one there is."""
        if not isinstance(data, dict):
            raise StepConfigError(f"this step needs tensors, but an earlier step already produced {kind} values")
        if name is not None:
            if name not in data:
                raise StepConfigError(f"no {kind} tensor named {name!r} (have {sorted(data)})")
            return name
        if len(data) != 1:
            raise StepConfigError(f"several {kind} tensors ({sorted(data)}): say which one with \"input\"/\"output\"")
        return next(iter(data))


def builtin_steps() -> dict[str, type[Step]]:
    from . import steps

    return {cls.name: cls for cls in steps.BUILTIN_STEPS}


def step_registry() -> dict[str, type[Step]]:
    """Return step name -> class: the built-ins plus settings.INFERENCE_PIPELINE_STEPS."""
    registry = builtin_steps()
    for name, path in getattr(settings, "INFERENCE_PIPELINE_STEPS", {}).items():
        registry[name] = import_string(path) if isinstance(path, str) else path
    return registry


class Pipeline:
    """A built chain of steps for one stage (pre or post) of one version."""

    def __init__(self, configs: Sequence[Mapping[str, Any]], *, stage: str):
        registry = step_registry()
        self.stage = stage
        self.steps: list[Step] = []
        for i, raw in enumerate(configs or ()):
            options = dict(raw)
            name = options.pop("step", None)
            cls = registry.get(name)
            if cls is None:
                raise StepConfigError(
                    f"{stage}[{i}]: unknown step {name!r}; known steps: {', '.join(sorted(registry))}"
                )
            try:
                self.steps.append(cls(**options))
            except StepConfigError as exc:
                raise StepConfigError(f"{stage}[{i}] ({name}): {exc}") from exc
            except TypeError as exc:
                raise StepConfigError(f"{stage}[{i}] ({name}): bad options: {exc}") from exc
        self.request_parameters: dict[str, Any] = {}
        for step in self.steps:
            self.request_parameters.update(step.request_parameters)

    def decoded_inputs(self, input_names: Sequence[str]) -> set[str]:
        """Return the input names a decoding step (e.g. image) turns from raw values into tensors."""
        names: set[str] = set()
        for step in self.steps:
            if step.decodes_input:
                name = getattr(step, "input", None)
                if name is None and len(input_names) != 1:
                    raise StepConfigError(f"step {step.name!r} must name its input: the model has {list(input_names)}")
                names.add(name or input_names[0])
        return names

    def __call__(self, data: Any, ctx: StepContext) -> Any:
        for step in self.steps:
            data = step(data, ctx)
        return data

    @property
    def tensor_steps(self) -> list[Step]:
        """The steps before the first structuring one: those that keep tensors tensors."""
        out: list[Step] = []
        for step in self.steps:
            if step.structures:
                break
            out.append(step)
        return out

    def run_tensor_steps(self, data: Arrays, ctx: StepContext) -> Arrays:
        """Run the tensor steps; an operator's step that returns per-instance values without saying
        so (``structures``) ends them there, its result unused."""
        for step in self.tensor_steps:
            result = step(data, ctx)
            if not isinstance(result, dict):
                break
            data = result
        return data


def clean_parameters(raw: Any, allowed: Mapping[str, Any]) -> dict[str, Any]:
    """Return the request's `parameters` validated against what the version's steps allow."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise StepInputError("parameters must be an object.", path="parameters")
    cleaned: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            raise StepInputError(
                f"unknown parameter {key!r}; this model accepts {sorted(allowed) or 'none'}.",
                path=f"parameters.{key}",
            )
        try:
            cleaned[key] = allowed[key](value)
        except (TypeError, ValueError) as exc:
            raise StepInputError(str(exc), path=f"parameters.{key}") from exc
    return cleaned


def per_instance(data: Any, n: int) -> list[Any]:
    """Return one JSON-ready prediction per instance from a postprocess result."""
    if isinstance(data, list):
        return data
    if len(data) == 1:
        return next(iter(data.values())).tolist()
    columns = {k: v.tolist() for k, v in data.items()}
    return [{k: col[i] for k, col in columns.items()} for i in range(n)]
