from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from webhooks import (  # noqa: F401
            channel,  # registers the webhook outbox channel
            receivers,  # message.failed events
        )
