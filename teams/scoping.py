"""Tenant scoping that fails closed.

Every tenant-owned model exposes two managers:

* ``Model.objects`` builds no query until it is told the tenant:
  ``Team.objects.for_tenant(tenant).filter(...)``. ``Team.objects.filter(...)`` raises
  ``UnscopedQueryError`` at once, so a query that forgot its tenant cannot be written by
  accident (the PostHog approach).
* ``Model.all_tenants`` is the plain manager. Django itself (admin, related managers,
  migrations) and the few cross-tenant system jobs (API key lookup, SLA sweeps) use it,
  each saying why at the call site.
"""

from django.db import models


class UnscopedQueryError(RuntimeError):
    pass


class TenantScopedQuerySet(models.QuerySet):
    def for_tenant(self, tenant):
        if tenant is None:
            raise UnscopedQueryError("for_tenant() needs a tenant, got None.")
        return self.filter(tenant=tenant)


class TenantScopedManager(models.Manager.from_queryset(TenantScopedQuerySet)):
    def get_queryset(self):
        raise UnscopedQueryError(
            f"{self.model.__name__}.objects needs a tenant: use "
            f"{self.model.__name__}.objects.for_tenant(tenant), or "
            f"{self.model.__name__}.all_tenants for a deliberate cross-tenant query."
        )

    def for_tenant(self, tenant):
        if tenant is None:
            raise UnscopedQueryError("for_tenant() needs a tenant, got None.")
        return super().get_queryset().filter(tenant=tenant)

    def create(self, **kwargs):
        if kwargs.get("tenant") is None and kwargs.get("tenant_id") is None:
            raise UnscopedQueryError(f"{self.model.__name__} rows are created with a tenant.")
        return super().get_queryset().create(**kwargs)


class TenantOwnedModel(models.Model):
    """Base for every row that belongs to one tenant."""

    tenant = models.ForeignKey("teams.Tenant", on_delete=models.CASCADE, related_name="+")

    all_tenants = models.Manager()
    objects = TenantScopedManager()

    class Meta:
        abstract = True
        default_manager_name = "all_tenants"
