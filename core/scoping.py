"""Tenant scoping that fails closed.

Every tenant-owned model exposes two managers:

* ``Model.objects`` builds no query until it is told the tenant:
  ``Team.objects.for_tenant(tenant).filter(...)``. ``Team.objects.filter(...)`` raises
  ``UnscopedQueryError`` at once, so a query that forgot its tenant cannot be written by
  accident (the PostHog approach). A scoped queryset also fills in, and insists on, its
  tenant when it creates rows.
* ``Model.all_tenants`` is the plain manager. Django itself (admin, related managers,
  migrations) and the few cross-tenant system jobs (API key lookup, SLA sweeps) use it,
  each saying why at the call site.
"""

from django.db import models


class UnscopedQueryError(RuntimeError):
    pass


def _tenant_id(tenant):
    return getattr(tenant, "pk", tenant)


class TenantScopedQuerySet(models.QuerySet):
    _scoped_tenant_id = None

    def _clone(self):
        clone = super()._clone()
        clone._scoped_tenant_id = self._scoped_tenant_id
        return clone

    def for_tenant(self, tenant):
        if tenant is None:
            raise UnscopedQueryError("for_tenant() needs a tenant, got None.")
        scoped = self.filter(tenant=tenant)
        scoped._scoped_tenant_id = _tenant_id(tenant)
        return scoped

    def _with_scoped_tenant(self, values: dict) -> dict:
        given = values.get("tenant", values.get("tenant_id"))
        if self._scoped_tenant_id is None:
            if given is None:
                raise UnscopedQueryError(f"{self.model.__name__} rows are created with a tenant.")
            return values
        if given is not None and str(_tenant_id(given)) != str(self._scoped_tenant_id):
            raise UnscopedQueryError(
                f"{self.model.__name__}: a queryset scoped to one tenant cannot write another's."
            )
        values = {k: v for k, v in values.items() if k not in ("tenant", "tenant_id")}
        values["tenant_id"] = self._scoped_tenant_id
        return values

    def create(self, **kwargs):
        return super().create(**self._with_scoped_tenant(kwargs))

    def get_or_create(self, defaults=None, **kwargs):
        if self._scoped_tenant_id is None and "tenant" not in kwargs and "tenant_id" not in kwargs:
            raise UnscopedQueryError(f"{self.model.__name__} rows are created with a tenant.")
        return super().get_or_create(defaults=defaults, **kwargs)

    def update_or_create(self, defaults=None, create_defaults=None, **kwargs):
        if self._scoped_tenant_id is None and "tenant" not in kwargs and "tenant_id" not in kwargs:
            raise UnscopedQueryError(f"{self.model.__name__} rows are created with a tenant.")
        return super().update_or_create(
            defaults=defaults, create_defaults=create_defaults, **kwargs
        )

    def bulk_create(self, objs, *args, **kwargs):
        objs = list(objs)
        for obj in objs:
            if obj.tenant_id is None:
                if self._scoped_tenant_id is None:
                    raise UnscopedQueryError(
                        f"{self.model.__name__} rows are created with a tenant."
                    )
                obj.tenant_id = self._scoped_tenant_id
            elif self._scoped_tenant_id is not None and str(obj.tenant_id) != str(
                self._scoped_tenant_id
            ):
                raise UnscopedQueryError(
                    f"{self.model.__name__}: a queryset scoped to one tenant cannot write "
                    "another's."
                )
        return super().bulk_create(objs, *args, **kwargs)

    def update(self, **kwargs):
        if "tenant" in kwargs or "tenant_id" in kwargs:
            raise UnscopedQueryError("Rows never move between tenants.")
        return super().update(**kwargs)


class TenantScopedManager(models.Manager.from_queryset(TenantScopedQuerySet)):
    def get_queryset(self):
        raise UnscopedQueryError(
            f"{self.model.__name__}.objects needs a tenant: use "
            f"{self.model.__name__}.objects.for_tenant(tenant), or "
            f"{self.model.__name__}.all_tenants for a deliberate cross-tenant query."
        )

    def for_tenant(self, tenant):
        return super().get_queryset().for_tenant(tenant)

    def create(self, **kwargs):
        return super().get_queryset().create(**kwargs)

    def bulk_create(self, objs, *args, **kwargs):
        return super().get_queryset().bulk_create(objs, *args, **kwargs)


class TenantOwnedModel(models.Model):
    """Base for every row that belongs to one tenant."""

    tenant = models.ForeignKey("teams.Tenant", on_delete=models.CASCADE, related_name="+")

    all_tenants = models.Manager()
    objects = TenantScopedManager()

    class Meta:
        abstract = True
        default_manager_name = "all_tenants"
