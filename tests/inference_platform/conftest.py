"""Fixtures of the platform's own tests (the front, settings, the shared cache): those of the
serving-side tests that apply to every test (a fresh serving pool, test hosts, torch's threads), and the
iris model and inference key of the in-process front tests."""

from tests.inference.conftest import _fresh_pool, _keep_torch_threads, _test_hosts, iris, key  # noqa: F401
