"""revoke_api_key: revoke API keys by prefix (the part of a key before the dot)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from inference.keys import APIKey, api_keys_revoke


class Command(BaseCommand):
    help = "Revoke API keys by prefix. Revocation cannot be undone; requests with the keys are refused at once."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("prefixes", nargs="+", help="key prefixes (the part of a key before the dot)")

    def handle(self, *args: Any, **options: Any) -> None:
        prefixes = sorted(set(options["prefixes"]))
        keys = APIKey.objects.filter(prefix__in=prefixes)
        missing = sorted(set(prefixes) - set(keys.values_list("prefix", flat=True)))
        if missing:
            raise CommandError(f"No API key with prefix {', '.join(missing)}: nothing revoked.")
        count = api_keys_revoke(keys)
        self.stdout.write(f"Revoked {count} API key(s) ({len(prefixes) - count} already revoked).")
