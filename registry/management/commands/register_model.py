"""register_model: register the next version of a model from an artifact and a config file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from registry import services


class Command(BaseCommand):
    help = (
        "Register the next version of NAME (creating the model if new), validate it in a "
        "separate process, and print {\"model\", \"version\", \"status\", \"sha256\"} as JSON. "
        "A bad artifact or config exits non-zero with the reason and registers nothing."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--name", required=True, help="model name (a slug)")
        parser.add_argument("--artifact", required=True, help="artifact file")
        parser.add_argument("--config", required=True, help="config JSON file (format, architecture, inputs, ...)")
        parser.add_argument(
            "--alias", action="append", default=[], help="alias to point at the new version (repeatable)"
        )
        parser.add_argument("--description", default="", help="model description, when the model is new")
        parser.add_argument("--task", default="", help="model task (e.g. classification), when the model is new")

    def handle(self, *args: Any, **options: Any) -> None:
        artifact = Path(options["artifact"])
        config_path = Path(options["config"])
        if not artifact.is_file():
            raise CommandError(f"Artifact file not found: {artifact}")
        if not config_path.is_file():
            raise CommandError(f"Config file not found: {config_path}")
        try:
            config = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CommandError(f"Config file {config_path} is not valid JSON: {exc}") from exc
        aliases = [a.strip() for value in options["alias"] for a in value.split(",") if a.strip()]
        try:
            with artifact.open("rb") as fh:
                version = services.model_version_register(
                    model_name=options["name"],
                    artifact=fh,
                    config=config,
                    # Shell access to the server already allows running any code; the
                    # platform-wide INFERENCE_ALLOW_CODE_ARTIFACTS switch still applies.
                    may_upload_code=True,
                    aliases=aliases,
                    description=options["description"],
                    task=options["task"],
                )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(
            json.dumps(
                {
                    "model": version.model.name,
                    "version": version.version,
                    "status": version.status,
                    "sha256": version.sha256,
                    "aliases": aliases,
                }
            )
        )
