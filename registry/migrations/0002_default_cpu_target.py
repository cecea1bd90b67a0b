"""Create the `cpu` hardware target that versions use by default."""

from django.db import migrations


def create_cpu(apps, schema_editor):
    HardwareTarget = apps.get_model("registry", "HardwareTarget")
    HardwareTarget.objects.get_or_create(
        name="cpu",
        defaults={"device_type": "cpu", "cpu_threads": 1, "description": "The CPU, one intra-op thread per batcher."},
    )


class Migration(migrations.Migration):
    dependencies = [("registry", "0001_initial")]
    operations = [migrations.RunPython(create_cpu, migrations.RunPython.noop)]
