"""Fixtures of the robustness suites: those of the serving-side tests (a fresh serving pool per
test, test hosts, an inference key, the "iris" model with two versions)."""

from tests.inference.conftest import _fresh_pool, _keep_torch_threads, _test_hosts, api, iris, key  # noqa: F401
