"""create_api_key: create an API key and print it once, on the last line."""

from __future__ import annotations

from datetime import datetime, time
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from inference.keys import APIKey, api_key_create


def parse_expiry(value: str) -> datetime:
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise CommandError(f"--expires {value!r} is not a date (YYYY-MM-DD) or an ISO datetime.")
        moment = datetime.combine(day, time.min)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, timezone.get_default_timezone())
    return moment


class Command(BaseCommand):
    help = "Create an API key. The key is printed once, alone on the last line; only its hash is stored."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--name", required=True, help="a free-form name (who or what uses the key)")
        parser.add_argument("--models", default="", help="comma-separated model names the key may use (default: all)")
        parser.add_argument("--rate", default="", help='requests per period, e.g. "100/s" (default: INFERENCE_DEFAULT_RATE)')
        parser.add_argument("--expires", default="", help="expiry date, YYYY-MM-DD or ISO datetime (default: never)")
        parser.add_argument("--scope", default="infer", choices=[c.value for c in APIKey.Scope])
        parser.add_argument(
            "--allow-code", action="store_true",
            help="manage keys only: may upload TorchScript / torch.export artifacts (they run code when loaded; "
            "INFERENCE_ALLOW_CODE_ARTIFACTS must be on too)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        models = [m.strip() for m in options["models"].split(",") if m.strip()]
        expires = parse_expiry(options["expires"]) if options["expires"] else None
        try:
            key, plain = api_key_create(
                name=options["name"], scope=options["scope"], model_names=models, rate=options["rate"], expires=expires,
                may_upload_code=options["allow_code"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stdout.write(
            f"Created API key {key.name!r} (prefix {key.prefix}, scope {key.scope}, "
            f"models {', '.join(models) or 'all'}, rate {key.rate or 'default'}, "
            f"expires {key.expiry_date.isoformat() if key.expiry_date else 'never'}"
            f"{', may upload code artifacts' if key.may_upload_code else ''}). "
            "Store it now: it cannot be shown again."
        )
        self.stdout.write(plain)
