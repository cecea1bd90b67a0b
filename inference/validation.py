"""The serving side's version validator (settings.REGISTRY_VERSION_VALIDATOR).

Runs inside the validation process that the registry starts: builds the version exactly
as it will be served (pipelines, runtime on the CPU), loads it, and runs the config's
example (or zeros of the declared input shapes) through preprocess, model and
postprocess. Any problem raises; the registry records it as the version's failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError

from registry.schemas import parse_version_config

from .pipeline.base import StepConfigError, StepContext, per_instance
from .pipeline.served import ServedVersion
from .runtime.base import LoadSpec, zeros_for
from .tensors import InputError


def validate_version(*, config: dict[str, Any], artifact_path: str, allow_code: bool) -> dict[str, Any]:
    """Load the version and run its example end to end; return what it predicted."""
    cfg = parse_version_config(config)
    path = Path(artifact_path)
    spec = LoadSpec(
        label="the new version",
        read_artifact=path.read_bytes,
        format=cfg.format,
        inputs=cfg.inputs,
        outputs=cfg.outputs,
        architecture=cfg.architecture,
        architecture_args=cfg.architecture_args,
        allow_code=allow_code,
        warmup=False,
    )
    try:
        served = ServedVersion(spec, preprocess=cfg.preprocess, postprocess=cfg.postprocess, batching=cfg.batching)
    except StepConfigError as exc:
        raise ValidationError(f"Pipeline: {exc}", code="invalid_pipeline") from exc
    served.load()
    if cfg.example is not None:
        try:
            prediction = served.predict_direct([cfg.example])[0]
        except InputError as exc:
            raise ValidationError(f"The example does not fit the input schema at {exc.path}: {exc}") from exc
        source = "example"
    else:
        arrays = zeros_for(cfg.inputs)
        outputs = served.runtime.predict(arrays)
        served.check_outputs(outputs, 1)
        prediction = per_instance(served.post(outputs, StepContext(cfg.inputs, cfg.outputs, {})), 1)[0]
        source = "zeros"
    served.unload()
    return {"input": source, "prediction": prediction}
