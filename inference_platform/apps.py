"""The admin app with the platform's site (``inference_platform.admin_site.PlatformAdminSite``)."""

from django.conf import settings
from django.contrib.admin.apps import AdminConfig


class PlatformAdminConfig(AdminConfig):
    default_site = "inference_platform.admin_site.PlatformAdminSite"

    def ready(self) -> None:
        super().ready()
        from .login_throttle import parse_rate

        if settings.INFERENCE_ADMIN_LOGIN_RATE:
            parse_rate(settings.INFERENCE_ADMIN_LOGIN_RATE)  # a bad rate stops the start, saying why
