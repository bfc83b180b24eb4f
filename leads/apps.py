from django.apps import AppConfig


class LeadsConfig(AppConfig):
    name = "leads"
    verbose_name = "Leads"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from leads import (  # noqa: F401
            emails,  # registers the renderer of notification emails
            receivers,  # connects signal receivers
        )
