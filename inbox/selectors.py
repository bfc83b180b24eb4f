"""Reads for the inbox. Every function starts from the tenant that auth resolved."""

from collections.abc import Collection

from django.db.models import Count, Q

from core.scoping import UnscopedQueryError
from inbox.models import InboxSession, SessionStatus
from teams.models import Membership, Tenant
from teams.routing.reasons import UnassignedReason


def open_sessions_per_agent(tenant: Tenant):
    """Open sessions per agent, read from the agents' `open_session_count` (kept by the
    inbox services, repaired by `reconcile_counters`): no query."""

    def load(agents) -> dict:
        return {agent.pk: agent.open_session_count for agent in agents}

    return load


def session_for_tenant(*, tenant: Tenant, session_id) -> InboxSession | None:
    return (
        InboxSession.objects.for_tenant(tenant)
        .select_related("assigned_agent__user", "team")
        .filter(pk=session_id)
        .first()
    )


# --- The SLA dashboard (admin) ----------------------------------------------------------
# Several tenants at once: the caller passes the ids of the tenants the admin may see.


def _tenant_ids(tenant_ids: Collection) -> list:
    if tenant_ids is None:
        raise UnscopedQueryError("The dashboard's reads need the tenants they may read.")
    return list(tenant_ids)


def agent_load(*, tenant_ids: Collection) -> list[Membership]:
    """Active agents with what they hold now: `current_lead_count` (open leads) and
    `open_sessions` (annotated), against their `capacity`."""
    return list(
        Membership.all_tenants.filter(
            tenant_id__in=_tenant_ids(tenant_ids), is_active=True, user__is_active=True
        )
        .select_related("user", "tenant")
        .annotate(
            open_sessions=Count(
                "sessions",
                filter=Q(sessions__status=SessionStatus.OPEN),
            )
        )
        .order_by("tenant__name", "user__full_name", "user__email")
    )


def unassigned_sessions_by_reason(*, tenant_ids: Collection) -> list[dict]:
    """Open sessions without an agent now, counted per reason: [{"reason", "label",
    "count"}], most first. A blank reason is a session not routed yet."""
    labels = dict(UnassignedReason.choices)
    rows = (
        InboxSession.all_tenants.filter(
            tenant_id__in=_tenant_ids(tenant_ids),
            status=SessionStatus.OPEN,
            assigned_agent__isnull=True,
        )
        .values("unassigned_reason")
        .annotate(count=Count("id"))
        .order_by("-count", "unassigned_reason")
    )
    return [
        {
            "reason": row["unassigned_reason"],
            "label": labels.get(row["unassigned_reason"], "Not routed yet"),
            "count": row["count"],
        }
        for row in rows
    ]
