"""The accept window for conversations, and transfers between agents.

With the tenant's window on (`session_accept_window_minutes`), a session given to an
agent carries an `accept_deadline`; the agent accepts it (the page's button, or
`POST /api/v1/sessions/<id>/accept`) before then, or the accept sweep records a miss and
hands it to someone else the engine picks, never back to anyone in `missed_agent_ids`.
After `session_accept_max_misses` misses it stays unassigned (`not_accepted`) and the
admins are told.

The sweep works in two steps, like the leads' SLA sweep:

1. One transaction per batch, set-based: the due sessions are locked with
   `FOR UPDATE SKIP LOCKED` (a racing sweep or an agent accepting right now holds them:
   they are skipped), and the miss is recorded on all of them in one statement
   (`accept_misses + 1`, the agent appended to `missed_agent_ids`, the deadline cleared),
   with the notices, activity rows and events of the whole batch. Each miss is recorded
   exactly once: a recorded session no longer matches (no deadline).
2. One transaction per session: it is moved on by the engine, if it is still as step 1
   left it. An agent who accepts in between keeps it (the miss stays recorded): accept
   wins until the sweep has moved the session.

A session whose step 2 never ran (the process died in between) is found by the next
sweep: still with the agent who missed it, no deadline, not accepted.
"""

import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from audit.services import build_activity, record_activities
from core import log_context
from core.actor import Actor
from core.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from core.locking import first_locked
from core.transactions import retry_on_deadlock
from inbox.models import InboxSession, SessionNoticeKind, SessionStatus
from inbox.notices import save_notices, session_notice
from inbox.services import _give_session_to, move_session_in_pick, session_event
from teams.models import ADMIN_ROLES, Membership, Strategy, Team, Tenant
from teams.routing import RoutingDecision, UnassignedReason, route
from webhooks import events
from webhooks.events import emit

logger = logging.getLogger(__name__)

SWEEP_BATCH_SIZE = 200
MOVED_ON_NOTICE = "Its previous agent did not accept it in time."
SWEEP_JOB = "sweep_accept_windows"
# A recorded miss whose session was not moved on within this long was left behind by a
# sweep that died between its two steps; the next sweep moves it.
STRANDED_AFTER = timedelta(minutes=1)


def accept_deadline_for(tenant: Tenant, now):
    """When a session given to an agent at `now` must be accepted; None: no window."""
    minutes = tenant.session_accept_window_minutes
    return now + timedelta(minutes=minutes) if minutes else None


