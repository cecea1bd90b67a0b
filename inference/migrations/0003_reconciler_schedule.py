"""Schedule the job reconciler every minute on the django-q2 cluster."""

from django.db import migrations


def create_schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name="inference: reconcile jobs",
        defaults={"func": "inference.tasks.reconcile_jobs", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="inference: reconcile jobs").delete()


class Migration(migrations.Migration):
    dependencies = [("inference", "0002_inference_jobs"), ("django_q", "0019_alter_task_options_alter_ormq_key_alter_ormq_lock_and_more")]
    operations = [migrations.RunPython(create_schedule, remove_schedule)]
