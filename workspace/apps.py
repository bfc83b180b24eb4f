from django.apps import AppConfig


class WorkspaceConfig(AppConfig):
    """The agents' own pages: their conversations, notices and presence. It sits on top
    of inbox and leads (it shows both) and below config."""

    name = "workspace"
    verbose_name = "Agent workspace"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from workspace import receivers  # noqa: F401  (connects the logout receiver)