def _api_time(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _give_with_window(session: InboxSession, agent: Membership, *, strategy: str, now) -> list:
    """Give the session to `agent` through the one assignment function, which also moves
    the agents' `open_session_count` and starts the new holder's accept window (the
    same rule as `accept_deadline_for`); the fields to save."""
    return sorted(_give_session_to(session, agent, strategy=strategy, now=now))


def _take_back(session: InboxSession, *, reason: str, strategy: str, now) -> list:
    """Leave the session without an agent, saying why. Through `_give_session_to`, the
    one function that sets a session's agent."""
    fields = _give_session_to(session, None, strategy=strategy, now=now)
    session.unassigned_reason = reason
    session.accept_deadline = None
    return sorted({*fields, "assigned_at", "unassigned_reason", "accept_deadline"})


def _lock_open_session(tenant: Tenant, session_id, **conditions) -> InboxSession | None:
    session = first_locked(
        InboxSession.objects.for_tenant(tenant).filter(
            pk=session_id, status=SessionStatus.OPEN, **conditions
        ),
        related=("assigned_agent__user", "team__assignment_config", "team__schedule"),
    )
    if session is not None:
        session.tenant = tenant
    return session


# --- accepting ------------------------------------------------------------------------


def session_of_agent(*, user, session_id) -> tuple[InboxSession, Membership] | None:
    """The open session `session_id` if it is assigned to one of the user's active
    memberships, with that membership: how a logged-in agent's tenant is resolved. A
    session of someone else, or of a tenant they are not in, does not exist for them."""
    session = (
        InboxSession.all_tenants.select_related("tenant", "assigned_agent__user")
        .filter(
            pk=session_id,
            status=SessionStatus.OPEN,
            assigned_agent__user=user,
            assigned_agent__is_active=True,
        )
        .first()
    )
    if session is None:
        return None
    return session, session.assigned_agent


@transaction.atomic
def accept_session(
    *, tenant: Tenant, session_id, agent: Membership, actor: Actor, now=None
) -> InboxSession:
    """The assigned agent accepts their open session: its accept window ends. Accepting
    again changes nothing. Late is fine as long as the sweep has not moved it yet."""
    now = now or timezone.now()
    session = _lock_open_session(tenant, session_id, assigned_agent=agent)
    if session is None:
        raise NotFound(code="session_not_found", message="No open session of yours has this id.")
    if session.accepted_at is not None:
        return session
    deadline = session.accept_deadline
    session.accepted_at = now
    session.accept_deadline = None
    session.save(update_fields=["accepted_at", "accept_deadline", "updated_at"])
    record_activities(
        [
            build_activity(
                tenant=tenant,
                action="session.accepted",
                actor=actor,
                target=session,
                data={
                    "agent_id": str(agent.pk),
                    "deadline": deadline.isoformat() if deadline else None,
                    "late": bool(deadline and deadline < now),
                },
            )
        ]
    )
    emit(
        [
            session_event(
                session,
                events.SESSION_ACCEPTED,
                acceptDeadline=None,
                acceptedAt=_api_time(session.accepted_at),
            )
        ]
    )
    return session


# --- transferring ---------------------------------------------------------------------


def _may_transfer(actor: Actor, tenant: Tenant, session: InboxSession) -> None:
    """The session's own agent or an admin of the tenant (or a superuser) may move it;
    for another agent of the tenant it does not exist."""
    membership = actor.membership
    user = actor.person_user
    if user is not None and user.is_superuser:
        return
    if membership is None or membership.tenant_id != tenant.pk or not membership.is_active:
        raise Forbidden(code="not_allowed", message="Only a person of this tenant may do this.")
    if membership.role in ADMIN_ROLES or session.assigned_agent_id == membership.pk:
        return
    raise NotFound(code="session_not_found", message="No open session of yours has this id.")


@retry_on_deadlock
@transaction.atomic
def transfer_session(
    *,
    tenant: Tenant,
    session_id,
    actor: Actor,
    to_agent: Membership | None = None,
    to_team: Team | None = None,
    now=None,
) -> InboxSession:
    """Move an open session to a chosen agent, or to a team through the engine (never
    back to its current agent). A person's choice of agent may be anyone active in the
    tenant, online or not: the accept window (when on) moves it on if they do not take
    it. A team where nobody can take it now refuses (409, the engine's reason) and the
    session stays where it was."""
    if (to_agent is None) == (to_team is None):
        raise InvalidInput(
            code="transfer_target", message="Give an agent or a team.", field="to_agent_id"
        )
    now = now or timezone.now()
    session = _lock_open_session(tenant, session_id)
    if session is None:
        raise NotFound(code="session_not_found", message="Open session not found.")
    _may_transfer(actor, tenant, session)
    previous = session.assigned_agent_id

    decision = None
    if to_agent is not None:
        if to_agent.tenant_id != tenant.pk or not (to_agent.is_active and to_agent.user.is_active):
            raise NotFound(code="agent_not_found", message="Agent not found.", field="to_agent_id")
        if to_agent.pk == previous:
            raise Conflict(
                code="already_assigned",
                message="The session is already with this agent.",
                field="to_agent_id",
            )
        new_agent, strategy = to_agent, Strategy.MANUAL
    else:
        if to_team.tenant_id != tenant.pk:
            raise NotFound(code="team_not_found", message="Team not found.", field="to_team_id")
        exclude = [previous] if previous else []
        if connection.vendor == "postgresql":
            decision = move_session_in_pick(
                session,
                team=to_team,
                exclude=exclude,
                actor=actor,
                now=now,
                action="session.transferred",
                activity_data=lambda decision: {
                    "previous_agent_id": str(previous) if previous else None,
                    "to_team_id": str(to_team.pk),
                    "strategy": decision.strategy,
                    "tier": decision.tier,
                },
                event_extra=lambda decision, given: {
                    "trigger": "transfer",
                    "previousAgentId": str(previous) if previous else None,
                    "acceptDeadline": _api_time(given.accept_deadline),
                },
                notice_kind=SessionNoticeKind.SESSION_TRANSFERRED,
            )
        if decision is None:  # SQLite, or the tenant's webhook endpoints kept changing
            decision = route(
                tenant=tenant, team=to_team, work="sessions", exclude_agent_ids=exclude
            )
        if decision.agent is None:
            raise Conflict(
                code="nobody_available",
                message=f"Nobody in {to_team.name} can take it now ({decision.reason}).",
                field="to_team_id",
            )
        if decision.attached:
            return session  # the pick wrote the move and everything about it
        new_agent, strategy = decision.agent, decision.strategy
        session.last_assignment_attempt = decision.as_record()
        session.team = decision.team or to_team

    fields = _give_with_window(session, new_agent, strategy=strategy, now=now)
    session.save(update_fields=[*fields, "team", "last_assignment_attempt", "updated_at"])
    if to_agent is not None:
        Membership.objects.for_tenant(tenant).filter(pk=new_agent.pk).update(last_assigned_at=now)
    save_notices([session_notice(session, new_agent, kind=SessionNoticeKind.SESSION_TRANSFERRED)])
    record_activities(
        [
            build_activity(
                tenant=tenant,
                action="session.transferred",
                actor=actor,
                target=session,
                data={
                    "agent_id": str(new_agent.pk),
                    "agent_email": new_agent.user.email,
                    "previous_agent_id": str(previous) if previous else None,
                    "to_team_id": str(to_team.pk) if to_team else None,
                    "strategy": strategy,
                    "tier": decision.tier if decision else None,
                },
            )
        ]
    )
    emit(
        [
            session_event(
                session,
                events.SESSION_ASSIGNED,
                trigger="transfer",
                previousAgentId=str(previous) if previous else None,
                acceptDeadline=_api_time(session.accept_deadline),
            )
        ]
    )
    return session


# --- the sweep ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Miss:
    session_id: object
    tenant: Tenant
    agent_id: object
    misses: int


def _admins_by_tenant(tenant_ids) -> dict:
    admins: dict = {}
    # Deliberately across the batch's tenants; each session only meets its own admins.
    for admin in Membership.all_tenants.filter(
        tenant_id__in=set(tenant_ids), role__in=ADMIN_ROLES, is_active=True, user__is_active=True
    ).select_related("user"):
        admins.setdefault(admin.tenant_id, []).append(admin)
    return admins


@transaction.atomic
def _record_miss_batch(now, batch_size: int) -> tuple[list[_Miss], bool]:
    """Step 1 for one batch: record the miss of every due session this sweep could lock.
    The same statements for 1 or `batch_size` sessions. Returns the misses and whether
    more due sessions were waiting."""
    due = InboxSession.all_tenants.filter(  # a system job across every tenant
        status=SessionStatus.OPEN,
        assigned_agent__isnull=False,
        accepted_at__isnull=True,
        accept_deadline__lte=now,
        # A tenant that turned its window off lets the deadlines still standing lapse.
        tenant__session_accept_window_minutes__isnull=False,
    )
    sessions = list(
        due.select_for_update(skip_locked=True, of=("self",))
        .select_related("tenant", "assigned_agent__user")
        .order_by("accept_deadline", "pk")[: batch_size + 1]
    )
    more = len(sessions) > batch_size
    sessions = sessions[:batch_size]
    if not sessions:
        return [], False
    deadlines = {}
    for session in sessions:
        deadlines[session.pk] = session.accept_deadline
        session.accept_misses += 1
        session.missed_agent_ids = [*session.missed_agent_ids, str(session.assigned_agent_id)]
        session.accept_deadline = None
        session.updated_at = now
    # Locked above: no one else can have recorded these misses in between.
    InboxSession.all_tenants.bulk_update(
        sessions, ["accept_misses", "missed_agent_ids", "accept_deadline", "updated_at"]
    )

    admins = _admins_by_tenant(session.tenant_id for session in sessions)
    notices = []
    for session in sessions:
        key = f"accept-missed:{session.pk}:{session.accept_misses}"
        told = {session.assigned_agent_id}
        notices.append(
            session_notice(
                session,
                session.assigned_agent,
                kind=SessionNoticeKind.ACCEPT_MISSED,
                body="It moves on to another agent.",
                dedupe_key=key,
            )
        )
        for admin in admins.get(session.tenant_id, []):
            if admin.pk in told:
                continue
            told.add(admin.pk)
            notice = session_notice(
                session,
                admin,
                kind=SessionNoticeKind.ACCEPT_MISSED,
                body=f"{session.assigned_agent.display_name or session.assigned_agent.user.email}"
                " did not accept it in time.",
                dedupe_key=key,
            )
            notice.title = f"Not accepted in time: {session.contact_name or session.contact_id}"
            notices.append(notice)
    save_notices(notices, ignore_conflicts=True)
    record_activities(
        [
            build_activity(
                tenant=session.tenant,
                action="session.accept_missed",
                actor=Actor.for_job(SWEEP_JOB),
                target=session,
                data={
                    "agent_id": str(session.assigned_agent_id),
                    "deadline": deadlines[session.pk].isoformat(),
                    "misses": session.accept_misses,
                    "max_misses": session.tenant.session_accept_max_misses,
                    "admins_notified": len(admins.get(session.tenant_id, [])),
                },
            )
            for session in sessions
        ]
    )
    emit(
        [
            session_event(
                session,
                events.SESSION_ACCEPT_MISSED,
                acceptDeadline=_api_time(deadlines[session.pk]),
                missedAgentId=str(session.assigned_agent_id),
                misses=session.accept_misses,
                maxMisses=session.tenant.session_accept_max_misses,
            )
            for session in sessions
        ]
    )
    misses = [
        _Miss(session.pk, session.tenant, session.assigned_agent_id, session.accept_misses)
        for session in sessions
    ]
    return misses, more


@retry_on_deadlock
@transaction.atomic
def _move_on(miss: _Miss, now) -> str:
    """Step 2 for one session: give it to another agent by the engine, or leave it
    unassigned (nobody eligible: the engine's reason; too many misses: not_accepted).
    Only if it is still as step 1 left it; returns what happened."""
    tenant = miss.tenant
    session = _lock_open_session(
        tenant,
        miss.session_id,
        assigned_agent_id=miss.agent_id,
        accepted_at__isnull=True,
        accept_deadline__isnull=True,
        accept_misses=miss.misses,
    )
    if session is None:
        return "left"  # accepted late, closed or moved by someone in the meantime
    actor = Actor.for_job(SWEEP_JOB)
    previous = session.assigned_agent_id
    if session.accept_misses >= tenant.session_accept_max_misses:
        decision = None
        fields = _take_back(
            session, reason=UnassignedReason.NOT_ACCEPTED, strategy=session.strategy, now=now
        )
    else:
        decision = None
        if connection.vendor == "postgresql":
            decision = move_session_in_pick(
                session,
                team=session.team,
                exclude=session.missed_agent_ids,
                actor=actor,
                now=now,
                action="session.assigned",
                activity_data=lambda decision: {
                    "previous_agent_id": str(previous),
                    "trigger": "accept_missed",
                    "strategy": decision.strategy,
                    "tier": decision.tier,
                    "excluded_agent_ids": list(session.missed_agent_ids),
                },
                event_extra=lambda decision, given: {
                    "tier": decision.tier,
                    "previousAgentId": str(previous),
                    "acceptDeadline": _api_time(given.accept_deadline),
                },
                notice_kind=SessionNoticeKind.SESSION_ASSIGNED,
                notice_body=MOVED_ON_NOTICE,
                dedupe_key=f"assigned:{session.pk}:{session.accept_misses}",
            )
            if decision is not None and decision.attached:
                return "reassigned"  # the pick wrote the move and everything about it
        if decision is None:  # SQLite, or the tenant's webhook endpoints kept changing
            decision = route(
                tenant=tenant,
                team=session.team,
                work="sessions",
                exclude_agent_ids=session.missed_agent_ids,
            )
        session.last_assignment_attempt = decision.as_record()
        session.team = decision.team or session.team
        if decision.agent is not None:
            fields = _give_with_window(session, decision.agent, strategy=decision.strategy, now=now)
        else:
            fields = _take_back(
                session,
                reason=decision.reason or UnassignedReason.NO_AGENTS,
                strategy=decision.strategy,
                now=now,
            )
    session.save(update_fields=[*fields, "team", "last_assignment_attempt", "updated_at"])
    new_agent = decision.agent if decision is not None else None
    _tell_and_record(session, decision, previous=previous, actor=actor)
    if new_agent is not None:
        return "reassigned"
    return "not_accepted" if decision is None else "unassigned"


def _tell_and_record(
    session: InboxSession, decision: RoutingDecision | None, *, previous, actor: Actor
) -> None:
    tenant = session.tenant
    agent = session.assigned_agent
    data = {"previous_agent_id": str(previous), "trigger": "accept_missed"}
    if agent is not None:
        notices = [
            session_notice(
                session,
                agent,
                kind=SessionNoticeKind.SESSION_ASSIGNED,
                body=MOVED_ON_NOTICE,
                dedupe_key=f"assigned:{session.pk}:{session.accept_misses}",
            )
        ]
        activity = build_activity(
            tenant=tenant,
            action="session.assigned",
            actor=actor,
            target=session,
            data={
                **data,
                "agent_id": str(agent.pk),
                "agent_email": agent.user.email,
                "strategy": decision.strategy,
                "tier": decision.tier,
                "excluded_agent_ids": list(session.missed_agent_ids),
            },
        )
        event = session_event(
            session,
            events.SESSION_ASSIGNED,
            tier=decision.tier,
            previousAgentId=str(previous),
            acceptDeadline=_api_time(session.accept_deadline),
        )
    else:
        notices = []
        if decision is None:  # not_accepted: the admins decide now
            notices = [
                session_notice(
                    session,
                    admin,
                    kind=SessionNoticeKind.NOT_ACCEPTED,
                    body=f"{session.accept_misses} agents in a row did not accept it. "
                    "Assign it by hand.",
                    dedupe_key=f"not-accepted:{session.pk}:{session.accept_misses}",
                )
                for admin in _admins_by_tenant([tenant.pk]).get(tenant.pk, [])
            ]
        activity = build_activity(
            tenant=tenant,
            action="session.unassigned",
            actor=actor,
            target=session,
            data={
                **data,
                "reason": session.unassigned_reason,
                "misses": session.accept_misses,
                "strategy": session.strategy,
                "tiers": decision.tiers if decision else [],
            },
        )
        event = session_event(session, events.SESSION_UNASSIGNED, previousAgentId=str(previous))
    save_notices(notices, ignore_conflicts=True)
    record_activities([activity])
    emit([event])


def _stranded(now, limit: int) -> list[_Miss]:
    """Recorded misses a dead sweep did not move on: still with the agent who missed
    (the last of `missed_agent_ids`), no deadline, not accepted, window still on."""
    rows = (
        InboxSession.all_tenants.filter(  # a system job across every tenant
            status=SessionStatus.OPEN,
            assigned_agent__isnull=False,
            accepted_at__isnull=True,
            accept_deadline__isnull=True,
            accept_misses__gt=0,
            tenant__session_accept_window_minutes__isnull=False,
            updated_at__lt=now - STRANDED_AFTER,
        )
        .select_related("tenant")
        .order_by("updated_at")[:limit]
    )
    return [
        _Miss(row.pk, row.tenant, row.assigned_agent_id, row.accept_misses)
        for row in rows
        if row.missed_agent_ids and row.missed_agent_ids[-1] == str(row.assigned_agent_id)
    ]


def sweep_accept_windows(*, now=None, batch_size: int = SWEEP_BATCH_SIZE) -> dict:
    """Periodic job across tenants: record every missed accept window once, then move
    each missed session on. Returns counts: `missed`, `reassigned`, `unassigned`,
    `not_accepted`, `left` (accepted late or moved by someone meanwhile)."""
    now = now or timezone.now()
    counts = dict.fromkeys(("missed", "reassigned", "unassigned", "not_accepted", "left"), 0)
    misses = _stranded(now, batch_size)
    while True:
        batch, more = _record_miss_batch(now, batch_size)
        counts["missed"] += len(batch)
        misses += batch
        for miss in misses:
            fields = {"tenant_id": str(miss.tenant.pk), "session_id": str(miss.session_id)}
            try:
                with log_context.bound(**fields):
                    counts[_move_on(miss, now)] += 1
            except (DomainError, DatabaseError):
                # The miss is recorded and the people told; one session that cannot be
                # moved (its transaction rolled back) must not stop the sweep. The next
                # sweep finds it (stranded).
                logger.exception(
                    "Moving session %s on after a missed accept failed",
                    miss.session_id,
                    extra=fields,
                )
        misses = []
        if not more:
            break
    return counts
