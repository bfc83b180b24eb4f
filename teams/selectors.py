"""Reads for tenancy and people. Every function takes the tenant it reads from."""

from teams.models import ApiKey, Membership, Team, Tenant


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
