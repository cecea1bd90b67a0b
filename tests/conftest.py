"""Shared fixtures: isolated storage, real small model artifacts, services checks."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch
from django.conf import settings

from registry.architectures import MLP

SERVICES_RUN = bool(os.environ.get("DATABASE_URL") or os.environ.get("REDIS_URL"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """Clear stale SQLite WAL files; in the services run, unreachable services fail the run."""
    # Request records wait for an explicit flush in tests: a writer thread of its own would
    # write outside the test's transaction (and hold a connection to the test database).
    settings.INFERENCE_RECORDS_FLUSH_THREAD = False
    test_db = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if test_db and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        # pytest-django re-creates the test database file but not its -wal/-shm companions;
        # stale ones from an interrupted run make SQLite report "disk I/O error".
        for suffix in ("-wal", "-shm"):
            Path(f"{test_db}{suffix}").unlink(missing_ok=True)
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        import redis

        try:
            redis.Redis.from_url(redis_url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            pytest.exit(f"REDIS_URL={redis_url} is set but Redis is unreachable: {exc}", returncode=3)
    db_url = os.environ.get("DATABASE_URL", "")
    if db_url.startswith(("postgres", "pgsql")):
        import psycopg

        try:
            psycopg.connect(db_url.replace("postgres://", "postgresql://", 1), connect_timeout=3).close()
        except psycopg.Error as exc:
            pytest.exit(f"DATABASE_URL is set but PostgreSQL is unreachable: {exc}", returncode=3)


def _postgres_run() -> bool:
    return os.environ.get("DATABASE_URL", "").startswith(("postgres", "pgsql"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect (never skip) the `services` tests unless DATABASE_URL is PostgreSQL.

    They run several web and worker processes on one PostgreSQL and one Redis: the embedded
    run has neither and leaves them out; the services run (.ci/run's second run, CI=true
    with DATABASE_URL and REDIS_URL set) runs them, and an unreachable service fails it
    (pytest_sessionstart above)."""
    if _postgres_run():
        return
    dropped = [item for item in items if item.get_closest_marker("services")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("services")]


def pytest_report_header(config: pytest.Config) -> str:
    if _postgres_run():
        return "services tests: selected (DATABASE_URL is PostgreSQL)"
    return "services tests: deselected (DATABASE_URL is not PostgreSQL: the embedded run)"


@pytest.fixture(scope="session", autouse=True)
def _stop_background_writers(django_db_setup, django_db_blocker):
    """Torn down before the test database is dropped. Threads of this process that used the
    database (the request-records writer, tests' client threads) keep connections of their own;
    PostgreSQL then refuses to drop the test database ("being accessed by other users") and a
    test_test_<pid> database was left behind per services run. Stop the writer, then end what
    sessions are left (the servers and workers the tests started are stopped by then)."""
    yield
    import gc

    from django.db import connection

    from inference.monitoring.records import BUFFER

    with django_db_blocker.unblock():
        BUFFER.stop()
        gc.collect()  # connections of finished threads close when collected
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture(autouse=True)
def _isolated_media(settings, tmp_path: Path) -> None:
    """Each test stores artifacts under its own directory."""
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    from django.core.cache import cache

    from inference.keys import verified_keys
    from inference.ratelimit import limiter

    cache.clear()
    verified_keys.forget()  # and this process's memos of keys and rate-limit leases
    limiter.forget()


@pytest.fixture(autouse=True)
def _held_reports_run():
    """A test that served requests through the front on its own loop leaves their reports held
    (``observe.HeldReports``): they run as it ends, not in the next test."""
    yield
    from inference.monitoring.observe import run_held_reports

    run_held_reports()


IRIS_CONFIG = {
    "format": "safetensors",
    "architecture": "registry.architectures.MLP",
    "architecture_args": {"in_features": 4, "hidden": [8], "out_features": 3},
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [4]}],
    "outputs": [{"name": "output", "datatype": "FP32", "shape": [3]}],
    "batching": {"max_batch_size": 8, "max_batch_delay_ms": 2},
    "hardware": "cpu",
}


def small_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(4, [8], 3).eval()


def safetensors_bytes(module: torch.nn.Module) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in module.state_dict().items()})


def state_dict_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def torchscript_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buf)
    return buf.getvalue()


def torch_export_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(module, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},)), buf)
    return buf.getvalue()


@pytest.fixture
def mlp() -> MLP:
    return small_mlp()


@pytest.fixture
def iris_config() -> dict:
    return json.loads(json.dumps(IRIS_CONFIG))


@pytest.fixture
def write_artifact(tmp_path: Path):
    """Write bytes (and optionally a config) to files; return their paths."""

    def _write(data: bytes, config: dict | None = None, name: str = "model.bin") -> tuple[Path, Path | None]:
        path = tmp_path / name
        path.write_bytes(data)
        cfg_path = None
        if config is not None:
            cfg_path = tmp_path / f"{name}.json"
            cfg_path.write_text(json.dumps(config))
        return path, cfg_path

    return _write


@pytest.fixture
def data_dir() -> Path:
    return Path(settings.DATA_DIR)
