"""WSGI entry point (gunicorn: `inference_platform.wsgi:application`)."""

import os

from django.core.wsgi import get_wsgi_application

from inference.runtime.memory import limit_arenas

limit_arenas()  # the allocator policy (inference.runtime.memory), in each worker as it imports the app
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")

application = get_wsgi_application()
