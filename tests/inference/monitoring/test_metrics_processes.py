"""Metrics in multiprocess mode (PROMETHEUS_MULTIPROC_DIR): each process writes its own files, and a
value's write asks the process id kept by ``inference.monitoring.metrics`` (renewed after a fork), not
a system call per write. Run in a child interpreter: the mode is chosen as prometheus_client and the
metrics module are imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from django.conf import settings

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from prometheus_client import CollectorRegistry, values
    from prometheus_client.multiprocess import MultiProcessCollector
    from inference.monitoring import metrics

    child = metrics.REQUESTS.labels("m", "1", "200")
    child.inc()
    parent_pid = os.getpid()
    pid = os.fork()
    if pid == 0:  # a forked web process: its writes go to its own files
        child.inc(2)
        os._exit(0 if metrics.this_process() == os.getpid() != parent_pid else 3)
    _, status = os.waitpid(pid, 0)
    # The id a write asks is the one kept here: a changed one is taken for a fork (files renewed).
    metrics._pid = 999999
    child.inc(4)
    metrics._renew_pid()
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    total = sum(s.value for f in registry.collect() for s in f.samples
                if s.name == "inference_request_total" and s.labels.get("model") == "m")
    files = sorted(os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    print(json.dumps({"status": status, "total": total, "files": files, "parent": parent_pid, "child": pid,
                      "ours": values.ValueClass is not values.MutexValue}))
""")


def test_each_process_writes_its_own_metrics_files_with_the_id_kept_after_a_fork(tmp_path: Path):
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="inference_platform.settings",
               PYTHONPATH=str(settings.BASE_DIR))
    run = subprocess.run([sys.executable, "-c", "import django; django.setup()\n" + SCRIPT], env=env,
                         capture_output=True, text=True, timeout=120, cwd=settings.BASE_DIR)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["status"] == 0 and out["ours"]  # the child saw its own id
    assert out["total"] == 1 + 2 + 4  # the parent's, the child's and the one written under the id set
    assert f"counter_{out['parent']}.db" in out["files"] and f"counter_{out['child']}.db" in out["files"]
    assert "counter_999999.db" in out["files"]  # the write asked the kept id, not os.getpid()
