"""An agent goes away with conversations still open: the admin's "Redistribute" moves
each of them through the routing engine to someone else (never back to the agent who
left), with a fresh accept window when the tenant has one. A conversation nobody else
can take waits unassigned, with the engine's reason, so that the first agent to come
online gets it (the retry job); only an agent who is still online and active keeps it.
Each session is its own transaction: nothing is half-moved."""

from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from audit.services import build_activity, record_activities
from core.actor import Actor
from core.locking import first_locked
from core.transactions import retry_on_deadlock
from inbox.acceptance import _api_time, _give_with_window, _take_back
from inbox.models import InboxSession, SessionNoticeKind, SessionStatus
from inbox.notices import save_notices, session_notice
from inbox.services import move_session_in_pick, session_event
from teams.models import Membership, Presence, Tenant
from teams.routing import UnassignedReason, route
from teams.services import authorize_tenant_change
from webhooks import events
from webhooks.events import emit


@dataclass(frozen=True)
class SessionMove:
    session_id: str
    contact: str
    to_agent: Membership | None = None
    reason: str = ""  # the engine's reason when nobody could take it


@dataclass
class SessionsRedistribution:
    moved: list[SessionMove] = field(default_factory=list)
    # Nobody else could take them: waiting unassigned for the first agent online.
    unassigned: list[SessionMove] = field(default_factory=list)
    # Nobody else could take them, and their agent is still online: kept.
    stayed: list[SessionMove] = field(default_factory=list)
    # Closed or moved by someone else between the list and the move: left alone.
    gone: int = 0


def open_sessions_of(agent: Membership):
    """The agent's open conversations, oldest first (the order they are moved in)."""
    return (
        InboxSession.objects.for_tenant(agent.tenant_id)
        .filter(status=SessionStatus.OPEN, assigned_agent=agent)
        .select_related("team")
        .order_by("created_at", "pk")
    )


def redistribute_sessions(
    *, tenant: Tenant, agent: Membership, actor: Actor
) -> SessionsRedistribution:
    """Give each open session of `agent` to another agent the engine picks."""
    authorize_tenant_change(actor=actor, tenant=tenant)
    agent = Membership.objects.for_tenant(tenant).select_related("user").get(pk=agent.pk)
    # An agent still at work keeps what nobody else can take; taken from them, it would
    # only come back to them with the next retry.
    keeps = agent.is_active and agent.presence == Presence.ONLINE
    result = SessionsRedistribution()
    for session_id in list(open_sessions_of(agent).values_list("pk", flat=True)):
        move = _move_session(
            tenant=tenant, agent=agent, session_id=session_id, actor=actor, keeps=keeps
        )
        if move is None:
            result.gone += 1
        elif move.to_agent is not None:
            result.moved.append(move)
        elif keeps:
            result.stayed.append(move)
        else:
            result.unassigned.append(move)
    return result


@retry_on_deadlock
@transaction.atomic
def _move_session(*, tenant: Tenant, agent: Membership, session_id, actor: Actor, keeps: bool):
    session = first_locked(
        InboxSession.objects.for_tenant(tenant).filter(
            pk=session_id, status=SessionStatus.OPEN, assigned_agent=agent
        ),
        related=("team__assignment_config", "team__schedule"),
    )
    if session is None:
        return None
    session.tenant = tenant
    contact = session.contact_name or session.contact_id
    now = timezone.now()
    decision = None
    if connection.vendor == "postgresql":
        team = session.team
        decision = move_session_in_pick(
            session,
            team=team,
            exclude=[agent.pk],
            actor=actor,
            now=now,
            action="session.assigned",
            activity_data=lambda decision: {
                "previous_agent_id": str(agent.pk),
                "strategy": decision.strategy,
                "trigger": "redistribute",
                "tier": decision.tier,
                "team_id": str((decision.team or team).pk) if decision.team or team else None,
            },
            event_extra=lambda decision, given: {
                "trigger": "redistribute",
                "previousAgentId": str(agent.pk),
                "tier": decision.tier,
                "acceptDeadline": _api_time(given.accept_deadline),
            },
            notice_kind=SessionNoticeKind.SESSION_TRANSFERRED,
        )
    if decision is None:  # SQLite, or the tenant's webhook endpoints kept changing
        decision = route(
            tenant=tenant, team=session.team, work="sessions", exclude_agent_ids=[agent.pk]
        )
    move = SessionMove(
        session_id=str(session.pk),
        contact=contact,
        to_agent=decision.agent,
        reason=decision.reason or "",
    )
    if decision.attached:
        return move  # the pick wrote the move and everything about it
    if decision.agent is None and keeps:
        return move

    session.last_assignment_attempt = decision.as_record()
    session.team = decision.team or session.team
    data = {
        "previous_agent_id": str(agent.pk),
        "strategy": decision.strategy,
        "trigger": "redistribute",
    }
    if decision.agent is None:
        reason = decision.reason or UnassignedReason.NO_AGENTS
        fields = _take_back(session, reason=reason, strategy=decision.strategy, now=now)
        action, event = "session.unassigned", events.SESSION_UNASSIGNED
        data.update(reason=reason, tiers=decision.tiers)
    else:
        new_agent = decision.agent
        # The one assignment function (through the accept window's wrapper) also moves
        # both agents' open_session_count.
        fields = _give_with_window(session, new_agent, strategy=decision.strategy, now=now)
        action, event = "session.assigned", events.SESSION_ASSIGNED
        data.update(
            agent_id=str(new_agent.pk),
            agent_email=new_agent.user.email,
            tier=decision.tier,
            team_id=str(session.team_id) if session.team_id else None,
        )
        save_notices(
            [session_notice(session, new_agent, kind=SessionNoticeKind.SESSION_TRANSFERRED)]
        )
    session.save(update_fields=sorted({*fields, "last_assignment_attempt", "team", "updated_at"}))
    record_activities(
        [build_activity(tenant=tenant, action=action, actor=actor, target=session, data=data)]
    )
    extra = {"trigger": "redistribute", "previousAgentId": str(agent.pk)}
    if decision.agent is not None:
        extra.update(tier=decision.tier, acceptDeadline=_api_time(session.accept_deadline))
    emit([session_event(session, event, **extra)])
    return move
