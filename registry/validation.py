"""Validate a version in a separate process, so a bad artifact cannot crash or poison the caller.

The parent (admin request, command, background task) writes nothing to the database
here: it hands the artifact path and config to a fresh Python process running
``python -m registry.validation``, which sets Django up, calls the callable named by
``settings.REGISTRY_VERSION_VALIDATOR`` (the serving side's: load, run the example through
pipeline and model), and prints one JSON line. A crash, a signal, a hang past
``REGISTRY_VALIDATION_TIMEOUT`` or a Python error all come back as a failure with
the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

RESULT_MARKER = "@@validation-result@@ "


@dataclass
class ValidationOutcome:
    ok: bool
    error: str = ""
    details: dict[str, Any] | None = None


def validate_model_only(*, config: dict[str, Any], artifact_path: str, allow_code: bool) -> dict[str, Any]:
    """Load the artifact and run a zero input of the declared shapes through the model.

    The registry's own fallback validator, used when REGISTRY_VERSION_VALIDATOR is empty.
    """
    import torch

    from .artifacts import load_module
    from .schemas import DATATYPES, parse_version_config

    cfg = parse_version_config(config)
    module = load_module(
        Path(artifact_path).read_bytes(),
        format=cfg.format,
        architecture=cfg.architecture,
        architecture_args=cfg.architecture_args,
        allow_code=allow_code,
    )
    args = [
        torch.zeros((1, *[d if d > 0 else 1 for d in t.shape]), dtype=getattr(torch, DATATYPES[t.datatype]))
        for t in cfg.inputs
    ]
    with torch.inference_mode():
        out = module(*args)
    return {"output_shape": list(out.shape) if hasattr(out, "shape") else None}


def validate_in_subprocess(
    *, config: dict[str, Any], artifact_path: str, allow_code: bool, timeout: float | None = None
) -> ValidationOutcome:
    """Return the outcome of validating one artifact + config in a fresh process."""
    timeout = timeout if timeout is not None else settings.REGISTRY_VALIDATION_TIMEOUT
    payload = json.dumps({"config": config, "artifact_path": str(artifact_path), "allow_code": bool(allow_code)})
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", "inference_platform.settings"))
    # One thread is plenty to run one example and keeps validation from stealing cores
    # from the serving batchers.
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "registry.validation"],
            input=payload,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(settings.BASE_DIR),
            env=env,
        )
    except subprocess.TimeoutExpired:
        return ValidationOutcome(False, f"Validation did not finish within {timeout:.0f} s and was stopped.")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
            return ValidationOutcome(result["ok"], result.get("error", ""), result.get("details"))
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = str(-proc.returncode)
        reason = f"The validation process was killed by signal {name} (the artifact crashed the loader)."
    else:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        reason = f"The validation process exited with code {proc.returncode}: " + " | ".join(tail)
    return ValidationOutcome(False, reason)


def _child_main() -> int:
    """Entry point of the validation process: read the request on stdin, print one result line."""
    request = json.loads(sys.stdin.read())
    import django

    django.setup()
    from django.core.exceptions import ValidationError
    from django.utils.module_loading import import_string

    validator_path = getattr(settings, "REGISTRY_VERSION_VALIDATOR", "") or "registry.validation.validate_model_only"
    try:
        validator = import_string(validator_path)
        details = validator(
            config=request["config"], artifact_path=request["artifact_path"], allow_code=request["allow_code"]
        )
        result: dict[str, Any] = {"ok": True, "details": details}
    except ValidationError as exc:
        result = {"ok": False, "error": "; ".join(exc.messages)}
    except Exception as exc:  # noqa: BLE001 - any failure is the artifact's verdict
        message = str(exc).strip() or type(exc).__name__
        result = {"ok": False, "error": message if type(exc).__name__ == "ArtifactError" else f"{type(exc).__name__}: {message}"}
    sys.stdout.write("\n" + RESULT_MARKER + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
