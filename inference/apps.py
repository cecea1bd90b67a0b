"""App config for the serving side."""

from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "Inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Wiring only: nothing is loaded here (models load lazily, per process).
        from django.db.models.signals import post_save, pre_delete

        from registry.models import RegisteredModel
        from registry.signals import registry_changed

        from .apis import schema  # noqa: F401 - registers the OpenAPI auth extension
        from .selectors import memo

        registry_changed.connect(memo.forget, dispatch_uid="inference.selectors.registry_changed")
        # A model row's serving settings (payload capture) live in the memo too: a save in the admin
        # is announced like any registry change, so that every process forgets its copy.
        post_save.connect(announce_model_saved, sender=RegisteredModel, dispatch_uid="inference.model_saved")
        # Before a model's rows go (its keys' allowed-model links with them), revoke the keys it was the
        # only allowed model of: with an empty list they would see every model.
        pre_delete.connect(revoke_keys_only_for, sender=RegisteredModel, dispatch_uid="inference.model_deleted")


def announce_model_saved(**kwargs) -> None:
    from registry.signals import announce_change

    announce_change()


def revoke_keys_only_for(*, instance, **kwargs) -> None:
    from .keys import keys_only_for_model_revoke

    keys_only_for_model_revoke(instance)
