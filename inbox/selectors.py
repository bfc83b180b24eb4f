"""Reads for the inbox. Every function starts from the tenant that auth resolved."""

from django.db.models import Count

from inbox.models import InboxSession, SessionStatus
from teams.models import Tenant


def open_sessions_per_agent(tenant: Tenant):
    """The inbox's measure of load, handed to the assignment engine."""

    def load(agents) -> dict:
        rows = (
            InboxSession.objects.for_tenant(tenant)
            .filter(status=SessionStatus.OPEN, assigned_agent__in=[a.pk for a in agents])
            .values("assigned_agent")
            .annotate(open_sessions=Count("id"))
            .order_by()
        )
        return {row["assigned_agent"]: row["open_sessions"] for row in rows}

    return load


def session_for_tenant(*, tenant: Tenant, session_id) -> InboxSession | None:
    return (
        InboxSession.objects.for_tenant(tenant)
        .select_related("assigned_agent__user", "team")
        .filter(pk=session_id)
        .first()
    )
