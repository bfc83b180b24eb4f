from django.apps import AppConfig


class TeamsConfig(AppConfig):
    name = "teams"
    verbose_name = "Tenancy, people and routing"
    default_auto_field = "django.db.models.BigAutoField"
