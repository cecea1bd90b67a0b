"""A background job's input: JSON instances stored as JSONL, or an uploaded JSONL or CSV file.

Files are streamed: read in blocks, split into lines of at most INFERENCE_JOB_MAX_LINE_BYTES
(a longer line is refused with its number as soon as the cap is passed, before the rest of it is
read), parsed one line at a time and handed on in chunks. Neither the web process (which counts
and checks a file at submit) nor a worker (which runs it) ever holds more than one line's bytes
and one chunk's parsed instances. A bad line is refused with its number (``JobInputError``).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson
from django.conf import settings

from .models import InferenceJob

BLOCK_BYTES = 64 * 1024  # read size: a line's bytes are held at most once, plus one block


class JobInputError(ValueError):
    """The submitted instances or file cannot be a job's input; `details` go into the 400's details."""

    def __init__(self, message: str, *, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.details = details or {}


class JobInputTooLarge(JobInputError):
    """The submitted file is over INFERENCE_JOB_MAX_FILE_BYTES (a 413 over REST)."""


class JobLineTooLong(JobInputError):
    """A line of a job's file is over INFERENCE_JOB_MAX_LINE_BYTES (a 400 at submit, a failed job in a worker)."""


def jsonl_from_instances(instances: list[Any]) -> bytes:
    return b"".join(orjson.dumps(i) + b"\n" for i in instances)


def _line_cap(max_line_bytes: int | None) -> int:
    return settings.INFERENCE_JOB_MAX_LINE_BYTES if max_line_bytes is None else max_line_bytes


def _too_long(number: int, cap: int) -> JobLineTooLong:
    return JobLineTooLong(
        f"line {number:,} is longer than {cap:,} bytes, the limit on one line of a job's file "
        "(INFERENCE_JOB_MAX_LINE_BYTES); send one instance a line, or smaller instances.",
        details={"line": number, "limit": cap},
    )


def bounded_lines(fileobj: IO[bytes], *, max_line_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Yield (line number from 1, line without its newline) from the start of `fileobj`, reading
    blocks; raise JobLineTooLong as soon as a line passes the cap, without reading the rest of it."""
    cap = _line_cap(max_line_bytes)
    fileobj.seek(0)
    number = 0
    pending = bytearray()  # the start of a line whose end is not read yet
    while block := fileobj.read(BLOCK_BYTES):
        start = 0
        while (end := block.find(b"\n", start)) >= 0:
            number += 1
            if len(pending) + end - start > cap:
                raise _too_long(number, cap)
            if pending:
                pending += block[start:end]
                line = bytes(pending)
                pending.clear()
            else:
                line = block[start:end]
            yield number, line
            start = end + 1
        pending += block[start:]
        if len(pending) > cap:
            raise _too_long(number + 1, cap)
    if pending:
        yield number + 1, bytes(pending)


def jsonl_instances(fileobj: IO[bytes], *, max_line_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line number, instance) of a JSONL file, blank lines skipped; JobInputError names a bad line."""
    for number, line in bounded_lines(fileobj, max_line_bytes=max_line_bytes):
        if not line.strip():
            continue
        try:
            yield number, orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise JobInputError(f"line {number:,} is not valid JSON: {exc}", details={"line": number}) from None


def count_jsonl(fileobj: IO[bytes], *, max_line_bytes: int | None = None) -> int:
    """Return the number of instances in a JSONL file; raise JobInputError naming a bad line."""
    return sum(1 for _ in jsonl_instances(fileobj, max_line_bytes=max_line_bytes))


def csv_instances(fileobj: IO[bytes], *, max_line_bytes: int | None = None) -> Iterator[tuple[int, list[float]]]:
    """Yield (line number, numeric row) of a CSV file (a first row of names is skipped)."""
    reader = csv.reader(text_lines(bounded_lines(fileobj, max_line_bytes=max_line_bytes)))
    first = True
    try:
        for row in reader:
            if not row or all(not c.strip() for c in row):
                continue
            try:
                values = [float(c) for c in row]
            except ValueError:
                if first:  # a header row of names
                    first = False
                    continue
                raise JobInputError(f"CSV line {reader.line_num:,} has a value that is not a number: {row[:8]}",
                                    details={"line": reader.line_num}) from None
            first = False
            yield reader.line_num, values
    except csv.Error as exc:
        raise JobInputError(f"CSV line {reader.line_num:,} cannot be read: {exc}",
                            details={"line": reader.line_num}) from None


def csv_rows(fileobj: IO[bytes], *, max_line_bytes: int | None = None) -> Iterator[list[float]]:
    """Yield the numeric rows of a CSV file (a header row of names is skipped)."""
    for _, row in csv_instances(fileobj, max_line_bytes=max_line_bytes):
        yield row


def text_lines(lines: Iterable[tuple[int, bytes]]) -> Iterator[str]:
    for number, line in lines:
        try:
            yield line.decode("utf-8-sig") + "\n"
        except UnicodeDecodeError:
            raise JobInputError(f"CSV line {number:,} is not UTF-8 text.", details={"line": number}) from None


def file_instances(fileobj: IO[bytes], input_format: str, *,
                   max_line_bytes: int | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line number, instance) of a job's input file in `input_format` (csv, else JSONL)."""
    if input_format == InferenceJob.InputFormat.CSV:
        return csv_instances(fileobj, max_line_bytes=max_line_bytes)
    return jsonl_instances(fileobj, max_line_bytes=max_line_bytes)


def stored_instances(job: InferenceJob) -> Iterator[tuple[int, Any]]:
    """Yield (line number, instance) of the job's stored input file, in order."""
    with job.input_file.open("rb") as fh:
        yield from file_instances(fh, job.input_format)


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
