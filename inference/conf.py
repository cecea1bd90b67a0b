"""The settings the request path reads on every request, as plain attributes: ``hot.NAME``.

``django.conf.settings.NAME`` costs about half a microsecond a read (``LazyObject.__getattribute__``
runs in Python on every access), and a small model's request reads a dozen (docs/benchmarks.md).
``hot`` reads a setting from Django's settings once, then answers from its own attributes until
any setting changes (``setting_changed``: ``override_settings`` and the tests' ``settings`` fixture;
settings do not change otherwise while a process runs).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed


class HotSettings:
    def __getattr__(self, name: str) -> Any:  # a miss only: then the value is an attribute
        if not name.isupper():
            raise AttributeError(name)
        value = getattr(settings, name)
        self.__dict__[name] = value
        return value

    def forget(self, **_: Any) -> None:
        self.__dict__.clear()


hot = HotSettings()
setting_changed.connect(hot.forget, dispatch_uid="inference.conf.hot")
