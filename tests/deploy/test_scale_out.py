"""Scale-out on real services: several web and worker processes on one PostgreSQL and one Redis.

Topology, all on loopback:

    client --> round-robin TCP proxy --+--> web server A (WEB_CONCURRENCY=2)
                                       +--> web server B (1 process)
    Redis (cache, rate limits, broker) <--- both --- qcluster A, qcluster B (2 workers each)
    PostgreSQL (the test database)     <--- all

What must hold: requests and jobs spread over the processes; rate limits are one count
across web processes; /metrics adds up a web server's processes; a registry change made
anywhere reaches every web process; a worker cluster killed mid-load (SIGKILL of its
process group) loses no job and no job completes twice (the test runs the reconciler as
its one-minute schedule would, every second).

Needs PostgreSQL and Redis (marker `services`): deselected in the embedded run, run in the
services run (DATABASE_URL, REDIS_URL).
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings as django_settings
from prometheus_client.parser import text_string_to_metric_families

from inference.jobs.models import InferenceJob
from inference.keys import api_key_create
from inference.monitoring import observe
from inference.services.jobs import jobs_reconcile
from registry.services import alias_set
from tests.conftest import small_mlp
from tests.helpers import JOB_ARCHS, SlowMLP
from tests.inference.support import config, forward, ready
from tests.processes import Cluster, WebServer

from .support import TcpProxy, call_json

pytestmark = [
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

TOKEN = "scale-out-metrics-token"
LEASE = 4
WORKER_ENV = {
    "INFERENCE_WORKERS": "2",
    "INFERENCE_JOB_LEASE_SECONDS": str(LEASE),
    "INFERENCE_JOB_CHUNK_SIZE": "10",
    "INFERENCE_JOB_TIMEOUT": "30",
    "INFERENCE_JOB_RETRY": "40",
}
COMMON_ENV = {
    "INFERENCE_EXTRA_ARCHITECTURES": ",".join(JOB_ARCHS),
    "INFERENCE_METRICS_TOKEN": TOKEN,
    "INFERENCE_REGISTRY_POLL_SECONDS": "0.2",
    "WEB_THREADS": "4",
    "INFERENCE_JOB_MAX_QUEUED_PER_KEY": "1000",  # one key submits 32 jobs at once here
}


class Stack:
    def __init__(self, root: Path):
        self.media_root = root / "media"
        self.media_root.mkdir(parents=True)
        self.web_a = WebServer(self.media_root, env={**COMMON_ENV, "WEB_CONCURRENCY": "2"}, log_name="web-a.log")
        self.web_b = WebServer(self.media_root, env={**COMMON_ENV, "WEB_CONCURRENCY": "1"}, log_name="web-b.log")
        self.cluster_a = Cluster(self.media_root, env={**COMMON_ENV, **WORKER_ENV}, log_name="qcluster-a.log")
        self.cluster_b = Cluster(self.media_root, env={**COMMON_ENV, **WORKER_ENV}, log_name="qcluster-b.log")
        self.proxy: TcpProxy | None = None

    @property
    def processes(self):
        return [self.web_a, self.web_b, self.cluster_a, self.cluster_b]

    def start(self) -> None:
        self.cluster_a.start()
        self.cluster_b.start()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda web: web.start(timeout=90), [self.web_a, self.web_b]))
        self.proxy = TcpProxy([("127.0.0.1", self.web_a.port), ("127.0.0.1", self.web_b.port)]).start()

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.close()
        errors = []
        for process in self.processes:  # every one, even if stopping another failed
            try:
                process.stop()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        if errors:
            raise errors[0]

    def logs(self) -> str:
        return "\n".join(f"--- {p.log_name}\n{p.log_tail()}" for p in self.processes)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, django_db_setup):
    assert os.environ.get("REDIS_URL"), "the scale-out tests need REDIS_URL (the services run sets it)"
    s = Stack(tmp_path_factory.mktemp("scale-out"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture(autouse=True)
def _shared_media(settings, stack):
    settings.MEDIA_ROOT = stack.media_root
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, *JOB_ARCHS]
    settings.INFERENCE_JOB_REQUEUE_AFTER = 5  # the test plays the reconciler's schedule


def _key(rate: str = "100000/s") -> tuple[str, str]:
    obj, plain = api_key_create(name=f"scale-{uuid.uuid4().hex[:6]}", rate=rate)
    return obj.prefix, plain


def _metrics(base: str) -> dict[tuple[str, tuple], float]:
    request = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = urllib.request.urlopen(request, timeout=30).read().decode()
    out: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            out[key] = out.get(key, 0.0) + sample.value
    return out


def _sample(metrics: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in metrics.items() if n == name and labels.items() <= dict(lab).items())


def _counted(base: str, name: str, expected: float, **labels: str) -> float:
    """The sample once it reaches `expected`, or as it stands after 5 s: a web process counts the requests it
    answered up to ``observe.REPORTS_EVERY`` later (their reports are held and run together)."""
    deadline = time.monotonic() + 5
    while (value := _sample(_metrics(base), name, **labels)) != expected and time.monotonic() < deadline:
        time.sleep(observe.REPORTS_EVERY)
    return value


def _model(name: str, seed: int = 0) -> torch.nn.Module:
    module = small_mlp(seed)
    ready(module, model_name=name, aliases=["production"])
    return module


ROWS = np.random.default_rng(0).uniform(-2, 2, (3, 4)).round(3).tolist()


# --- web -------------------------------------------------------------------------------------------


def test_the_balancer_spreads_predictions_over_both_web_servers_and_each_answers_them(stack):
    model = f"spread-{uuid.uuid4().hex[:6]}"
    module = _model(model)
    _, key = _key()
    before = dict(stack.proxy.connections)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: call_json(stack.proxy.url, f"/api/v1/models/{model}/predict", key,
                                                {"instances": ROWS}), range(40)))
    assert [status for status, _, _ in answers] == [200] * 40, answers[:3]
    for _, _, body in answers:
        np.testing.assert_allclose(body["predictions"], forward(module, ROWS), rtol=1e-5, atol=1e-6)
    assert len({body["id"] for _, _, body in answers}) == 40
    for web in (stack.web_a, stack.web_b):
        assert stack.proxy.connections[("127.0.0.1", web.port)] - before.get(("127.0.0.1", web.port), 0) == 20
        # Each server counted the requests it answered itself.
        assert _counted(web.url, "inference_request_total", 20, model=model, status="200") == 20


def test_metrics_of_one_server_add_up_its_processes(stack):
    """Web server A runs 2 processes: its /metrics (answered by either) counts both processes' requests."""
    model = f"metrics-{uuid.uuid4().hex[:6]}"
    _model(model)
    _, key = _key()
    sent = 0
    loads = 0.0
    with ThreadPoolExecutor(6) as pool:
        for _ in range(30):  # until both processes have served (each loaded the model once)
            statuses = list(pool.map(lambda _: call_json(stack.web_a.url, f"/api/v1/models/{model}/predict", key,
                                                     {"instances": ROWS})[0], range(12)))
            assert statuses == [200] * 12
            sent += 12
            loads = _sample(_metrics(stack.web_a.url), "inference_model_load_duration_seconds_count", model=model)
            if loads >= 2:
                break
    assert loads == 2, f"after {sent} requests only {loads} process(es) of web server A served:\n{stack.logs()}"
    assert _counted(stack.web_a.url, "inference_request_total", sent, model=model, status="200") == sent
    for _ in range(4):  # whichever process answers /metrics, it reports the sum
        assert _sample(_metrics(stack.web_a.url), "inference_request_total", model=model, status="200") == sent


