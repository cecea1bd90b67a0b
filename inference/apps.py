"""App config for the serving side."""

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Wiring only: nothing is loaded here (models load lazily, per process).
        from registry.signals import registry_changed

        from .apis import schema  # noqa: F401 - registers the OpenAPI auth extension
        from .runtime.pool import on_registry_changed

        registry_changed.connect(on_registry_changed, dispatch_uid="inference.pool.registry_changed")
