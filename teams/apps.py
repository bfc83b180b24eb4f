from django.apps import AppConfig


class TeamsConfig(AppConfig):
    name = "teams"
    verbose_name = "Tenancy, people and routing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from core.admin_scope import AdminTenancy, register_admin_tenancy
        from teams import schema  # noqa: F401  (registers the OpenAPI auth scheme)
        from teams.models import Tenant
        from teams.selectors import administered_tenant_ids

        # The tenant-scoped admin (core) asks this app who administers which tenant.
        register_admin_tenancy(
            AdminTenancy(
                tenant_model=Tenant,
                administered_tenant_ids=administered_tenant_ids,
                user_tenant_lookup="memberships__tenant_id",
            )
        )
