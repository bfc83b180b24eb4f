"""Reads for the agent pages. Every query starts from the logged-in user.

A person can be an agent of several tenants, and the pages show all of their work at
once (like "My leads"). So the queries below read several tenants together: each one is
filtered by the person's own active memberships (or the tenants of those), never by
nothing, which is the same guarantee `for_tenant` gives one tenant at a time.
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby

from inbox.models import InboxSession, SessionNotice, SessionStatus
from leads.models import Notification
from teams.models import Membership, Team

# A page shows at most this many rows of each list; an agent's open conversations are
# bounded by their capacity anyway, and older notices stay in the admin.
MAX_SESSIONS = 100
MAX_NOTICES = 100

LEAD_NOTICE = "lead"
SESSION_NOTICE = "session"


def agent_memberships(*, user) -> list[Membership]:
    """The user's active memberships (their agents), tenant included, by tenant name."""
    return list(
        Membership.all_tenants.filter(user=user, is_active=True)
        .select_related("tenant")
        .order_by("tenant__name")
    )


@dataclass
class TenantConversations:
    membership: Membership
    sessions: list
    agents: list  # teammates a session can be transferred to
    teams: list


def conversations_of(*, memberships: list[Membership]) -> list[TenantConversations]:
    """The open sessions assigned to these memberships, one section per tenant, each with
    what a session can be transferred to. Three queries, however many tenants."""
    if not memberships:
        return []
    tenant_ids = [m.tenant_id for m in memberships]
    own_ids = [m.pk for m in memberships]
    sessions = list(
        InboxSession.all_tenants.filter(
            tenant_id__in=tenant_ids, assigned_agent_id__in=own_ids, status=SessionStatus.OPEN
        ).order_by("assigned_agent_id", "accepted_at", "accept_deadline", "created_at")[
            :MAX_SESSIONS
        ]
    )
    by_agent = {
        key: list(rows) for key, rows in groupby(sessions, key=lambda s: s.assigned_agent_id)
    }
    agents_by_tenant: dict = {t: [] for t in tenant_ids}
    teams_by_tenant: dict = {t: [] for t in tenant_ids}
    if sessions:  # nothing to transfer, nothing to choose from
        for agent in (
            Membership.all_tenants.filter(
                tenant_id__in=tenant_ids, is_active=True, user__is_active=True
            )
            .exclude(pk__in=own_ids)
            .select_related("user")
            .order_by("user__full_name", "user__email")
        ):
            agents_by_tenant[agent.tenant_id].append(agent)
        for team in Team.all_tenants.filter(tenant_id__in=tenant_ids).order_by("name"):
            teams_by_tenant[team.tenant_id].append(team)
    return [
        TenantConversations(
            membership=m,
            sessions=by_agent.get(m.pk, []),
            agents=agents_by_tenant[m.tenant_id],
            teams=teams_by_tenant[m.tenant_id],
        )
        for m in memberships
    ]


def conversations_version(sections: list[TenantConversations]) -> str:
    """A fingerprint of what the conversations list shows. The page's poll sends back
    the one it has; an unchanged list is not sent again, so a half-chosen Transfer
    target is not swapped away under the agent's finger."""
    parts = []
    for section in sections:
        parts.append(f"m:{section.membership.pk}")
        for s in section.sessions:
            parts.append(f"s:{s.pk}:{s.updated_at.isoformat()}:{s.accepted_at}:{s.accept_deadline}")
        parts.extend(f"a:{a.pk}:{a.presence}:{a.user.full_name}" for a in section.agents)
        parts.extend(f"t:{t.pk}:{t.name}" for t in section.teams)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass
class Notice:
    """A lead notice or a conversation notice, as the notifications page lists them."""

    kind: str  # LEAD_NOTICE or SESSION_NOTICE
    id: object
    tenant_name: str
    title: str
    body: str
    is_read: bool
    created_at: datetime
    lead_id: object = None
    session_id: object = None


def notices_of(*, user, limit: int = MAX_NOTICES) -> list[Notice]:
    """The user's latest notices of both kinds, newest first. Two queries: each kind's
    latest `limit`, merged."""
    lead_notices = (
        Notification.all_tenants.filter(recipient__user=user, recipient__is_active=True)
        .select_related("tenant")
        .order_by("-created_at")[:limit]
    )
    session_notices = (
        SessionNotice.all_tenants.filter(recipient__user=user, recipient__is_active=True)
        .select_related("tenant")
        .order_by("-created_at")[:limit]
    )
    notices = [
        Notice(
            kind=LEAD_NOTICE,
            id=n.pk,
            tenant_name=n.tenant.name,
            title=n.title,
            body=n.body,
            is_read=n.is_read,
            created_at=n.created_at,
            lead_id=n.lead_id,
        )
        for n in lead_notices
    ] + [
        Notice(
            kind=SESSION_NOTICE,
            id=n.pk,
            tenant_name=n.tenant.name,
            title=n.title,
            body=n.body,
            is_read=n.is_read,
            created_at=n.created_at,
            session_id=n.session_id,
        )
        for n in session_notices
    ]
    notices.sort(key=lambda n: n.created_at, reverse=True)
    return notices[:limit]


def notices_version(notices: list[Notice]) -> str:
    parts = [f"{n.kind}:{n.id}:{n.is_read}" for n in notices]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def unread_notice_count(*, user) -> int:
    """Unread notices of both kinds: two COUNTs, each served by the kind's partial
    index of unread notices by recipient."""
    leads = Notification.all_tenants.filter(
        recipient__user=user, recipient__is_active=True, is_read=False
    ).count()
    sessions = SessionNotice.all_tenants.filter(
        recipient__user=user, recipient__is_active=True, is_read=False
    ).count()
    return leads + sessions