def test_a_rate_limit_is_one_count_across_web_processes(stack):
    from django_ratelimit.core import _get_window

    while True:  # a key whose one-minute window does not end during the test
        prefix, key = _key(rate="5/m")
        if _get_window(prefix, 60) - time.time() > 15:
            break
    model = f"limited-{uuid.uuid4().hex[:6]}"
    _model(model)
    path = f"/api/v1/models/{model}/predict"
    servers = [stack.web_a.url, stack.web_b.url]
    statuses = [call_json(servers[i % 2], path, key, {"instances": ROWS})[0] for i in range(5)]
    assert statuses == [200] * 5  # 3 on A, 2 on B: the key is at its limit
    for server in servers:
        status, headers, body = call_json(server, path, key, {"instances": ROWS})
        assert status == 429, (server, body)
        assert body["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
    _, other = _key(rate="5/m")  # another key is not affected
    assert call_json(stack.web_b.url, path, other, {"instances": ROWS})[0] == 200


def test_an_alias_moved_in_one_process_is_served_by_every_web_process(stack):
    model = f"promote-{uuid.uuid4().hex[:6]}"
    v1 = ready(small_mlp(0), model_name=model, aliases=["production"])
    v2 = ready(small_mlp(1), config(), model_name=model)
    _, key = _key()
    servers = [stack.web_a.url, stack.web_b.url]
    assert {call_json(s, f"/api/v1/models/{model}/predict", key, {"instances": ROWS})[2]["version"]
            for s in servers} == {v1.version}
    alias_set(model=v2.model, alias="production", version=v2)  # e.g. from the admin, in another process
    deadline = time.time() + 10
    seen: set[int] = set()
    while time.time() < deadline:
        seen = {call_json(stack.proxy.url, f"/api/v1/models/{model}/predict", key, {"instances": ROWS})[2]["version"]
                for _ in range(6)}  # 6 connections: A and B, both of A's processes likely among them
        if seen == {v2.version}:
            break
        time.sleep(0.2)
    assert seen == {v2.version}


# --- workers -----------------------------------------------------------------------------------------


def _owner(job: dict, groups: dict[str, set[int]]) -> str:
    host, pid = job["worker"].rsplit(":", 1)
    assert host == socket.gethostname()
    return next((name for name, pids in groups.items() if int(pid) in pids), "?")


def test_jobs_spread_over_two_clusters_and_each_completes_once_when_one_is_killed(stack):
    model = f"jobs-{uuid.uuid4().hex[:6]}"
    torch.manual_seed(0)
    module = SlowMLP(4, [8], 3, delay=0.05).eval()
    cfg = config(architecture="tests.helpers.SlowMLP",
                 architecture_args={"in_features": 4, "hidden": [8], "out_features": 3, "delay": 0.05})
    ready(module, cfg, model_name=model, aliases=["production"])
    _, key = _key()
    inputs = {}
    before = dict(stack.proxy.connections)

    def submit(i: int) -> str:
        rows = np.random.default_rng(i).uniform(-2, 2, (100, 4)).round(3).tolist()  # 10 chunks
        status, _, body = call_json(stack.proxy.url, f"/api/v1/models/{model}/jobs", key, {"instances": rows})
        assert status == 202, body
        inputs[body["id"]] = rows
        return body["id"]

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(submit, range(32)))
    for web in (stack.web_a, stack.web_b):  # submissions went through both web servers
        assert stack.proxy.connections[("127.0.0.1", web.port)] - before.get(("127.0.0.1", web.port), 0) == 16

    groups = {"a": stack.cluster_a.pids(), "b": stack.cluster_b.pids()}
    fields = ("id", "status", "worker", "progress_done", "attempts")

    def rows() -> list[dict]:
        return [{**r, "id": str(r["id"])} for r in InferenceJob.objects.filter(pk__in=ids).values(*fields)]

    # Kill cluster A once it has finished a job and is in the middle of another.
    deadline = time.time() + 60
    while True:
        groups["a"] |= stack.cluster_a.pids()
        groups["b"] |= stack.cluster_b.pids()
        now = rows()
        done_by_a = [j for j in now if j["status"] == "succeeded" and _owner(j, groups) == "a"]
        # Half a job or more still to run (5 chunks of 50 ms or more): a job seen at its last chunk can
        # finish between this look and the kill, and then nothing of A's was interrupted.
        running_on_a = [j for j in now if j["status"] == "running" and 10 <= j["progress_done"] <= 50
                        and _owner(j, groups) == "a"]
        if done_by_a and running_on_a:
            break
        assert time.time() < deadline, f"cluster A never got going: {now}\n{stack.logs()}"
        time.sleep(0.05)
    stack.cluster_a.kill()
    deadline = time.time() + 5
    while stack.cluster_a.pids():
        assert time.time() < deadline, "processes of the killed cluster survived"
        time.sleep(0.05)
    interrupted = {j["id"] for j in rows() if j["status"] == "running" and _owner(j, groups) == "a"}
    assert interrupted, "no job was running on cluster A when it was killed"

    # The reconciler (every second here, every minute in production) re-queues A's jobs.
    deadline = time.time() + 75
    while True:
        groups["b"] |= stack.cluster_b.pids()
        now = rows()
        if all(j["status"] == "succeeded" for j in now):
            break
        assert not [j for j in now if j["status"] in ("failed", "cancelled")], now
        assert time.time() < deadline, f"jobs not recovered: {[j for j in now if j['status'] != 'succeeded']}\n" \
                                       f"{stack.logs()}"
        jobs_reconcile()
        time.sleep(1)

    final = {j["id"]: j for j in rows()}
    owners = {job_id: _owner(j, groups) for job_id, j in final.items()}
    assert set(owners.values()) == {"a", "b"}, owners  # both clusters completed jobs
    for job_id in interrupted:
        assert owners[job_id] == "b" and final[job_id]["attempts"] >= 2, final[job_id]
    media = Path(django_settings.MEDIA_ROOT)
    for job_id in ids:
        results = sorted((media / "jobs" / job_id).glob("result-*"))
        assert len(results) == 1, (job_id, results)  # one result: no job completed twice
        job = InferenceJob.objects.get(pk=job_id)
        assert job.result_file.name == f"jobs/{job_id}/{results[0].name}"
        predictions = [json.loads(line) for line in results[0].read_text().splitlines()]
        np.testing.assert_allclose(predictions, forward(module, inputs[job_id]), rtol=1e-5, atol=1e-6)
    # Late redeliveries (the reconciler's extra tasks, the dead cluster's) change nothing.
    jobs_reconcile()
    time.sleep(2)
    assert {j["id"]: j for j in rows()} == final
