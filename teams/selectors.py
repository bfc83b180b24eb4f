"""Reads for tenancy and people. Every function takes the tenant it reads from, except
`administered_tenant_ids`, which answers across tenants for one user."""

from teams.models import ADMIN_ROLES, ApiKey, Membership, Team, Tenant


def api_keys_for_tenant(*, tenant: Tenant, include_revoked: bool = False) -> list[ApiKey]:
    keys = ApiKey.objects.for_tenant(tenant).order_by("-created_at")
    if not include_revoked:
        keys = keys.filter(is_active=True)
    return list(keys)


def active_agents(*, tenant: Tenant):
    return (
        Membership.objects.for_tenant(tenant)
        .filter(is_active=True, user__is_active=True)
        .select_related("user")
    )


def team_for_tenant(*, tenant: Tenant, team_id) -> Team | None:
    return Team.objects.for_tenant(tenant).filter(pk=team_id).first()


def team_for_routing(*, tenant: Tenant, team_id) -> Team | None:
    """A team of the tenant with what the assignment engine reads of it, in one query."""
    return (
        Team.objects.for_tenant(tenant)
        .select_related("assignment_config", "schedule")
        .filter(pk=team_id)
        .first()
    )


def administered_tenant_ids(user) -> list:
    """Ids of the tenants where `user` is an active admin or super_admin (the Django
    admin's tenant scope; see core.admin_scope)."""
    # Deliberately cross-tenant: one user's memberships in every tenant.
    memberships = Membership.all_tenants.filter(user=user, role__in=ADMIN_ROLES, is_active=True)
    return list(memberships.values_list("tenant_id", flat=True))


def tenant_admin_emails(tenant_id) -> list[str]:
    """Addresses of the tenant's active admins and super admins (who get told of trouble)."""
    return list(
        Membership.objects.for_tenant(tenant_id)
        .filter(role__in=ADMIN_ROLES, is_active=True, user__is_active=True)
        .exclude(user__email="")
        .order_by("user__email")
        .values_list("user__email", flat=True)
    )
