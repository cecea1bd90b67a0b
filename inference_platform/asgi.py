"""ASGI entry point: the web process's front (`inference_platform.front`), served by granian.

`python -m inference_platform.serve` (what `make run`, the Procfile and the container run)
starts it; `inference_platform.wsgi:application` is the same platform for a WSGI server.
"""

import os

import django

from inference.runtime.memory import limit_arenas

limit_arenas()  # before the process allocates much: the allocator policy (inference.runtime.memory)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")
django.setup(set_prefix=False)

from inference_platform.front import get_application  # noqa: E402 - after django.setup()

application = get_application()
