from django.apps import AppConfig


class InboxConfig(AppConfig):
    name = "inbox"
    verbose_name = "Inbox and handover"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from inbox import (  # noqa: F401
            channels,  # registers the whatsapp outbox channel
            notices,  # registers the renderer of conversation notice emails
            receivers,  # connects signal receivers
        )
