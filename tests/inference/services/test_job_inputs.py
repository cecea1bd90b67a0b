"""A job's input at submit and in the worker: checked as predict checks it, named in the whole input,
read with bounded memory; and the per-key limits on queued jobs and stored bytes.

A worker's run is ``job_run`` called here (the task's own function), on the test database.
"""

from __future__ import annotations

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from inference.jobs.inputs import BLOCK_BYTES, JobLineTooLong, count_jsonl, csv_rows
from inference.jobs.models import InferenceJob
from inference.services.jobs import job_run
from tests.conftest import small_mlp
from tests.helpers import stored_files
from tests.inference.support import ROWS, error_of, make_key, ready

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/models/iris/jobs"


@pytest.fixture
def iris(db):
    return ready(small_mlp(0), model_name="iris", aliases=["production"])


@pytest.fixture
def queued(monkeypatch) -> list:
    sent: list = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: sent.append(args))
    return sent


def _auth(key: str) -> dict:
    return {"Authorization": f"Api-Key {key}"}


def _json_job(client, key: str, instances):
    return client.post(JOBS, json.dumps({"instances": instances}), content_type="application/json",
                       headers=_auth(key))


def _file_job(client, key: str, data: bytes, name: str = "rows.jsonl"):
    return client.post(JOBS, {"file": SimpleUploadedFile(name, data)}, headers=_auth(key))


def _jsonl(rows) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def _nothing_written(settings, queued) -> None:
    assert InferenceJob.objects.count() == 0
    assert [p for p in stored_files(settings.MEDIA_ROOT) if "jobs" in p.parts] == []  # no job file (the artifact stays)
    assert queued == []


