from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "outbox"
    verbose_name = "Outbound messages"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from outbox import email  # noqa: F401  (registers the email channel)
