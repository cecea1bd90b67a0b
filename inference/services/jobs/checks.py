"""A job's instances checked as predict checks them, chunk by chunk, and errors named in the whole input.

The check is the request path's own: ``ServedVersion.prepare`` (decode against the input schema,
the preprocess steps, the schema of what they produce), on chunks of INFERENCE_JOB_CHUNK_SIZE
instances as a worker runs them. At submit, JSON instances are checked whole and a file's first
chunk (its other lines are checked as JSON only: the file is streamed, not held); a worker checks
each chunk before its forward. An error found in a chunk names its instance in the whole input
(``instance 1,000 (line 1,001), at instances[1000][2]``), not its place in the chunk.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError

from registry.models import ModelVersion

from ...jobs.inputs import JobInputError
from ...pipeline.base import StepConfigError
from ...pipeline.served import ServedVersion
from ...tensors import InputError

logger = logging.getLogger("inference.jobs")

_INDEXED = re.compile(r"^instances\[(\d+)\]")


def locate(path: str, *, offset: int, size: int, lines: Sequence[int] | None = None) -> tuple[str, str, dict]:
    """Return (words naming the instance(s), the path in the whole input, details) of an error at `path`
    in a chunk of `size` instances that starts at instance `offset` (`lines`: their line numbers)."""
    found = _INDEXED.match(path or "")
    if found is not None:
        i = int(found.group(1))
        index = offset + i
        whole = f"instances[{index}]{path[found.end():]}"
        details: dict[str, Any] = {"instance": index, "field": whole}
        words = f"instance {index:,}"
        if lines is not None and i < len(lines):
            details["line"] = lines[i]
            words += f" (line {lines[i]:,})"
        return f"{words}, at {whole}", whole, details
    last = offset + max(size, 1) - 1
    details = {"instances": [offset, last]}
    words = f"instances {offset:,} to {last:,}"
    if lines:
        details["lines"] = [lines[0], lines[-1]]
        words += f" (lines {lines[0]:,} to {lines[-1]:,})"
    return words + (f", at {path}" if path else ""), path, details


class JobInstanceError(JobInputError):
    """An instance of a job that the model cannot take (the request path's InputError), named in the whole input."""

    def __init__(self, exc: InputError, *, offset: int, size: int, lines: Sequence[int] | None = None):
        where, self.path, details = locate(exc.path, offset=offset, size=size, lines=lines)
        super().__init__(f"{where}: {exc}", details=details)
        self.reason = str(exc)
        self.code = exc.code
        self.status = exc.status


def served_for_checks(version: ModelVersion) -> ServedVersion | None:
    """The version's served form, not loaded (its pipelines and schemas); None when it cannot be built
    here (a bad pipeline config, a format no runtime serves): the job then fails with that error."""
    try:
        return ServedVersion.from_version(version)
    except (StepConfigError, ImportError, ValidationError, ValueError) as exc:
        logger.info("job input of %s not checked at submit: %s: %s", version, type(exc).__name__, exc)
        return None


def check_chunk(served: ServedVersion | None, chunk: list[Any], parameters: Any, *, offset: int,
                lines: Sequence[int] | None = None) -> None:
    """Raise JobInstanceError unless predict would take `chunk` (instances `offset`... of the job)."""
    if served is None:
        return
    try:
        served.prepare(chunk, parameters)
    except InputError as exc:
        raise JobInstanceError(exc, offset=offset, size=len(chunk), lines=lines) from exc
    except Exception as exc:  # noqa: BLE001 - a preprocess step's own bug: the worker reports it as the job's error
        logger.warning("job input of %s v%s: a preprocess step failed at submit (%s: %s); the job is accepted and "
                       "its worker will report the error", served.model_name, served.version, type(exc).__name__, exc)
