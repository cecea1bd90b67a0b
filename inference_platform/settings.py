"""Django settings, read from the environment (django-environ) and nowhere else.

Two shapes of deployment come out of the same file:

* embedded (the default): SQLite in WAL mode under ``INFERENCE_DATA_DIR``, django-q2's
  ORM broker on that database, a cache in the data dir shared by the machine's web
  processes (diskcache), a secret key generated once and kept in the data dir. One
  machine; ``make run`` starts it.
* production (``DJANGO_DEBUG=false`` and ``DATABASE_URL`` set): PostgreSQL, Redis as the
  shared cache when ``REDIS_URL`` is set (and as the broker with
  ``INFERENCE_BROKER=redis``), ``DJANGO_SECRET_KEY`` required, and by default
  (``DJANGO_SECURE``) HTTPS-only cookies and HSTS so that ``manage.py check --deploy`` is clean.

docs/configuration.md lists every variable.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import time
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)

DATA_DIR = Path(env.str("INFERENCE_DATA_DIR", default="var"))
if not DATA_DIR.is_absolute():
    DATA_DIR = BASE_DIR / DATA_DIR
DATA_DIR.mkdir(parents=True, exist_ok=True)

DATABASE_URL = env.str("DATABASE_URL", default="")
REDIS_URL = env.str("REDIS_URL", default="")

# Production mode: a real database and no debug. A deploy like that must never run on a
# generated secret, so a missing DJANGO_SECRET_KEY stops the process here.
PRODUCTION = not DEBUG and bool(DATABASE_URL)


def _embedded_secret_key() -> str:
    """Return the secret kept in the data dir, creating it on first start."""
    path = DATA_DIR / "secret_key"
    try:
        # Created owner-only from the first byte; O_EXCL: two processes starting at once
        # on a fresh data dir agree on one key (the loser reads the winner's).
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(64))
    for _ in range(50):
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.02)  # the creating process is still writing
    raise ImproperlyConfigured(f"{path} is empty: delete it and start again.")


SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. With DJANGO_DEBUG=false and DATABASE_URL set "
            "the platform runs in production mode and refuses to start on a generated "
            "key: set DJANGO_SECRET_KEY to a long random string (e.g. the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(64))'`)."
        )
    SECRET_KEY = _embedded_secret_key()

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "inference_platform.apps.PlatformAdminConfig",  # django.contrib.admin, failed logins throttled
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_ratelimit",
    "registry",
    "inference",
    # After inference: its `qcluster` command (a bounded stop, inference.jobs.cluster) replaces django-q2's.
    "django_q",
]

MIDDLEWARE = [
    # Above the boundary: what every request gets, the async API views (predict, infer) included;
    # the web server's front runs these hooks itself around those views (inference_platform.front).
    "inference.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # The async API views go from here straight to the view; below is for the admin and the
    # browser pages, which every other request goes through.
    "inference.middleware.APIBoundaryMiddleware",
    # Serves the admin's and the API docs' static files from the app server itself:
    # nothing to configure in front of it, and nothing fetched from a CDN.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "inference.middleware.MessageMiddleware",  # contrib's, skipped for API paths
]

ROOT_URLCONF = "inference_platform.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "inference_platform.wsgi.application"
ASGI_APPLICATION = "inference_platform.asgi.application"

# --- Database -------------------------------------------------------------------------

if DATABASE_URL:
    DATABASES = {"default": env.db_url_config(DATABASE_URL)}
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DJANGO_CONN_MAX_AGE", 60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # A test database per test process: concurrent test runs never drop each other's.
    DATABASES["default"].setdefault("TEST", {}).setdefault("NAME", f"test_{DATABASES['default']['NAME']}_{os.getpid()}")
else:
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "db.sqlite3"}}

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets readers run while one writer commits; IMMEDIATE transactions take the
    # write lock up front so two writers queue on the busy timeout instead of failing
    # with "database is locked" when a read transaction tries to upgrade.
    # Keep the connection between requests: opening SQLite and running the init pragmas
    # on every request costs more than the query.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # Tests use a file, not memory: the job tests run a real qcluster process on it. One
    # file per test process, so that two test runs never share (and clobber) a database.
    DATABASES["default"].setdefault("TEST", {})["NAME"] = str(DATA_DIR / f"test-db-{os.getpid()}.sqlite3")
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache ----------------------------------------------------------------------------

if REDIS_URL:
    # The shared cache: rate-limit counters and key lookups are seen by every web
    # process on every machine.
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("INFERENCE_CACHE_PREFIX", default="inference"),
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        }
    }
    SILENCED_SYSTEM_CHECKS: list[str] = []
else:
    # Embedded mode: the web processes of this one machine share a cache in the data dir
    # (diskcache, SQLite files; inference_platform/cache.py), so rate-limit counters and
    # key lookups are shared by every process that `WEB_CONCURRENCY` starts, as with Redis.
    CACHES = {
        "default": {
            "BACKEND": "inference_platform.cache.SharedDiskCache",
            "LOCATION": str(DATA_DIR / "cache" / "default"),
            "SHARDS": 4,
            # Seconds a writer waits for another process's write before retrying.
            "DATABASE_TIMEOUT": 1.0,
            "OPTIONS": {"size_limit": 256 * 1024**2},
        }
    }
    # django-ratelimit's W001 knows only its list of backends; what it needs is an atomic
    # incr shared by every process, which diskcache's is (a SQLite transaction).
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]

# --- Background jobs (django-q2) -------------------------------------------------------

INFERENCE_BROKER = env.str("INFERENCE_BROKER", default="orm")
if INFERENCE_BROKER not in ("orm", "redis"):
    raise ImproperlyConfigured(f"INFERENCE_BROKER must be 'orm' or 'redis', not {INFERENCE_BROKER!r}.")
if INFERENCE_BROKER == "redis" and not REDIS_URL:
    raise ImproperlyConfigured("INFERENCE_BROKER=redis needs REDIS_URL to be set.")

# A job's task may run up to INFERENCE_JOB_TIMEOUT seconds; `retry` (when the ORM broker
# redelivers an unacknowledged task) is comfortably above it, so a task still running is
# never delivered twice. A dead worker's job is recovered sooner by the reconciler: its
# lease (renewed after every chunk) expires after INFERENCE_JOB_LEASE_SECONDS.
INFERENCE_JOB_TIMEOUT = env.int("INFERENCE_JOB_TIMEOUT", default=3600)
# The lease is also how long a job waits to run again after the pusher or the cluster that took
# its task dies (inference.jobs.brokers, .keeper): about 1.25 leases. Each chunk of a job must
# take well under it (a run whose lease expires is taken over).
INFERENCE_JOB_LEASE_SECONDS = env.int("INFERENCE_JOB_LEASE_SECONDS", default=45)
INFERENCE_JOB_RETRY = env.int("INFERENCE_JOB_RETRY", default=INFERENCE_JOB_TIMEOUT + 300)
if INFERENCE_JOB_RETRY <= INFERENCE_JOB_TIMEOUT:
    raise ImproperlyConfigured("INFERENCE_JOB_RETRY must be greater than INFERENCE_JOB_TIMEOUT.")
INFERENCE_JOB_MAX_ATTEMPTS = env.int("INFERENCE_JOB_MAX_ATTEMPTS", default=3)
INFERENCE_JOB_CHUNK_SIZE = env.int("INFERENCE_JOB_CHUNK_SIZE", default=256)
INFERENCE_JOB_MAX_FILE_BYTES = env.int("INFERENCE_JOB_MAX_FILE_BYTES", default=512 * 1024**2)
# Job files are read a line at a time, in the web process (checked at submit) and in the worker:
# a line is capped so that one huge line cannot make either hold it (and its parsed form, ~14x
# the bytes) in memory; a longer line is a 400 at submit.
INFERENCE_JOB_MAX_LINE_BYTES = env.int("INFERENCE_JOB_MAX_LINE_BYTES", default=1024**2)
# Per API key: jobs queued or running at once (more: 429 too_many_jobs), and the bytes of stored
# input files of its jobs (more: 413), so that one key cannot fill the queue or the disk for all.
INFERENCE_JOB_MAX_QUEUED_PER_KEY = env.int("INFERENCE_JOB_MAX_QUEUED_PER_KEY", default=20)
INFERENCE_JOB_MAX_STORED_BYTES_PER_KEY = env.int("INFERENCE_JOB_MAX_STORED_BYTES_PER_KEY", default=2 * 1024**3)
# A version left `registered` this long gets its validation task queued again (jobs need no such
# wait any more: the reconciler sees whether a job's task is in the broker or taken).
INFERENCE_JOB_REQUEUE_AFTER = env.int("INFERENCE_JOB_REQUEUE_AFTER", default=600)
# Seconds a stopping qcluster (SIGTERM/SIGINT, to it or to all its processes) gives its workers to
# finish their tasks before it SIGKILLs them; their jobs are re-run once their leases expire.
# Keep it below the supervisor's own grace period (k8s, compose: 60 s; systemd: 90 s).
INFERENCE_WORKER_STOP_TIMEOUT = env.float("INFERENCE_WORKER_STOP_TIMEOUT", default=30)
# Job callbacks (inference/jobs/callbacks.py). A callback URL's host must be listed here:
# `name` allows the scheme's default port (80, 443), `name:port` that port only. Checked at
# submit and again at delivery.
INFERENCE_CALLBACK_ALLOWED_HOSTS = env.list("INFERENCE_CALLBACK_ALLOWED_HOSTS", default=[])
# A listed name is still refused at delivery when it resolves to a private, loopback,
# link-local (cloud metadata), multicast, reserved or unspecified address (SSRF, DNS
# rebinding), unless the address is in one of these networks (CIDRs, e.g. 10.0.5.0/24):
# how an operator allows an internal receiver.
INFERENCE_CALLBACK_ALLOWED_NETWORKS = env.list("INFERENCE_CALLBACK_ALLOWED_NETWORKS", default=[])
for _network in INFERENCE_CALLBACK_ALLOWED_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError as _exc:
        raise ImproperlyConfigured(f"INFERENCE_CALLBACK_ALLOWED_NETWORKS: {_exc}") from None
# The HMAC key of callback signatures; required to submit a job with a callback (never the
# SECRET_KEY, which also signs sessions and django-q2's task packages).
INFERENCE_CALLBACK_SECRET = env.str("INFERENCE_CALLBACK_SECRET", default="")

Q_CLUSTER = {
    "name": "inference",
    "workers": env.int("INFERENCE_WORKERS", default=2),
    "timeout": INFERENCE_JOB_TIMEOUT,
    "retry": INFERENCE_JOB_RETRY,
    "max_attempts": 0,  # the job row counts attempts itself
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 1000,
    "label": "Background tasks",
    "poll": 0.2,
    # django-q2's broker, which marks the jobs whose tasks a pusher takes and queues re-runs first.
    "broker_class": "inference.jobs.brokers." + ("RedisBroker" if INFERENCE_BROKER == "redis" else "OrmBroker"),
}
if INFERENCE_BROKER == "redis":
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
# Job queues by hardware target: the jobs of versions on a target named here go to that
# django-q2 queue, which only the workers started with INFERENCE_WORKER_QUEUE=<queue> take.
# E.g. INFERENCE_JOB_QUEUES=cuda=gpu everywhere and INFERENCE_WORKER_QUEUE=gpu on GPU worker
# hosts: CPU workers never take a job they cannot run. Other jobs, the reconciler's schedule
# and callbacks stay on the default queue (at least one worker cluster must serve it).
INFERENCE_JOB_QUEUES = env.dict("INFERENCE_JOB_QUEUES", default={})
INFERENCE_WORKER_QUEUE = env.str("INFERENCE_WORKER_QUEUE", default="")
if INFERENCE_WORKER_QUEUE:
    if INFERENCE_WORKER_QUEUE not in INFERENCE_JOB_QUEUES.values():
        raise ImproperlyConfigured(
            f"INFERENCE_WORKER_QUEUE={INFERENCE_WORKER_QUEUE!r} is not a queue of INFERENCE_JOB_QUEUES "
            f"({INFERENCE_JOB_QUEUES or 'empty'}): no job would ever reach these workers."
        )
    Q_CLUSTER["cluster_name"] = INFERENCE_WORKER_QUEUE
if not REDIS_URL:
    # The cluster publishes its status (workers, heartbeat) to a cache: the in-process cache
    # would hide it from the web process and the admin's monitoring page, a file cache in
    # the data dir is seen by every process on this machine (the embedded deployment).
    CACHES["django_q"] = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DATA_DIR / "cache" / "django_q"),
    }
    Q_CLUSTER["cache"] = "django_q"
    # The registry generation (registry.signals.generation_cache) must be seen by every
    # process: a version validated by the qcluster, an alias moved by manage.py.
    CACHES["registry"] = {
        "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
        "LOCATION": str(DATA_DIR / "cache" / "registry"),
    }

# --- Auth, admin, security -------------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True

# Transport hardening (HTTPS-only cookies, HSTS, the redirect to HTTPS): its own switch, not a side
# effect of DATABASE_URL. Set DJANGO_SECURE=true on every deployment reached over TLS, whatever its
# database; false only where clients speak plain HTTP. Its default keeps the earlier behaviour: on in
# production mode (DJANGO_DEBUG=false and DATABASE_URL set), off otherwise.
DJANGO_SECURE = env.bool("DJANGO_SECURE", default=PRODUCTION)
# Failed admin logins allowed per client address and per username in a window ("10/m"; "5/15m"): past
# them the login form is refused (429) without checking the password until the window ends
# (inference_platform/login_throttle.py). Empty: no limit.
INFERENCE_ADMIN_LOGIN_RATE = env.str("INFERENCE_ADMIN_LOGIN_RATE", default="10/m")

if DJANGO_SECURE:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    # Probes from the orchestrator talk plain HTTP inside the cluster.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    if env.bool("DJANGO_BEHIND_TLS_PROXY", default=False):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Internationalisation, static and media ---------------------------------------------

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# The container image collects static files at build time into a directory outside the
# data volume (deploy/Dockerfile sets INFERENCE_STATIC_ROOT).
STATIC_ROOT = Path(env.str("INFERENCE_STATIC_ROOT", default=str(DATA_DIR / "static")))
# Static files are served from STATIC_ROOT after collectstatic (`make run` runs it) and,
# failing that, straight from the apps (tests, a fresh checkout): never a broken page.
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Artifacts and job results go through Django's storage API only (FileFields, never a local
# path), so that every web and worker process on every machine sees the same files: a
# directory shared over a network filesystem (INFERENCE_MEDIA_ROOT on NFS, EFS, CephFS...),
# or an S3 bucket through django-storages (INFERENCE_STORAGE=s3). Whatever the storage,
# every process checks an artifact's sha256 against the registry when it loads it.
MEDIA_ROOT = Path(env.str("INFERENCE_MEDIA_ROOT", default=str(DATA_DIR / "media")))
# Artifacts and job results are never served as public files: no URL routes this prefix.
MEDIA_URL = "/_private-media/"
INFERENCE_STORAGE = env.str("INFERENCE_STORAGE", default="filesystem")
if INFERENCE_STORAGE == "s3":
    if not env.str("INFERENCE_S3_BUCKET", default=""):
        raise ImproperlyConfigured("INFERENCE_STORAGE=s3 needs INFERENCE_S3_BUCKET (the bucket's name).")
    # Credentials come from boto3's usual chain: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    # or the machine's or pod's role. Objects stay private (no ACL; the bucket's policy).
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("INFERENCE_S3_BUCKET"),
            "location": env.str("INFERENCE_S3_PREFIX", default=""),
            "region_name": env.str("INFERENCE_S3_REGION", default="") or None,
            "endpoint_url": env.str("INFERENCE_S3_ENDPOINT_URL", default="") or None,  # MinIO, Ceph RGW...
            "default_acl": None,
            "querystring_auth": True,
            # Like the filesystem storage: a name in use gets a new one, nothing is overwritten.
            "file_overwrite": False,
        },
    }
elif INFERENCE_STORAGE != "filesystem":
    raise ImproperlyConfigured(f"INFERENCE_STORAGE must be 'filesystem' or 's3', not {INFERENCE_STORAGE!r}.")

# Largest artifact upload accepted, in bytes (admin and registry API).
INFERENCE_MAX_ARTIFACT_BYTES = env.int("INFERENCE_MAX_ARTIFACT_BYTES", default=2 * 1024**3)
FILE_UPLOAD_MAX_MEMORY_SIZE = 8 * 1024**2
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("INFERENCE_MAX_BODY_BYTES", default=16 * 1024**2)

# --- Registry ----------------------------------------------------------------------------

# Architectures an artifact of a weight format may name: dotted paths to installed
# nn.Module classes. Loading a weights file never runs code from the file. Besides the generic
# ones, torchvision's classification networks (registry.architectures: same state-dict keys, so
# torchvision's weights load as they are). The largest, ResNet-50 (25.6 M parameters, 0.1 GB),
# is far within INFERENCE_MAX_PARAMETERS and INFERENCE_VALIDATION_MEMORY_BYTES.
INFERENCE_ARCHITECTURES = [
    "registry.architectures.MLP",
    "registry.architectures.SmallCNN",
    "registry.architectures.ResNet18",
    "registry.architectures.ResNet34",
    "registry.architectures.ResNet50",
    "registry.architectures.MobileNetV3Small",
    "registry.architectures.MobileNetV3Large",
    "registry.architectures.EfficientNetB0",
] + env.list("INFERENCE_EXTRA_ARCHITECTURES", default=[])

# TorchScript and torch.export artifacts execute code from the file when loaded. Off
# unless an operator switches them on; then only users/keys holding the
# `registry.upload_code_artifact` permission may upload them.
INFERENCE_ALLOW_CODE_ARTIFACTS = env.bool("INFERENCE_ALLOW_CODE_ARTIFACTS", default=False)

# The callable that validates a new version (load it, run an example through pipeline and
# model) inside a separate process. The registry never imports the serving side.
REGISTRY_VERSION_VALIDATOR = "inference.validation.validate_version"
REGISTRY_VALIDATION_TIMEOUT = env.int("INFERENCE_VALIDATION_TIMEOUT", default=300)
# Limits of the validation process (0: none), so that an artifact or config asking for too
# much fails with that reason instead of taking the host's memory or CPU. Address space
# (RLIMIT_AS): a validation measured ~0.65 GB plus ~3x the weights' bytes (torch's libraries
# alone map ~0.6 GB), so 8 GiB fits a model at INFERENCE_MAX_PARAMETERS (2 GB FP32, ~6.7 GB).
INFERENCE_VALIDATION_MEMORY_BYTES = env.int("INFERENCE_VALIDATION_MEMORY_BYTES", default=8 * 1024**3)
INFERENCE_VALIDATION_CPU_SECONDS = env.int("INFERENCE_VALIDATION_CPU_SECONDS", default=120)  # RLIMIT_CPU
# Largest weight-format architecture (parameters, counted from architecture_args without
# allocating them) accepted at registration and built at load: 500 M is 2 GB in FP32.
INFERENCE_MAX_PARAMETERS = env.int("INFERENCE_MAX_PARAMETERS", default=500_000_000)

# --- Logging ------------------------------------------------------------------------------

LOG_LEVEL = env.str("DJANGO_LOG_LEVEL", default="INFO")
# `json` (default): one JSON object a line with the request id (inference.monitoring.logs);
# `plain`: human-readable lines.
LOG_FORMAT = env.str("INFERENCE_LOG_FORMAT", default="json")
if LOG_FORMAT not in ("json", "plain"):
    raise ImproperlyConfigured(f"INFERENCE_LOG_FORMAT must be 'json' or 'plain', not {LOG_FORMAT!r}.")
# One line per predict request on the `inference.access` logger (INFO, whatever DJANGO_LOG_LEVEL says).
INFERENCE_ACCESS_LOG = env.bool("INFERENCE_ACCESS_LOG", default=True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "inference.monitoring.logs.JsonFormatter"},
    },
    # Lines are written by a background thread (a request thread never waits on a log write).
    "handlers": {"console": {"class": "inference.monitoring.logs.BackgroundStreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "django_q": {"handlers": ["console"], "level": LOG_LEVEL, "propagate": False},
        "inference.access": {"handlers": ["console"], "level": "INFO" if INFERENCE_ACCESS_LOG else "WARNING",
                             "propagate": False},
    },
}

# --- DRF and OpenAPI ------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["inference.apis.authentication.APIKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["inference.apis.authentication.HasScope"],
    "DEFAULT_PARSER_CLASSES": ["inference.apis.parsing.OrjsonParser"],
    "DEFAULT_RENDERER_CLASSES": ["inference.apis.parsing.OrjsonRenderer"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "inference.apis.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# Rate limits (django-ratelimit) count in the default cache; over the limit is a 429
# with Retry-After. A cache that cannot count fails open (logged, counted).
# django-ratelimit's switch, set here: read on every request, and a missing setting costs a failed lookup.
RATELIMIT_ENABLE = True
RATELIMIT_USE_CACHE = "default"
RATELIMIT_EXCEPTION_CLASS = "inference.errors.RateLimited"
RATELIMIT_FAIL_OPEN = False  # inference.access.count_request detects the failure itself and fails open

SPECTACULAR_SETTINGS = {
    "TITLE": "Inference platform API",
    "DESCRIPTION": "Predictions, background jobs and the model registry over REST.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_AUTHENTICATION": [],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Version status appears in several components (models, the registry API): one enum name.
    "ENUM_NAME_OVERRIDES": {"VersionStatusEnum": ["registered", "ready", "failed"]},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "inference.apis.schema.close_request_bodies",
    ],
}

# --- Serving ----------------------------------------------------------------------------------

# Request limits: instances per request, elements per tensor and per request, decoded image pixels
# per image and per request (a request's decoding work is bounded, not only each value's).
INFERENCE_MAX_INSTANCES = env.int("INFERENCE_MAX_INSTANCES", default=1024)
INFERENCE_MAX_TENSOR_ELEMENTS = env.int("INFERENCE_MAX_TENSOR_ELEMENTS", default=4_000_000)
INFERENCE_MAX_REQUEST_ELEMENTS = env.int("INFERENCE_MAX_REQUEST_ELEMENTS", default=8_000_000)
INFERENCE_IMAGE_MAX_PIXELS = env.int("INFERENCE_IMAGE_MAX_PIXELS", default=4096 * 4096)
INFERENCE_MAX_REQUEST_PIXELS = env.int("INFERENCE_MAX_REQUEST_PIXELS", default=4 * 4096 * 4096)
# The web process's event loop only parses, authenticates and waits (inference.offload). Work
# within these budgets runs on it (cheaper than a thread hand-off): a body of up to
# INFERENCE_INLINE_BYTES parsed and converted to tensors, outputs of up to INFERENCE_INLINE_ELEMENTS
# post-processed (a v1 request without parameters: by its batcher, with its batch). Larger ones, and every input a step decodes (images), go to INFERENCE_COMPUTE_THREADS
# threads, with at most INFERENCE_COMPUTE_QUEUE calls waiting (then 503); forward passes run on each
# batcher's thread; database and cache reads that miss the process's memos, and model loads, on
# INFERENCE_IO_THREADS threads.
INFERENCE_INLINE_BYTES = env.int("INFERENCE_INLINE_BYTES", default=64 * 1024)
INFERENCE_INLINE_ELEMENTS = env.int("INFERENCE_INLINE_ELEMENTS", default=16 * 1024)
INFERENCE_COMPUTE_THREADS = env.int("INFERENCE_COMPUTE_THREADS", default=2)
INFERENCE_COMPUTE_QUEUE = env.int("INFERENCE_COMPUTE_QUEUE", default=64)
INFERENCE_IO_THREADS = env.int("INFERENCE_IO_THREADS", default=4)
# The runtime class serving each artifact format (format -> dotted path of an
# inference.runtime.base.Runtime subclass): PyTorch for the torch formats, ONNX Runtime for
# "onnx" (imported only when an ONNX version loads). A third runtime is a module and a line here.
INFERENCE_RUNTIMES = {
    **{fmt: "inference.runtime.pytorch.PyTorchRuntime" for fmt in ("safetensors", "state_dict", "torchscript",
                                                                    "torch_export")},
    "onnx": "inference.runtime.onnx_runtime.OnnxRuntime",
}
# Operator-defined pipeline steps and handlers: {"step name": "dotted.path.StepClass"}.
INFERENCE_PIPELINE_STEPS: dict[str, str] = {}
# Callables observing every inference: f(model=, version=, timings=, outcome=).
INFERENCE_HOOKS: list[str] = []
INFERENCE_MAX_BODY_BYTES = DATA_UPLOAD_MAX_MEMORY_SIZE
# Seconds a predict request waits for its batch before a 503.
INFERENCE_PREDICT_TIMEOUT = env.float("INFERENCE_PREDICT_TIMEOUT", default=30.0)
# How often a web process re-checks the shared registry generation (alias moves made by
# other processes are seen within this many seconds; 0 = on every request).
INFERENCE_REGISTRY_POLL_SECONDS = env.float("INFERENCE_REGISTRY_POLL_SECONDS", default=0.5)
# Each web process loads every model's default version (production alias, else newest ready)
# as it starts, before it takes requests (within INFERENCE_MODEL_CACHE_BYTES); off: on first use.
INFERENCE_PRELOAD_MODELS = env.bool("INFERENCE_PRELOAD_MODELS", default=True)
# Bytes of model weights kept loaded per process; least recently used versions unload past it.
INFERENCE_MODEL_CACHE_BYTES = env.int("INFERENCE_MODEL_CACHE_BYTES", default=4 * 1024**3)
# Bearer token that lets a Prometheus server scrape /metrics (staff sessions need none).
INFERENCE_METRICS_TOKEN = env.str("INFERENCE_METRICS_TOKEN", default="")
# Rate of a key that sets none.
INFERENCE_DEFAULT_RATE = env.str("INFERENCE_DEFAULT_RATE", default="100/s")
# Failed authentications (unknown keys, wrong secrets) allowed per client address (inference.access) and
# window; past it, keys a process has not verified are refused with a 429 before any database or
# cache lookup until the window ends. Empty: not counted.
INFERENCE_AUTH_FAILURE_RATE = env.str("INFERENCE_AUTH_FAILURE_RATE", default="20/m")
# A web process trusts a key it verified for this long (seconds) without reading the shared
# cache again; a change to the key is seen at once by the process that made it, by the
# others within this time. 0: every request reads the shared cache (inference.keys.VerifiedKeys).
INFERENCE_KEY_MEMO_SECONDS = env.float("INFERENCE_KEY_MEMO_SECONDS", default=1.0)
# The load-time optimiser of each hardware target (inference/runtime/optimizers): a hardware
# target's name or a device type -> none, onednn, jit or compile; a target's name is looked up
# first, then its device type, else none. E.g. INFERENCE_OPTIMIZERS=cpu=onednn,big-cpu=compile.
# The CPU default stays onednn (large fp32 linear layers on oneDNN): bench.optimizers measured
# it the fastest of none, onednn, jit and compile at batch 8 and 32. compile is faster only with
# TORCHINDUCTOR_FREEZING=1 in the environment, at seconds of compiling per version and memory
# that unloading does not give back (docs/benchmarks.md, "Load-time optimisers").
INFERENCE_OPTIMIZERS = env.dict("INFERENCE_OPTIMIZERS", default={"cpu": "onednn"})
_OPTIMIZER_NAMES = ("none", "onednn", "jit", "compile")  # optimizers.OPTIMIZERS, without importing torch here
if _unknown := {k: v for k, v in INFERENCE_OPTIMIZERS.items() if v not in _OPTIMIZER_NAMES}:
    raise ImproperlyConfigured(
        f"INFERENCE_OPTIMIZERS names unknown optimizers {_unknown}; the optimizers are {', '.join(_OPTIMIZER_NAMES)}."
    )

# --- Monitoring (docs/monitoring.md) -----------------------------------------------------------

# Metrics, the access log line and the request record of every inference request. Off only
# to measure what they cost (bench.monitoring).
INFERENCE_MONITORING_ENABLED = env.bool("INFERENCE_MONITORING_ENABLED", default=True)
# Request records: buffered per process, bulk-written by a background thread every
# INFERENCE_RECORDS_FLUSH_SECONDS or as soon as INFERENCE_RECORDS_FLUSH_SIZE wait; past
# INFERENCE_RECORDS_BUFFER_MAX waiting (database slow or down) new ones are dropped, counted.
INFERENCE_REQUEST_RECORDS = env.bool("INFERENCE_REQUEST_RECORDS", default=True)
INFERENCE_RECORDS_FLUSH_SECONDS = env.float("INFERENCE_RECORDS_FLUSH_SECONDS", default=2.0)
INFERENCE_RECORDS_FLUSH_SIZE = env.int("INFERENCE_RECORDS_FLUSH_SIZE", default=2000)
INFERENCE_RECORDS_BUFFER_MAX = env.int("INFERENCE_RECORDS_BUFFER_MAX", default=100_000)
# The writer thread starts on a process's first record; off, records wait for an explicit
# flush (the test suite flushes them itself).
INFERENCE_RECORDS_FLUSH_THREAD = env.bool("INFERENCE_RECORDS_FLUSH_THREAD", default=True)
# Shadow traffic (an alias's "shadow": inference.services.shadow): copies of requests wait for the
# shadow version in a bounded queue per process; a full queue drops the copy (counted). The
# comparison counts are written to ShadowRollup every INFERENCE_SHADOW_FLUSH_SECONDS.
INFERENCE_SHADOW_QUEUE = env.int("INFERENCE_SHADOW_QUEUE", default=256)
INFERENCE_SHADOW_FLUSH_SECONDS = env.float("INFERENCE_SHADOW_FLUSH_SECONDS", default=5.0)
# The shadow thread waits up to this long for a full batch of copies (nobody awaits their answers).
INFERENCE_SHADOW_GATHER_MS = env.float("INFERENCE_SHADOW_GATHER_MS", default=250.0)
# Captured payloads (RegisteredModel.capture_payloads, off by default) larger than this are
# replaced by a note.
INFERENCE_CAPTURE_MAX_BYTES = env.int("INFERENCE_CAPTURE_MAX_BYTES", default=64 * 1024)
# Per-minute rollups are recomputed for the last few minutes on every run (records of a
# minute can arrive up to a flush interval late from each web process).
INFERENCE_ROLLUP_LOOKBACK_MINUTES = env.int("INFERENCE_ROLLUP_LOOKBACK_MINUTES", default=3)
# Retention, in days, applied by the hourly purge schedule.
INFERENCE_RECORDS_RETENTION_DAYS = env.int("INFERENCE_RECORDS_RETENTION_DAYS", default=7)
INFERENCE_ROLLUPS_RETENTION_DAYS = env.int("INFERENCE_ROLLUPS_RETENTION_DAYS", default=90)
