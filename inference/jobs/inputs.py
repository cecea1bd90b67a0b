"""A background job's input: JSON instances stored as JSONL, or an uploaded JSONL or CSV file.

Files are read a line at a time; a bad line is refused with its number (``JobInputError``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import IO, Any

import orjson

from .models import InferenceJob


class JobInputError(ValueError):
    """The submitted instances or file cannot be a job's input."""


class JobInputTooLarge(JobInputError):
    """The submitted file is over INFERENCE_JOB_MAX_FILE_BYTES (a 413 over REST)."""



def jsonl_from_instances(instances: list[Any]) -> bytes:
    return b"".join(orjson.dumps(i) + b"\n" for i in instances)


def count_jsonl(fileobj: IO[bytes]) -> int:
    """Return the number of instances in a JSONL file; raise JobInputError naming a bad line."""
    count = 0
    fileobj.seek(0)
    for number, line in enumerate(fileobj, start=1):
        if not line.strip():
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise JobInputError(f"line {number} is not valid JSON: {exc}") from None
        count += 1
    return count


def csv_rows(fileobj: IO[bytes]) -> Iterator[list[float]]:
    """Yield the numeric rows of a CSV file (a header row of names is skipped)."""
    fileobj.seek(0)
    # Decode line by line: a TextIOWrapper would close the caller's file when collected.
    reader = csv.reader(text_lines(fileobj))
    try:
        for number, row in enumerate(reader, start=1):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                yield [float(c) for c in row]
            except ValueError:
                if number == 1:
                    continue  # header
                raise JobInputError(f"CSV line {number} has a value that is not a number: {row[:8]}") from None
    except csv.Error as exc:
        raise JobInputError(f"CSV line {reader.line_num} cannot be read: {exc}") from None


def text_lines(fileobj: IO[bytes]) -> Iterator[str]:
    for number, line in enumerate(fileobj, start=1):
        try:
            yield line.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise JobInputError(f"CSV line {number} is not UTF-8 text.") from None


def instances_in(job: InferenceJob) -> Iterator[Any]:
    """Yield the job's instances in order, from its stored input file."""
    with job.input_file.open("rb") as fh:
        if job.input_format == InferenceJob.InputFormat.CSV:
            yield from csv_rows(fh)
            return
        for line in fh:
            if line.strip():
                yield orjson.loads(line)


def chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
