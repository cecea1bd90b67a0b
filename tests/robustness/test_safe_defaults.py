"""Safe by default (issue 9, item 7), in fresh processes: settings are read once, at import.

tests/inference_platform/test_settings.py covers `check --deploy` with PostgreSQL + Redis and the refusal of a
missing secret key with a PostgreSQL URL; this file adds production on SQLite, the security
headers of API and admin responses in production mode, the size limits and the code-format
switch as shipped, and a secret key that is never generated in production, whatever the
database.
"""

from __future__ import annotations

import json
import secrets

import pytest

from tests.inference_platform.test_settings import run

PROBE = r"""
import json, django
django.setup()
from django.conf import settings
from django.test import Client
settings.ALLOWED_HOSTS = ["inference.example.com"]
out = {}
for label, path, secure in (("api", "/api/v1/models", True), ("admin", "/admin/login/", True),
                            ("v2", "/v2/health/live", True), ("plain-http", "/api/v1/models", False),
                            ("probe", "/healthz", False)):
    r = Client(HTTP_HOST="inference.example.com").get(path, secure=secure)
    out[label] = {"status": r.status_code, "headers": dict(r.items()),
                  "cookies": {k: {"secure": bool(v["secure"]), "httponly": bool(v["httponly"])}
                              for k, v in r.cookies.items()}}
print(json.dumps(out))
"""

LIMITS = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({k: getattr(s, k) for k in ('DEBUG', 'INFERENCE_MAX_BODY_BYTES', 'DATA_UPLOAD_MAX_MEMORY_SIZE', "
    "'INFERENCE_MAX_ARTIFACT_BYTES', 'INFERENCE_JOB_MAX_FILE_BYTES', 'INFERENCE_ALLOW_CODE_ARTIFACTS', "
    "'INFERENCE_MAX_INSTANCES', 'INFERENCE_MAX_TENSOR_ELEMENTS', 'SESSION_COOKIE_HTTPONLY', 'X_FRAME_OPTIONS')}))"
)


def sqlite_production(tmp_path) -> dict[str, str]:
    return {
        "DJANGO_DEBUG": "false",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'prod.sqlite3'}",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
        "DJANGO_ALLOWED_HOSTS": "inference.example.com",
    }


def test_check_deploy_is_clean_in_production_on_sqlite(tmp_path):
    proc = run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], tmp_path, **sqlite_production(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues" in proc.stdout


def test_security_headers_on_api_and_admin_responses_in_production(tmp_path):
    proc = run(["-c", PROBE], tmp_path, **sqlite_production(tmp_path))
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    for label in ("api", "admin", "v2"):
        headers = seen[label]["headers"]
        assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload", label
        assert headers["X-Content-Type-Options"] == "nosniff", label
        assert headers["Referrer-Policy"] == "same-origin", label
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin", label
        assert headers["X-Frame-Options"] == "DENY", label
    assert seen["api"]["status"] == 401 and seen["api"]["headers"]["Content-Type"] == "application/json"
    assert seen["admin"]["status"] == 200
    assert seen["admin"]["cookies"]["csrftoken"]["secure"] is True
    # plain HTTP is redirected to HTTPS, except the orchestrator's probes
    assert seen["plain-http"]["status"] == 301
    assert seen["plain-http"]["headers"]["Location"] == "https://inference.example.com/api/v1/models"
    assert seen["probe"]["status"] == 200


def test_size_limits_and_code_formats_as_shipped(tmp_path):
    proc = run(["-c", LIMITS], tmp_path)
    assert proc.returncode == 0, proc.stderr
    shipped = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shipped == {
        "DEBUG": False,
        "INFERENCE_MAX_BODY_BYTES": 16 * 1024**2,
        "DATA_UPLOAD_MAX_MEMORY_SIZE": 16 * 1024**2,
        "INFERENCE_MAX_ARTIFACT_BYTES": 2 * 1024**3,
        "INFERENCE_JOB_MAX_FILE_BYTES": 512 * 1024**2,
        "INFERENCE_ALLOW_CODE_ARTIFACTS": False,
        "INFERENCE_MAX_INSTANCES": 1024,
        "INFERENCE_MAX_TENSOR_ELEMENTS": 4_000_000,
        "SESSION_COOKIE_HTTPONLY": True,
        "X_FRAME_OPTIONS": "DENY",
    }


@pytest.mark.parametrize("secret", ["", None])
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_production_never_generates_a_secret_key(tmp_path, database, secret):
    env = sqlite_production(tmp_path)
    if database == "postgres":
        env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/test"
    del env["DJANGO_DEBUG"]  # the default is production's: debug off
    if secret is None:
        del env["DJANGO_SECRET_KEY"]
    else:
        env["DJANGO_SECRET_KEY"] = secret
    for args in (["-c", "import django; django.setup()"], ["manage.py", "check", "--deploy"]):
        proc = run(args, tmp_path, **env)
        assert proc.returncode != 0
        assert "DJANGO_SECRET_KEY is not set" in proc.stderr
    assert not (tmp_path / "secret_key").exists()
