"""A background job on an ONNX model: the worker process loads it through the ONNX runtime, as it
loads a PyTorch one, and the job's predictions are the exported module's."""

from __future__ import annotations

import numpy as np
import pytest

from registry import services
from tests.conftest import small_mlp
from tests.helpers import ready_version
from tests.inference.services.test_jobs import (  # noqa: F401 - the fixtures of the jobs tests
    _forward,
    _job_settings,
    _rows,
    _submit,
    _wait,
    client,
    cluster,
    key,
    media_root,
)
from tests.onnx_models import onnx_config, torch_onnx_bytes

pytestmark = [pytest.mark.django_db(transaction=True, serialized_rollback=True), pytest.mark.slow]


def test_a_job_on_an_onnx_model_gives_the_exported_modules_predictions(client, cluster):  # noqa: F811
    module = small_mlp(4)
    version = ready_version(torch_onnx_bytes(module), onnx_config(), model_name="mlp-onnx")
    services.alias_set(model=version.model, alias="production", version=version)
    rows = _rows(25)
    accepted = _submit(client, "mlp-onnx", rows)
    status = _wait(client, accepted["id"], cluster=cluster)
    assert status["status"] == "succeeded", status
    result = client.get(f"/api/v1/jobs/{accepted['id']}/result").json()
    assert (result["model"], result["version"]) == ("mlp-onnx", 1)
    np.testing.assert_allclose(result["predictions"], _forward(module, rows), rtol=1e-4, atol=1e-4)
