"""Two worker hosts on a network, one of them cut off mid-job (`make soak`; root, `ip netns`).

Each "host" is a network namespace of its own (a veth pair on a bridge, its own address,
its own host name through a UTS namespace) running `manage.py qcluster`. PostgreSQL and
Redis listen on 127.0.0.1 only, so the test forwards the bridge address to them (a small
TCP proxy); the hosts reach the services the way remote machines would, over the bridge.

Cutting host 1's link (its veth down) while it runs jobs: the jobs finish on host 2, the
ones host 1 held are recovered by the reconciler once their leases expire, and each job
still has exactly one result. When the link comes back, host 1's stale run finds it no
longer owns its job and writes nothing; host 1 then takes new work again.

Marked `soak` (deselected by default) and `services` (PostgreSQL and Redis).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest
import torch
from django.conf import settings as django_settings
from django.db import connection

from inference.jobs.models import InferenceJob
from inference.services.jobs import job_submit, jobs_reconcile
from tests.helpers import JOB_ARCHS, SlowMLP
from tests.inference.support import config, forward, ready
from tests.processes import Cluster

from .support import TcpProxy

pytestmark = [
    pytest.mark.soak,
    pytest.mark.services,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

LEASE = 4
SUBNET = f"10.231.{os.getpid() % 250}"
BRIDGE_IP = f"{SUBNET}.1"
TAG = f"{os.getpid() % 100000}"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


class Host(Cluster):
    """A worker machine: a network namespace on the bridge running a qcluster under a host name of its own."""

    stop_timeout = 0.0  # a machine switched off: SIGKILL at once

    def __init__(self, index: int, media_root: Path):
        self.hostname = f"worker-h{index}"
        self.netns = f"inf{TAG}h{index}"
        self.veth_host = f"iv{TAG}h{index}"
        self.veth_ns = f"iv{TAG}n{index}"
        self.address = f"{SUBNET}.{10 + index}"
        # ip netns exec and unshare exec in place, and so does the host name's setter: the process
        # started is the qcluster itself, the leader of the process group that stop() ends.
        super().__init__(media_root, log_name=f"{self.hostname}.log", prefix=[
            "ip", "netns", "exec", self.netns, "unshare", "--uts", sys.executable, "-c",
            "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execv(sys.argv[2], sys.argv[2:])",
            self.hostname,
        ])

    def create(self, bridge: str) -> None:
        ip("netns", "add", self.netns)
        ip("link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_ns)
        ip("link", "set", self.veth_ns, "netns", self.netns)
        ip("link", "set", self.veth_host, "master", bridge)
        ip("link", "set", self.veth_host, "up")
        ip("netns", "exec", self.netns, "ip", "addr", "add", f"{self.address}/24", "dev", self.veth_ns)
        ip("netns", "exec", self.netns, "ip", "link", "set", self.veth_ns, "up")
        ip("netns", "exec", self.netns, "ip", "link", "set", "lo", "up")

    def cut(self) -> None:
        ip("link", "set", self.veth_host, "down")

    def restore(self) -> None:
        ip("link", "set", self.veth_host, "up")

    def destroy(self) -> None:
        ip("link", "del", self.veth_host, check=False)
        ip("netns", "del", self.netns, check=False)


class Network:
    def __init__(self, root: Path):
        self.bridge = f"ib{TAG}"
        self.media_root = root / "media"
        self.media_root.mkdir(parents=True)
        self.hosts = [Host(1, self.media_root), Host(2, self.media_root)]
        self.forwarders: list[TcpProxy] = []

    def up(self) -> None:
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{BRIDGE_IP}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            host.create(self.bridge)
        db = connection.settings_dict
        redis = urlsplit(os.environ["REDIS_URL"])
        pg_forward = TcpProxy([(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))], host=BRIDGE_IP).start()
        redis_forward = TcpProxy([(redis.hostname, redis.port or 6379)], host=BRIDGE_IP).start()
        self.forwarders = [pg_forward, redis_forward]
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        env = {  # the services through the bridge, as remote machines reach them
            "DATABASE_URL": f"postgres://{db.get('USER') or ''}{password}@{BRIDGE_IP}:{pg_forward.port}/{db['NAME']}",
            "REDIS_URL": urlunsplit(redis._replace(netloc=f"{BRIDGE_IP}:{redis_forward.port}")),
            "INFERENCE_EXTRA_ARCHITECTURES": ",".join(JOB_ARCHS),
            "INFERENCE_WORKERS": "2",
            "INFERENCE_JOB_LEASE_SECONDS": str(LEASE),
            "INFERENCE_JOB_CHUNK_SIZE": "10",
            "INFERENCE_JOB_TIMEOUT": "60",
            "INFERENCE_JOB_RETRY": "90",
        }
        for host in self.hosts:
            host.extra_env.update(env)
            host.start()

    def down(self) -> None:
        for host in self.hosts:
            host.stop()
        for forwarder in self.forwarders:
            forwarder.close()
        for host in self.hosts:
            host.destroy()
        ip("link", "del", self.bridge, check=False)

    def logs(self) -> str:
        return "\n".join(f"--- {h.hostname}\n{h.log_tail()}" for h in self.hosts)


@pytest.fixture(scope="module")
def network(tmp_path_factory, django_db_setup):
    assert os.geteuid() == 0, "the multi-host test makes network namespaces: run it as root"
    assert os.environ.get("REDIS_URL") and connection.vendor == "postgresql", \
        "the multi-host test needs PostgreSQL and Redis (DATABASE_URL, REDIS_URL)"
    net = Network(tmp_path_factory.mktemp("multihost"))
    try:
        net.up()
        yield net
    finally:
        net.down()


@pytest.fixture(autouse=True)
def _shared_media(settings, network):
    settings.MEDIA_ROOT = network.media_root
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, *JOB_ARCHS]
    settings.INFERENCE_JOB_REQUEUE_AFTER = 10


def _rows(ids) -> dict[str, dict]:
    fields = ("id", "status", "worker", "progress_done", "attempts", "result_file")
    return {str(r["id"]): {**r, "id": str(r["id"])}
            for r in InferenceJob.objects.filter(pk__in=ids).values(*fields)}


def _host(job: dict) -> str:
    return job["worker"].rsplit(":", 1)[0] if job["worker"] else ""


def _wait_all(ids, network, timeout: float) -> dict[str, dict]:
    """Run the reconciler every second (its schedule is every minute) until every job succeeded."""
    deadline = time.time() + timeout
    while True:
        rows = _rows(ids)
        if all(j["status"] == "succeeded" for j in rows.values()):
            return rows
        assert not [j for j in rows.values() if j["status"] in ("failed", "cancelled")], rows
        assert time.time() < deadline, \
            f"unfinished: {[j for j in rows.values() if j['status'] != 'succeeded']}\n{network.logs()}"
        jobs_reconcile()
        time.sleep(1)


def test_jobs_of_a_host_cut_off_mid_job_finish_on_the_other_host_exactly_once(network):
    model = f"multihost-{uuid.uuid4().hex[:6]}"
    torch.manual_seed(0)
    module = SlowMLP(4, [8], 3, delay=0.1).eval()
    cfg = config(architecture="tests.helpers.SlowMLP",
                 architecture_args={"in_features": 4, "hidden": [8], "out_features": 3, "delay": 0.1})
    version = ready(module, cfg, model_name=model, aliases=["production"])
    inputs = {}
    ids = []
    for i in range(24):
        rows = np.random.default_rng(i).uniform(-2, 2, (100, 4)).round(3).tolist()  # 10 chunks, ~1 s
        job, _ = job_submit(version=version, instances=rows)
        inputs[str(job.pk)] = rows
        ids.append(str(job.pk))

    h1, h2 = network.hosts
    deadline = time.time() + 90
    while True:  # both hosts at work; host 1 has finished a job and is in the middle of another
        rows = _rows(ids)
        busy = {_host(j) for j in rows.values() if j["status"] in ("running", "succeeded")}
        done_on_h1 = [j for j in rows.values() if j["status"] == "succeeded" and _host(j) == h1.hostname]
        mid_job_on_h1 = [j for j in rows.values() if j["status"] == "running" and _host(j) == h1.hostname
                         and j["progress_done"] >= 10]
        if {h1.hostname, h2.hostname} <= busy and done_on_h1 and mid_job_on_h1:
            break
        assert time.time() < deadline, f"the hosts never got going: {rows}\n{network.logs()}"
        time.sleep(0.1)
    network.hosts[0].cut()
    time.sleep(0.5)
    held = {j["id"] for j in _rows(ids).values() if j["status"] == "running" and _host(j) == h1.hostname}
    assert held, "host 1 held no job when its link went down"

    final = _wait_all(ids, network, timeout=120)
    for job_id in held:  # recovered by the reconciler, finished on host 2
        assert _host(final[job_id]) == h2.hostname and final[job_id]["attempts"] >= 2, final[job_id]
    assert {_host(j) for j in final.values()} == {h1.hostname, h2.hostname}  # the work was spread over both hosts
    media = Path(django_settings.MEDIA_ROOT)
    for job_id in ids:
        results = sorted((media / "jobs" / job_id).glob("result-*"))
        assert [f"jobs/{job_id}/{r.name}" for r in results] == [final[job_id]["result_file"]]
        predictions = [json.loads(line) for line in results[0].read_text().splitlines()]
        np.testing.assert_allclose(predictions, forward(module, inputs[job_id]), rtol=1e-5, atol=1e-6)

    # The link comes back: host 1's stale run finds the job taken over and writes nothing;
    # host 1 serves again (a new job finishes there).
    network.hosts[0].restore()
    deadline = time.time() + 180
    back_on_h1 = False
    extra: list[str] = []
    while time.time() < deadline and not back_on_h1:
        job, _ = job_submit(version=version, instances=inputs[ids[0]][:10])
        extra.append(str(job.pk))
        time.sleep(2)
        jobs_reconcile()
        back_on_h1 = any(_host(j) == h1.hostname and j["status"] == "succeeded" for j in _rows(extra).values())
    assert back_on_h1, f"host 1 did not take work again after its link came back\n{network.logs()}"
    assert _rows(ids) == final
    for job_id in ids:
        assert len(list((media / "jobs" / job_id).glob("result-*"))) == 1
    _wait_all(extra, network, timeout=60)
