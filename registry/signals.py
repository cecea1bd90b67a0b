"""Signals the registry sends; the serving side listens (the registry never imports it)."""

from django.dispatch import Signal

#: Sent after a committed change that can alter which version serves a request
#: (a version registered, validated or archived; an alias set or removed).
registry_changed = Signal()

GENERATION_CACHE_KEY = "registry:generation"
