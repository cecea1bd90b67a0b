"""Many clients at once through the whole request path (views, pool, batcher, real model)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from django.db import connections
from django.test import Client

from inference.pool import get_pool
from tests.conftest import small_mlp
from tests.inference.support import config, forward, make_key, ready

# Requests run on their own threads, each with its own database connection: the data they
# read must be committed. serialized_rollback gives the migrations' rows (the "cpu" target)
# back after the flush of an earlier transactional test.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


def test_concurrent_clients_each_get_their_own_prediction():
    module = small_mlp(0)
    ready(
        module,
        config(batching={"max_batch_size": 32, "max_batch_delay_ms": 20}),
        model_name="iris",
        aliases=["production"],
    )
    key = make_key("busy", rate="10000/s")
    n = 24
    rows = {i: [float(i), i / 2, -i / 3, 1.0] for i in range(n)}
    results: dict[int, tuple[int, dict]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def client(i: int) -> None:
        try:
            c = Client(headers={"Authorization": f"Api-Key {key}"})
            barrier.wait()
            r = c.post(
                "/api/v1/models/iris/predict", json.dumps({"instances": [rows[i]]}), content_type="application/json"
            )
            results[i] = (r.status_code, r.json())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(results) == list(range(n))
    for i, (status, body) in results.items():
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"], forward(module, [rows[i]]), rtol=1e-5, atol=1e-6)
    pool = get_pool()
    assert pool.cache.loads == 1  # 24 cold requests, one load
    ((_, entry),) = pool.cache.entries()
    assert entry.batcher.stats.request_count == n
    assert entry.batcher.stats.inference_count == n
    assert entry.batcher.stats.failures == 0
