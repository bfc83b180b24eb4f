"""Reads for tenancy and people. Every function takes the tenant it reads from, except
`administered_tenant_ids`, which answers across tenants for one user."""

import uuid

from core.errors import NotFound
from teams.models import ADMIN_ROLES, ApiKey, Membership, Team, Tenant
from teams.routing.config import team_snapshot, tenant_row


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


def team_for_tenant(*, tenant: Tenant, team_id, field: str) -> Team:
    """The tenant's team `team_id`, or a 404 naming `field` (a team of another tenant
    does not exist for this one)."""
    team = Team.objects.for_tenant(tenant).filter(pk=team_id).first()
    if team is None:
        raise NotFound(
            code="team_not_found",
            message=f"Team {team_id} does not exist in this tenant.",
            field=field,
        )
    return team


def team_for_routing(*, tenant: Tenant, team_id) -> Team | None:
    """A team of the tenant, from the routing cache (teams.routing.config: a few seconds,
    dropped on change): no query on a hit. The engine reads its config and schedule
    from the same cache; other columns load on access."""
    try:
        team_id = uuid.UUID(str(team_id))
    except ValueError:
        return None
    snapshot = team_snapshot(getattr(tenant, "pk", tenant), team_id)
    return snapshot.as_team() if snapshot is not None else None


def tenant_for_routing(tenant_id) -> Tenant | None:
    """The tenant's row from the routing cache (a few seconds, dropped on change), for
    callers that know only its id (e.g. an API key cache)."""
    return tenant_row(tenant_id)


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
