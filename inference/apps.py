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
        from .selectors import memo

        registry_changed.connect(memo.forget, dispatch_uid="inference.selectors.registry_changed")
        # A model row's serving settings (payload capture) live in the memo too: a save in the admin
        # is announced like any registry change, so that every process forgets its copy.
        post_save.connect(announce_model_saved, sender=RegisteredModel, dispatch_uid="inference.model_saved")


def announce_model_saved(**kwargs) -> None:
    from registry.signals import announce_change

    announce_change()
