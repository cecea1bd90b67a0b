"""App config for the serving side."""

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Wiring only: nothing is loaded here (models load lazily, per process).
        from django.db.models.signals import post_save

        from registry.models import RegisteredModel
        from registry.signals import registry_changed

        from .apis import schema  # noqa: F401 - registers the OpenAPI auth extension
        from .runtime.pool import on_model_saved, on_registry_changed

        registry_changed.connect(on_registry_changed, dispatch_uid="inference.pool.registry_changed")
        # A model row's serving settings (payload capture) live in the pool's memo too.
        post_save.connect(on_model_saved, sender=RegisteredModel, dispatch_uid="inference.pool.model_saved")
