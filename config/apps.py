from django.apps import AppConfig


class ConfigAppConfig(AppConfig):
    """Project-wide pieces that need an app: deploy checks."""

    name = "config"
    label = "handover_config"
    verbose_name = "Handover"

    def ready(self):
        from config import checks  # noqa: F401  (registers the deploy checks)
