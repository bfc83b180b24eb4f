"""Tenant-scoped Django admin.

Superusers see everything. A staff user who administers some tenants sees, and acts on,
only those tenants' rows: in every list, change page, action, autocomplete and
foreign-key choice. Anything else answers as if it did not exist. Every ModelAdmin of a
tenant-owned model inherits `TenantScopedAdmin`.

Who administers which tenant is the tenancy app's business (memberships and roles), and
core imports no app. So the tenancy app registers it once, in its AppConfig.ready(),
with `register_admin_tenancy`. A registered resolver, rather than
`apps.get_model(...)` here, keeps that knowledge (model, fields, roles) in one place,
where it is defined, and keeps the dependency pointing down, where the import checks
can see it.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db import models

from core import log_context

_CACHE_ATTR = "_admin_tenant_ids"


@dataclass(frozen=True)
class AdminTenancy:
    tenant_model: type[models.Model]
    # The ids of the tenants an active, staff, non-superuser user administers.
    administered_tenant_ids: Callable[[object], Iterable]
    # How a user row reaches the tenants it belongs to, for user choices: a lookup path
    # to a tenant id, e.g. "memberships__tenant_id".
    user_tenant_lookup: str


_tenancy: AdminTenancy | None = None


def register_admin_tenancy(tenancy: AdminTenancy) -> None:
    global _tenancy
    _tenancy = tenancy


def _registered() -> AdminTenancy:
    if _tenancy is None:
        raise ImproperlyConfigured(
            "No admin tenancy registered: the tenancy app calls "
            "core.admin_scope.register_admin_tenancy() in its AppConfig.ready()."
        )
    return _tenancy


def admin_tenant_ids(request) -> set | None:
    """Tenant ids the user administers; None means every tenant (superuser)."""
    user = request.user
    if not user.is_active or not user.is_staff:
        return set()
    if user.is_superuser:
        return None
    if not hasattr(request, _CACHE_ATTR):
        setattr(request, _CACHE_ATTR, set(_registered().administered_tenant_ids(user)))
    return getattr(request, _CACHE_ATTR)


def scope_to_admin_tenants(queryset, request, tenant_path: str = "tenant"):
    tenant_ids = admin_tenant_ids(request)
    if tenant_ids is None:
        return queryset
    lookup = "pk__in" if tenant_path == "pk" else f"{tenant_path}__in"
    return queryset.filter(**{lookup: tenant_ids})


def require_admin_of(request, tenant_id) -> None:
    tenant_ids = admin_tenant_ids(request)
    if tenant_ids is not None and tenant_id not in tenant_ids:
        raise PermissionDenied


def tenant_of_selection(model_admin, request, rows: list, noun: str):
    """The one tenant of an action's selected rows, or None after telling the user why
    not (nothing selected, or rows of several tenants)."""
    if not rows:
        model_admin.message_user(request, f"No {noun} selected.", messages.WARNING)
        return None
    if len({row.tenant_id for row in rows}) > 1:
        model_admin.message_user(
            request,
            f"The selected {noun} belong to several tenants. "
            f"Select {noun} of one tenant at a time.",
            messages.ERROR,
        )
        return None
    tenant = rows[0].tenant
    require_admin_of(request, tenant.pk)
    log_context.bind(tenant_id=tenant.pk)  # the action's log lines name the tenant
    return tenant


class TenantScopedAdmin(admin.ModelAdmin):
    """Rows, choices and permissions limited to the tenants the user administers."""

    tenant_path = "tenant"  # how this model reaches its tenant ("pk" for Tenant itself)
    tenant_admins_may_add = True
    tenant_admins_may_delete = True

    def _is_tenant_admin(self, request) -> bool:
        tenant_ids = admin_tenant_ids(request)
        return tenant_ids is None or bool(tenant_ids)

    def get_queryset(self, request):
        return scope_to_admin_tenants(super().get_queryset(request), request, self.tenant_path)

    # Tenant admins have no Django model permissions; their tenant role is the permission.
    def has_module_permission(self, request):
        return self._is_tenant_admin(request)

    def has_view_permission(self, request, obj=None):
        return self._is_tenant_admin(request) and self._may_touch(request, obj)

    def has_change_permission(self, request, obj=None):
        return self._is_tenant_admin(request) and self._may_touch(request, obj)

    def has_add_permission(self, request):
        if request.user.is_superuser:
            return True
        return self.tenant_admins_may_add and self._is_tenant_admin(request)

    def has_delete_permission(self, request, obj=None):
        if request.user.is_superuser:
            return True
        return (
            self.tenant_admins_may_delete
            and self._is_tenant_admin(request)
            and self._may_touch(request, obj)
        )

    def _may_touch(self, request, obj) -> bool:
        if obj is None:
            return True
        tenant_ids = admin_tenant_ids(request)
        if tenant_ids is None:
            return True
        tenant_id = obj.pk if self.tenant_path == "pk" else obj.tenant_id
        return tenant_id in tenant_ids

    def get_readonly_fields(self, request, obj=None):
        # Rows never move between tenants.
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None and self.tenant_path == "tenant" and "tenant" not in fields:
            fields.append("tenant")
        return fields

    def get_list_filter(self, request):
        # A plain related-field filter lists every row of the related table (every
        # tenant's name, every team): offer only values the scoped rows use.
        scoped = []
        for entry in super().get_list_filter(request):
            if isinstance(entry, str) and "__" not in entry:
                field = self.model._meta.get_field(entry)
                if field.is_relation:
                    entry = (entry, admin.RelatedOnlyFieldListFilter)
            scoped.append(entry)
        return scoped

    def get_autocomplete_fields(self, request):
        # Users and tenants are superuser-administered: tenant admins get plain, scoped
        # selects instead of autocompletes that would need those admins.
        fields = super().get_autocomplete_fields(request)
        if request.user.is_superuser:
            return fields
        return [f for f in fields if f not in ("user", "tenant")]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is not None:
            field.queryset = _scoped_choices(field.queryset, request)
        return field

    def formfield_for_manytomany(self, db_field, request, **kwargs):
        field = super().formfield_for_manytomany(db_field, request, **kwargs)
        if field is not None:
            field.queryset = _scoped_choices(field.queryset, request)
        return field

    def get_inline_instances(self, request, obj=None):
        return [
            inline
            for inline in super().get_inline_instances(request, obj)
            if obj is None or self._may_touch(request, obj)
        ]


def _scoped_choices(queryset, request):
    model = queryset.model
    if model is _registered().tenant_model:
        return scope_to_admin_tenants(queryset, request, "pk")
    if model is get_user_model():
        tenant_ids = admin_tenant_ids(request)
        if tenant_ids is None:
            return queryset
        lookup = f"{_registered().user_tenant_lookup}__in"
        return queryset.filter(**{lookup: tenant_ids}).distinct()
    if any(f.name == "tenant" for f in model._meta.concrete_fields):
        return scope_to_admin_tenants(queryset, request, "tenant")
    return queryset


class TenantScopedInline:
    """Mixin for inlines: their FK choices are scoped like the parent's."""

    def get_autocomplete_fields(self, request):
        fields = super().get_autocomplete_fields(request)
        if request.user.is_superuser:
            return fields
        return [f for f in fields if f not in ("user", "tenant")]

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if field is not None:
            field.queryset = _scoped_choices(field.queryset, request)
        return field

    def has_view_permission(self, request, obj=None):
        return admin_tenant_ids(request) is None or bool(admin_tenant_ids(request))

    def has_change_permission(self, request, obj=None):
        return self.has_view_permission(request, obj)

    def has_add_permission(self, request, obj=None):
        return self.has_view_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return self.has_view_permission(request, obj)


class ReadOnlyAdminMixin:
    """Rows written only by services (history, logs, delivery attempts): the admin shows
    them and never adds, edits or deletes one. Put it first among the bases."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
