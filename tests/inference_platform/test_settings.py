"""Settings from the environment, checked in fresh processes (settings are read once, at import)."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings

BASE_DIR = Path(django_settings.BASE_DIR)
SERVICE_VARS = (
    "DATABASE_URL", "REDIS_URL", "INFERENCE_BROKER", "DJANGO_SECRET_KEY", "DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS",
    "DJANGO_SECURE_SSL_REDIRECT", "DJANGO_SETTINGS_MODULE", "INFERENCE_DATA_DIR", "DJANGO_SECURE",
    "DJANGO_BEHIND_TLS_PROXY", "INFERENCE_ADMIN_LOGIN_RATE",
)
POSTGRES = "postgres://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/15"

SHOW_SETTINGS = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'silenced': s.SILENCED_SYSTEM_CHECKS, 'cache': s.CACHES['default']['BACKEND'], "
    "'cache_location': s.CACHES['default'].get('LOCATION'), "
    "'engine': s.DATABASES['default']['ENGINE'], 'secret': s.SECRET_KEY, 'debug': s.DEBUG, "
    "'broker': 'redis' if 'redis' in s.Q_CLUSTER else 'orm'}))"
)


def run(args: list[str], data_dir: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_VARS}
    env.update({"DJANGO_SETTINGS_MODULE": "inference_platform.settings", "INFERENCE_DATA_DIR": str(data_dir)})
    env.update(env_vars)
    return subprocess.run(
        [sys.executable, *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )


def show(data_dir: Path, **env_vars: str) -> dict:
    proc = run(["-c", SHOW_SETTINGS], data_dir, **env_vars)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def production_env() -> dict[str, str]:
    return {
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": POSTGRES,
        "REDIS_URL": REDIS,
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
        "DJANGO_ALLOWED_HOSTS": "inference.example.com",
    }


def test_production_without_a_secret_key_refuses_to_start(tmp_path):
    proc = run(["-c", "import django; django.setup()"], tmp_path, DJANGO_DEBUG="false", DATABASE_URL=POSTGRES)
    assert proc.returncode != 0
    assert "DJANGO_SECRET_KEY" in proc.stderr
    assert "ImproperlyConfigured" in proc.stderr
    assert not (tmp_path / "secret_key").exists()  # no generated key in production


def test_check_deploy_is_clean_in_production(tmp_path):
    proc = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path, **production_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues" in proc.stdout


SHOW_TRANSPORT = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps([s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS, s.SECURE_SSL_REDIRECT]))"
)
HARDENED = [True, True, 31536000, True]
PLAIN = [False, False, 0, False]


def transport(data_dir: Path, **env_vars: str) -> list:
    proc = run(["-c", SHOW_TRANSPORT], data_dir, **env_vars)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_transport_hardening_is_its_own_switch_not_the_database_url(tmp_path):
    assert transport(tmp_path) == PLAIN  # embedded, plain HTTP on localhost
    assert transport(tmp_path, DJANGO_SECURE="true") == HARDENED  # embedded, reached over TLS
    assert transport(tmp_path, **production_env()) == HARDENED  # the default keeps production hardened
    assert transport(tmp_path, **production_env(), DJANGO_SECURE="false") == PLAIN
    assert transport(tmp_path, DJANGO_SECURE="true", DJANGO_SECURE_SSL_REDIRECT="false")[:3] == HARDENED[:3]


def test_check_deploy_is_clean_on_an_embedded_deployment_with_django_secure(tmp_path):
    env = {"DJANGO_SECURE": "true", "DJANGO_ALLOWED_HOSTS": "inference.example.com"}
    proc = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path,
               **production_env(), DJANGO_SECURE="false")
    assert proc.returncode != 0  # a production deployment without it is flagged
    assert "security.W012" in proc.stdout + proc.stderr and "security.W004" in proc.stdout + proc.stderr


def test_a_bad_admin_login_rate_stops_the_start(tmp_path):
    proc = run(["manage.py", "check"], tmp_path, INFERENCE_ADMIN_LOGIN_RATE="fast")
    assert proc.returncode != 0
    assert "INFERENCE_ADMIN_LOGIN_RATE='fast'" in proc.stderr


def test_check_deploy_flags_a_weak_secret_key(tmp_path):
    """Control for the test above: the same check does fail on a bad production setting."""
    env = production_env() | {"DJANGO_SECRET_KEY": "short"}
    proc = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path, **env)
    assert proc.returncode != 0
    assert "security.W009" in proc.stdout + proc.stderr


def test_embedded_mode_sqlite_wal_and_a_kept_secret_key(tmp_path):
    code = (
        "from django.db import connection; from django.conf import settings; "
        "print(connection.cursor().execute('PRAGMA journal_mode').fetchone()[0]); "
        "print(settings.DATABASES['default']['NAME'])"
    )
    proc = run(["manage.py", "shell", "-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr
    mode, db_name = proc.stdout.strip().splitlines()[-2:]
    assert mode.lower() == "wal"
    assert Path(db_name) == tmp_path / "db.sqlite3"
    assert (tmp_path / "db.sqlite3").is_file()

    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) >= 50

    first = show(tmp_path)
    assert first["secret"] == key  # reused, not regenerated
    assert show(tmp_path)["secret"] == key
    assert key_file.read_text().strip() == key
    assert first["engine"] == "django.db.backends.sqlite3"
    assert first["debug"] is False
    # another data dir gets another key
    other = tmp_path / "other"
    assert show(other)["secret"] != key


def test_redis_broker_needs_redis_url(tmp_path):
    proc = run(["-c", "import django; django.setup()"], tmp_path, INFERENCE_BROKER="redis")
    assert proc.returncode != 0
    assert "INFERENCE_BROKER=redis needs REDIS_URL" in proc.stderr


def test_unknown_broker_refused(tmp_path):
    proc = run(["-c", "import django; django.setup()"], tmp_path, INFERENCE_BROKER="rabbitmq")
    assert proc.returncode != 0
    assert "INFERENCE_BROKER must be 'orm' or 'redis'" in proc.stderr


def test_embedded_mode_shares_a_disk_cache_and_silences_only_the_ratelimit_backend_list(tmp_path):
    embedded = show(tmp_path)
    assert embedded["silenced"] == ["django_ratelimit.W001"]  # not E003: the cache is shared
    assert embedded["cache"] == "inference_platform.cache.SharedDiskCache"
    assert embedded["cache_location"] == str(tmp_path / "cache" / "default")
    assert embedded["broker"] == "orm"


def test_with_redis_the_cache_is_shared_and_nothing_is_silenced(tmp_path):
    with_redis = show(tmp_path, REDIS_URL=REDIS, INFERENCE_BROKER="redis")
    assert with_redis["silenced"] == []
    assert with_redis["cache"] == "django_redis.cache.RedisCache"
    assert with_redis["broker"] == "redis"
    assert with_redis["engine"] == "django.db.backends.sqlite3"  # no DATABASE_URL: still embedded SQLite


@pytest.mark.parametrize("debug", ["true", "false"])
def test_postgres_url_selects_postgres(tmp_path, debug):
    env = {"DATABASE_URL": POSTGRES, "DJANGO_DEBUG": debug, "DJANGO_SECRET_KEY": "k" * 64}
    shown = show(tmp_path, **env)
    assert shown["engine"] == "django.db.backends.postgresql"
    assert shown["debug"] is (debug == "true")
