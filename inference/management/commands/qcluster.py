"""``manage.py qcluster``: django-q2's command, running the cluster of ``inference.jobs.cluster``
(bounded stop whatever signals reach its processes; see that module). This app is listed before
django_q in INSTALLED_APPS so that this command is the one ``manage.py`` runs."""

from __future__ import annotations

import logging
import os
import sys

from django.conf import settings
from django_q.management.commands.qcluster import Command as QClusterCommand


class Command(QClusterCommand):
    def handle(self, *args, **options):
        from inference.jobs.cluster import run_cluster

        settings.SECRET_KEY  # noqa: B018 - as django-q2's command: signing needs it
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        status = run_cluster(run_once=options.get("run_once", False))
        # Exit now, without the interpreter's finalization: after a hard stop (its processes
        # SIGKILLed), the final garbage collection was seen spinning for good in this process.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