class CountingReader(io.BytesIO):
    """A file that counts the bytes read from it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        out = super().read(size)
        self.bytes_read += len(out)
        return out

    def readline(self, size: int | None = -1) -> bytes:
        out = super().readline(size)
        self.bytes_read += len(out)
        return out

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


# --- checked at submit as predict checks it ---------------------------------------------------------------


def test_strings_for_fp32_in_a_json_job_are_a_400_with_the_path_predict_gives(client, iris, queued, settings,
                                                                               django_capture_on_commit_callbacks):
    key = make_key("inputs", rate="100000/s")
    instances = [ROWS[0], [1.0, "two", 3.0, 4.0]]
    predicted = client.post("/api/v1/models/iris/predict", json.dumps({"instances": instances}),
                            content_type="application/json", headers=_auth(key))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        r = _json_job(client, key, instances)
    assert r.status_code == predicted.status_code == 400, r.content
    job_error, predict_error = error_of(r), error_of(predicted)
    assert job_error["code"] == predict_error["code"] == "invalid_datatype"
    assert job_error["details"]["path"] == predict_error["details"]["path"] == "instances[1][1]"
    assert job_error["message"] == predict_error["message"]
    assert callbacks == []
    _nothing_written(settings, queued)


def test_a_bad_instance_past_the_first_chunk_of_a_json_job_is_named_in_the_whole_list(client, iris, queued, settings):
    settings.INFERENCE_JOB_CHUNK_SIZE = 4
    key = make_key("inputs", rate="100000/s")
    instances = [ROWS[0]] * 6 + [[1.0, 2.0, 3.0]] + [ROWS[1]] * 3
    r = _json_job(client, key, instances)
    assert r.status_code == 400, r.content
    err = error_of(r)
    assert err["code"] == "invalid_shape" and err["details"]["path"] == "instances[6]", err
    _nothing_written(settings, queued)


def test_a_jsonl_file_whose_third_row_is_bad_is_a_400_at_submit_naming_the_line(client, iris, queued, settings):
    key = make_key("inputs", rate="100000/s")
    data = _jsonl([ROWS[0], ROWS[1], [1.0, "x", 3.0, 4.0], ROWS[2]])
    r = _file_job(client, key, data)
    assert r.status_code == 400, r.content
    err = error_of(r)
    assert err["code"] == "invalid_datatype"
    assert err["details"]["path"] == "file"
    assert (err["details"]["line"], err["details"]["instance"], err["details"]["field"]) == (3, 2, "instances[2][1]")
    assert "instance 2 (line 3)" in err["message"] and "must hold numbers" in err["message"]
    _nothing_written(settings, queued)


def test_a_csv_file_whose_row_does_not_fit_the_schema_is_a_400_naming_its_line(client, iris, queued, settings):
    key = make_key("inputs", rate="100000/s")
    r = _file_job(client, key, b"a,b,c,d\n1,2,3,4\n\n1,2,3\n", name="rows.csv")
    assert r.status_code == 400, r.content
    err = error_of(r)
    assert err["details"]["path"] == "file" and err["details"]["line"] == 4, err
    assert "line 4" in err["message"]
    _nothing_written(settings, queued)


def test_a_bad_row_past_the_first_chunk_fails_the_job_naming_its_instance_and_line(client, iris, queued, settings):
    assert settings.INFERENCE_JOB_CHUNK_SIZE < 599
    key = make_key("inputs", rate="100000/s")
    rows = [ROWS[i % 3] for i in range(700)]
    rows[599] = [1.0, 2.0, "three", 4.0]  # line 600
    r = _file_job(client, key, _jsonl(rows))
    assert r.status_code == 202, r.content  # only the first chunk is checked at submit
    job_id = r.json()["id"]
    assert job_run(job_id) == "failed"
    job = InferenceJob.objects.get(pk=job_id)
    assert job.status == "failed"
    assert "instance 599 (line 600), at instances[599][2]" in job.error, job.error
    assert "must hold numbers" in job.error
    assert job.progress_done == 512  # the chunks before it ran


def test_a_worker_names_the_instance_of_a_json_job_in_the_whole_list(iris, settings):
    """JSON jobs are checked whole at submit; one stored before that check still fails with the right index."""
    from inference.services.jobs import job_submit

    settings.INFERENCE_JOB_CHUNK_SIZE = 4
    job, _ = job_submit(version=iris, instances=[ROWS[0]] * 9)
    bad = _jsonl([ROWS[0]] * 5 + [[1.0, None, 3.0, 4.0]] + [ROWS[0]] * 3)
    with job.input_file.open("wb") as fh:
        fh.write(bad)
    assert job_run(job.pk) == "failed"
    error = InferenceJob.objects.get(pk=job.pk).error
    assert error.startswith("instance 5, at instances[5][1]: "), error
    assert "line" not in error.split(":")[0]  # JSON jobs have no lines for the client


# --- bounded memory: one line at a time, capped ---------------------------------------------------------------


def test_a_line_over_the_cap_is_refused_without_reading_the_rest_of_it():
    cap = 64 * 1024
    huge = CountingReader(b"[" + b"1," * (4 * 1024**2) + b"1]\n")  # one 8 MiB line
    with pytest.raises(JobLineTooLong) as refused:
        count_jsonl(huge, max_line_bytes=cap)
    assert "line 1 " in str(refused.value) and "INFERENCE_JOB_MAX_LINE_BYTES" in str(refused.value)
    assert huge.bytes_read <= cap + 2 * BLOCK_BYTES, huge.bytes_read
    rows = CountingReader(b"1,2,3,4\n" * 10 + b"1," * 100_000 + b"1\n")
    with pytest.raises(JobLineTooLong, match="line 11 "):
        list(csv_rows(rows, max_line_bytes=cap))
    assert rows.bytes_read <= 80 + cap + 2 * BLOCK_BYTES


def test_lines_under_the_cap_are_counted_whatever_their_ending():
    data = b"[1, 2, 3, 4]\r\n\n[5, 6, 7, 8]\n  \n[9, 10, 11, 12]"
    assert count_jsonl(io.BytesIO(data), max_line_bytes=16) == 3
    with pytest.raises(JobLineTooLong, match="line 5 "):  # 15 bytes; the others 13 (with its CR) and 12
        count_jsonl(io.BytesIO(data), max_line_bytes=14)


def test_a_file_with_a_line_over_the_cap_is_a_400_naming_the_line_and_the_setting(client, iris, queued, settings):
    settings.INFERENCE_JOB_MAX_LINE_BYTES = 1024
    key = make_key("inputs", rate="100000/s")
    data = _jsonl([ROWS[0], ROWS[1]]) + b"[" + b"1.0, " * 2000 + b"1.0]\n"
    r = _file_job(client, key, data)
    assert r.status_code == 400, r.content
    err = error_of(r)
    assert err["code"] == "invalid_input" and err["details"]["path"] == "file"
    assert err["details"]["line"] == 3 and err["details"]["limit"] == 1024
    assert "line 3" in err["message"] and "INFERENCE_JOB_MAX_LINE_BYTES" in err["message"]
    _nothing_written(settings, queued)


def test_a_stored_line_over_the_cap_fails_the_job_with_the_reason(client, iris, queued, settings):
    key = make_key("inputs", rate="100000/s")
    r = _file_job(client, key, _jsonl([ROWS[0]] * 4))
    assert r.status_code == 202, r.content
    settings.INFERENCE_JOB_MAX_LINE_BYTES = 8  # lowered after the job was stored
    assert job_run(r.json()["id"]) == "failed"
    error = InferenceJob.objects.get(pk=r.json()["id"]).error
    assert "line 1 is longer than 8 bytes" in error and "INFERENCE_JOB_MAX_LINE_BYTES" in error


# --- per-key limits ---------------------------------------------------------------------------------------------


def test_a_key_at_its_queued_jobs_limit_gets_a_429_and_other_keys_do_not(client, iris, queued, settings):
    settings.INFERENCE_JOB_MAX_QUEUED_PER_KEY = 2
    mine, other = make_key("mine", rate="100000/s"), make_key("other", rate="100000/s")
    accepted = [_json_job(client, mine, ROWS) for _ in range(2)]
    assert [r.status_code for r in accepted] == [202, 202]
    files = stored_files(settings.MEDIA_ROOT)
    sent = len(queued)
    r = _json_job(client, mine, ROWS)
    assert r.status_code == 429, r.content
    err = error_of(r)
    assert err["code"] == "too_many_jobs" and int(r["Retry-After"]) >= 1
    assert "INFERENCE_JOB_MAX_QUEUED_PER_KEY" in err["message"] and err["details"]["limit"] == 2
    r = _file_job(client, mine, _jsonl(ROWS))
    assert r.status_code == 429, r.content
    # nothing written for the refused ones
    assert InferenceJob.objects.count() == 2 and stored_files(settings.MEDIA_ROOT) == files and len(queued) == sent
    assert _json_job(client, other, ROWS).status_code == 202  # another key is not affected
    # A finished job frees its place; a retry queues a job too, so it is limited as well.
    InferenceJob.objects.filter(pk=accepted[0].json()["id"]).update(status="failed")
    assert _json_job(client, mine, ROWS).status_code == 202
    r = client.post(f"/api/v1/jobs/{accepted[0].json()['id']}/retry", headers=_auth(mine))
    assert r.status_code == 429 and error_of(r)["code"] == "too_many_jobs", r.content
    assert InferenceJob.objects.get(pk=accepted[0].json()["id"]).status == "failed"


def test_a_key_over_its_stored_bytes_gets_a_413_and_other_keys_do_not(client, iris, queued, settings):
    first = _jsonl(ROWS * 10)
    settings.INFERENCE_JOB_MAX_STORED_BYTES_PER_KEY = len(first) + 100
    mine, other = make_key("mine", rate="100000/s"), make_key("other", rate="100000/s")
    assert _file_job(client, mine, first).status_code == 202
    files, sent = stored_files(settings.MEDIA_ROOT), len(queued)
    r = _file_job(client, mine, first)
    assert r.status_code == 413, r.content
    err = error_of(r)
    assert err["code"] == "payload_too_large" and err["details"]["path"] == "file"
    assert err["details"]["stored_bytes"] == len(first) and "INFERENCE_JOB_MAX_STORED_BYTES_PER_KEY" in err["message"]
    r = _json_job(client, mine, ROWS * 10)
    assert r.status_code == 413 and error_of(r)["details"]["path"] == "instances", r.content
    assert InferenceJob.objects.count() == 1 and stored_files(settings.MEDIA_ROOT) == files and len(queued) == sent
    assert _file_job(client, other, first).status_code == 202  # another key is not affected
    # A job whose input file was deleted no longer counts.
    InferenceJob.objects.filter(api_key__name="mine").update(input_file="")
    assert _file_job(client, mine, first).status_code == 202
