from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The bottom layer: building blocks every app may use (tenant scoping, the actor of
    a change, domain errors and their API rendering, background tasks, the tenant-scoped
    admin). It imports no app of ours: only Django, DRF, Celery and the standard library."""

    name = "core"
    verbose_name = "Core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core import stale_plans, statement_cache

        stale_plans.connect()
        statement_cache.remember_long_statements()
