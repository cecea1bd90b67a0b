"""bootstrap_demo: demo models, an admin user and a demo API key, each only if absent."""

from __future__ import annotations

import io
import secrets
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from inference.demo import DEMO_TRAINERS
from inference.keys import APIKey, api_key_create
from registry import services
from registry.models import ModelVersion, RegisteredModel

DEMO_KEY_NAME = "demo"


class Command(BaseCommand):
    help = (
        "Create the demo models (trained here from data scikit-learn ships; no download), an "
        "admin user and a demo API key, each only if absent. Safe to run again."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--admin-username", default="admin")
        parser.add_argument("--admin-password", default="", help="default: a random password, printed once")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="where the platform answers (for the printout)")
        parser.add_argument("--models", default=",".join(DEMO_TRAINERS), help="demo models to create")

    def handle(self, *args: Any, **options: Any) -> None:
        for name in [m.strip() for m in options["models"].split(",") if m.strip()]:
            self._model(name)
        self._admin(options["admin_username"], options["admin_password"], options["url"])
        self._key()

    def _model(self, name: str) -> None:
        if name not in DEMO_TRAINERS:
            raise CommandError(f"Unknown demo model {name!r}; known: {', '.join(DEMO_TRAINERS)}")
        existing = RegisteredModel.objects.filter(name=name).first()
        if existing and existing.versions.filter(status=ModelVersion.Status.READY).exists():
            self.stdout.write(f"Demo model {name!r} exists.")
            return
        started = time.monotonic()
        demo = DEMO_TRAINERS[name]()
        try:
            version = services.model_version_register(
                model_name=demo.name,
                artifact=io.BytesIO(demo.artifact_bytes()),
                config=demo.config,
                aliases=["production"],
                description=demo.description,
                task=demo.task,
            )
        except ValidationError as exc:
            raise CommandError(f"Demo model {name!r} failed to register: {'; '.join(exc.messages)}") from exc
        self.stdout.write(
            f"Demo model {name!r} v{version.version} trained (accuracy {demo.accuracy:.3f}) and registered as "
            f"production in {time.monotonic() - started:.1f} s."
        )

    def _admin(self, username: str, password: str, url: str) -> None:
        User = get_user_model()
        if User.objects.filter(username=username).exists():
            self.stdout.write(
                f"Admin user {username!r} exists: log in at {url}/admin/ "
                f"(forgot the password? python manage.py changepassword {username})."
            )
            return
        password = password or secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        self.stdout.write(f"Admin: {url}/admin/  user {username!r}  password {password!r} (shown once)")

    def _key(self) -> None:
        if APIKey.objects.filter(name=DEMO_KEY_NAME, revoked=False).exists():
            self.stdout.write(
                f"Demo API key {DEMO_KEY_NAME!r} exists (shown only when it was created; "
                "create another with: python manage.py create_api_key --name NAME)."
            )
            return
        _, plain = api_key_create(name=DEMO_KEY_NAME, rate="1000/s")
        self.stdout.write(f"Demo API key (shown once): {plain}")
