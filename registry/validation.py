"""Validate a version in a separate process, so a bad artifact cannot crash or poison the caller.

The parent (admin request, command, background task) writes nothing to the database
here: it hands the artifact path and config to a fresh Python process running
``python -m registry.validation``, which sets Django up, calls the callable named by
``settings.REGISTRY_VERSION_VALIDATOR`` (the serving side's: load, run the example through
pipeline and model), and prints one JSON line. A crash, a signal, a hang past
``REGISTRY_VALIDATION_TIMEOUT`` or a Python error all come back as a failure with
the reason.

The process limits itself as it starts, before it reads the artifact: address space
(RLIMIT_AS, INFERENCE_VALIDATION_MEMORY_BYTES), CPU time (RLIMIT_CPU,
INFERENCE_VALIDATION_CPU_SECONDS), no core files. Going over either is the version's
failure, with that reason ("the validation exceeded its memory limit ..."), not the host's.
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
    """Load the artifact and run a zero input of the declared shapes through the model (an ONNX
    graph: check it and its inputs and outputs against the config, without running it).

    The registry's own fallback validator, used when REGISTRY_VERSION_VALIDATOR is empty.
    """
    import torch

    from .artifacts import load_module
    from .schemas import DATATYPES, parse_version_config

    cfg = parse_version_config(config)
    if cfg.format == "onnx":
        from .onnx_artifacts import graph_io, load_onnx

        model = load_onnx(Path(artifact_path).read_bytes(), inputs=cfg.inputs, outputs=cfg.outputs)
        inputs, outputs = graph_io(model)
        return {"graph_inputs": [t.name for t in inputs], "graph_outputs": [t.name for t in outputs]}
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
    limits = {"memory_bytes": settings.INFERENCE_VALIDATION_MEMORY_BYTES,
              "cpu_seconds": settings.INFERENCE_VALIDATION_CPU_SECONDS}
    payload = json.dumps({"config": config, "artifact_path": str(artifact_path), "allow_code": bool(allow_code),
                          "limits": limits})
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
    if out_of_memory(proc.stderr or ""):
        return ValidationOutcome(False, memory_reason(limits["memory_bytes"], _last_line(proc.stderr)))
    if proc.returncode == -signal.SIGXCPU:  # the soft RLIMIT_CPU's signal
        return ValidationOutcome(False, (
            f"The validation exceeded its CPU time limit ({limits['cpu_seconds']} s, INFERENCE_VALIDATION_CPU_SECONDS) "
            "and was stopped: the model or its example needs more computing than that. Ask an operator to raise "
            "the limit if it is expected."))
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


# What running out of (limited) memory looks like: Python's MemoryError, torch's allocator
# ("can't allocate memory"), a Rust allocation failure (safetensors aborts), C++ bad_alloc.
MEMORY_SIGNS = ("MemoryError", "can't allocate memory", "Cannot allocate memory", "memory allocation of",
                "bad_alloc", "out of memory")


def out_of_memory(text: str) -> bool:
    return any(sign in text for sign in MEMORY_SIGNS)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def memory_reason(limit: int, detail: str) -> str:
    limit_text = f"its memory limit ({limit:,} bytes of address space, INFERENCE_VALIDATION_MEMORY_BYTES)" if limit \
        else "the memory available"
    return (f"The validation exceeded {limit_text}: the model, its example or its outputs need more. Check "
            f"architecture_args and the input shapes, or ask an operator to raise the limit. ({detail})")


def apply_limits(limits: dict[str, int]) -> None:
    """Limit this process (the validation child, before it loads anything): address space, CPU time, no core file."""
    import resource

    def lower(kind: int, soft: int, hard: int) -> None:
        _, current_hard = resource.getrlimit(kind)
        if current_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(kind, (soft, hard))

    lower(resource.RLIMIT_CORE, 0, 0)
    if limits.get("memory_bytes"):
        lower(resource.RLIMIT_AS, int(limits["memory_bytes"]), int(limits["memory_bytes"]))
    if limits.get("cpu_seconds"):
        # SIGXCPU at the soft limit; SIGKILL 5 s later if that signal is caught.
        lower(resource.RLIMIT_CPU, int(limits["cpu_seconds"]), int(limits["cpu_seconds"]) + 5)


def _child_main() -> int:
    """Entry point of the validation process: read the request on stdin, print one result line."""
    request = json.loads(sys.stdin.read())
    limits = request.get("limits") or {}
    apply_limits(limits)
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
        if _memory_exhausted(exc):
            message = memory_reason(int(limits.get("memory_bytes") or 0), f"{type(exc).__name__}: {_last_line(message)}")
        elif "ArtifactError" not in [cls.__name__ for cls in type(exc).__mro__]:
            message = f"{type(exc).__name__}: {message}"
        result = {"ok": False, "error": message}
    sys.stdout.write("\n" + RESULT_MARKER + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()
    return 0


def _memory_exhausted(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # the exception and its causes
        if seen is None:
            break
        if isinstance(seen, MemoryError) or out_of_memory(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


if __name__ == "__main__":
    sys.exit(_child_main())
