from django.apps import AppConfig


class InboxConfig(AppConfig):
    name = "inbox"
    verbose_name = "Inbox and handover"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from inbox import receivers  # noqa: F401  (connects signal receivers)
