from django.apps import AppConfig


class ConfigAppConfig(AppConfig):
    """Project-wide pieces that need an app: deploy checks, and the commands that drive
    every app at once (seed_demo, run_periodic_jobs)."""

    name = "config"
    label = "handover_config"
    verbose_name = "Handover"

    def ready(self):
        from config import checks  # noqa: F401  (registers the deploy checks)
