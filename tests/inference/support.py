"""Helpers of the serving-side tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch

from tests.conftest import IRIS_CONFIG, safetensors_bytes


def make_key(name: str = "client", **kwargs: Any) -> str:
    """Create an API key (see inference.keys.api_key_create) and return the plain key."""
    from inference.keys import api_key_create

    _, plain = api_key_create(name=name, **kwargs)
    return plain


class Api:
    """Django's test client, speaking JSON with an API key."""

    def __init__(self, client):
        self.client = client

    @staticmethod
    def _headers(key: str | None, headers: dict[str, str] | None) -> dict[str, str]:
        out = dict(headers or {})
        if key is not None:
            out.setdefault("Authorization", f"Api-Key {key}")
        return out

    def get(self, path: str, key: str | None = None, headers: dict[str, str] | None = None, **kw: Any):
        return self.client.get(path, headers=self._headers(key, headers), **kw)

    def post(
        self,
        path: str,
        body: Any = None,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        raw: bytes | str | None = None,
        content_type: str = "application/json",
        **kw: Any,
    ):
        data = raw if raw is not None else json.dumps(body)
        return self.client.post(path, data=data, content_type=content_type, headers=self._headers(key, headers), **kw)


def config(**changes: Any) -> dict:
    """A copy of the small MLP config of tests/conftest.py (4 -> 8 -> 3, raw outputs), changed."""
    cfg = json.loads(json.dumps(IRIS_CONFIG))
    cfg.update(changes)
    return cfg


def ready(module: torch.nn.Module, cfg: dict | None = None, *, model_name: str = "iris", aliases=()):
    """Register `module` as the next version of `model_name` (no validation subprocess), mark it
    ready and point `aliases` at it; return the ModelVersion."""
    from registry.services import alias_set
    from tests.helpers import ready_version

    version = ready_version(safetensors_bytes(module), cfg or config(), model_name=model_name)
    for alias in aliases:
        alias_set(model=version.model, alias=alias, version=version)
    return version


def forward(module: torch.nn.Module, rows: Any) -> np.ndarray:
    """What the module itself computes for `rows` (the reference for served predictions)."""
    with torch.inference_mode():
        return module(torch.tensor(rows, dtype=torch.float32)).numpy()


ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


def register_demo(demo, *, aliases=("production",)):
    """Register a demo model through the registry service, validated in its subprocess."""
    from registry.services import model_version_register

    return model_version_register(
        model_name=demo.name,
        artifact=io.BytesIO(demo.artifact_bytes()),
        config=demo.config,
        aliases=list(aliases),
        description=demo.description,
        task=demo.task,
    )


def error_of(response) -> dict:
    """Assert the platform's error shape and JSON content type; return the inner error."""
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    assert isinstance(body["error"]["details"], dict)
    return body["error"]
