from django.apps import AppConfig


class TeamsConfig(AppConfig):
    name = "teams"
    verbose_name = "Tenancy, people and routing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from teams import schema  # noqa: F401  (registers the OpenAPI auth scheme)
