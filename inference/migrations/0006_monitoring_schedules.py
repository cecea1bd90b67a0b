"""Schedule the request rollups (every minute) and the monitoring purge (hourly) on the django-q2 cluster."""

from django.db import migrations

SCHEDULES = {
    "inference: roll up request records": {"func": "inference.tasks.rollup_requests", "schedule_type": "I",
                                           "minutes": 1, "repeats": -1},
    "inference: purge old request records and rollups": {"func": "inference.tasks.purge_monitoring",
                                                         "schedule_type": "H", "repeats": -1},
}


def create_schedules(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    for name, defaults in SCHEDULES.items():
        Schedule.objects.update_or_create(name=name, defaults=defaults)


def remove_schedules(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name__in=list(SCHEDULES)).delete()


class Migration(migrations.Migration):
    dependencies = [("inference", "0005_request_records"), ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more")]
    operations = [migrations.RunPython(create_schedules, remove_schedules)]
