"""Writes for the inbox: handover, (re)assignment of sessions, closing them.

Handover flow: the API key gave us the tenant → get or create the contact's
open session → run assignment if the session has no agent → queue the confirmation
message in the same transaction (only on a channel that has a sender, and on a reused
session only when its agent changed or the tenant's quiet period passed). A failed
message never undoes an assignment.
"""

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from django.db import connection, transaction
from django.db.models.constants import OnConflict
from django.db.models.sql import InsertQuery
from django.utils import timezone
from rest_framework import serializers

from audit.services import build_activity, record_activities
from core import log_context
from core.actor import Actor
from core.errors import NotFound, Unprocessable
from inbox.channels import confirmation_sender
from inbox.models import ConfirmationSkipReason, HandoverRequest, InboxSession, SessionStatus
from inbox.selectors import open_sessions_per_agent
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import build_message, queue_messages
from teams.models import Membership, Strategy, Team, Tenant
from teams.routing import RoutingDecision, UnassignedReason, route
from teams.selectors import team_for_routing
from webhooks import events
from webhooks.events import Event, emit

logger = logging.getLogger(__name__)

DEFAULT_HANDOVER_MESSAGE = "Connecting you to an agent..."
IDEMPOTENCY_WINDOW = timedelta(hours=24)
UNASSIGNED_WARNING = (
    "Handover session {session_id} left unassigned. Strategy={strategy}, "
    "availableAgents={available} (tenantId={tenant_id}, teamId={team_id}). "
    'Check: strategy is "manual", team has no members, or tenant has no '
    "member/admin/super_admin roles."
)


@dataclass(frozen=True)
class HandoverOutcome:
    status_code: int  # 201 new session, 200 open session reused
    body: dict
    replayed: bool = False


def request_fingerprint(payload) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _claim_idempotency_key(*, tenant: Tenant, key: str, fingerprint: str):
    """Own `key` for this request, or return the first request's outcome to replay.

    The INSERT … ON CONFLICT DO NOTHING waits for a concurrent request holding the same
    key to commit (or roll back), so duplicates in flight execute once.
    """
    requests = HandoverRequest.objects.for_tenant(tenant)
    requests.filter(key=key, created_at__lt=timezone.now() - IDEMPOTENCY_WINDOW).delete()
    mine = HandoverRequest(tenant=tenant, key=key, request_hash=fingerprint)
    requests.bulk_create([mine], ignore_conflicts=True)
    record = requests.get(key=key)
    if record.pk == mine.pk:
        return record
    if record.request_hash != fingerprint:
        raise Unprocessable(
            code="idempotency_key_reused",
            message="This Idempotency-Key was used with a different request body.",
            field="Idempotency-Key",
        )
    return HandoverOutcome(record.response_status, record.response_body, replayed=True)


def _team_of_tenant(*, tenant: Tenant, team_id) -> Team:
    team = team_for_routing(tenant=tenant, team_id=team_id)
    if team is None:
        raise NotFound(
            code="team_not_found",
            message=f"Team {team_id} does not exist in this tenant.",
            field="teamId",
        )
    return team


def _lock_open_session(*, tenant: Tenant, contact_id: str, channel: str) -> InboxSession:
    return (
        InboxSession.objects.for_tenant(tenant)
        .select_for_update(of=("self",))
        .select_related("assigned_agent__user", "team", "confirmation_message")
        .get(contact_id=contact_id, channel=channel, status=SessionStatus.OPEN)
    )


def _insert_unless_conflicting(obj) -> bool:
    """INSERT … ON CONFLICT DO NOTHING RETURNING pk: whether the row went in.

    Django's bulk_create(ignore_conflicts=True) cannot say whether the row was inserted,
    which would cost a second query on every new session. A concurrent insert of the same
    open session makes this wait for that transaction, then insert nothing.
    """
    model = type(obj)
    query = InsertQuery(model, on_conflict=OnConflict.IGNORE)
    query.insert_values(model._meta.local_concrete_fields, [obj])
    ((sql, params),) = query.get_compiler(connection=connection).as_sql()
    pk_column = connection.ops.quote_name(model._meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(f"{sql} RETURNING {pk_column}", params)
        return cursor.fetchone() is not None


def _get_or_create_open_session(
    *, tenant: Tenant, contact_id: str, channel: str, name: str, context: dict, team: Team | None
) -> tuple[InboxSession, bool]:
    """At most one open session per (tenant, contact, channel): the partial unique index
    decides the race, and the loser waits for the winner and reuses its session."""
    candidate = InboxSession(
        tenant=tenant,
        contact_id=contact_id,
        channel=channel,
        contact_name=name,
        context=context,
        team=team,
    )
    if _insert_unless_conflicting(candidate):
        candidate._state.adding = False
        return candidate, True
    session = _lock_open_session(tenant=tenant, contact_id=contact_id, channel=channel)
    session.tenant = tenant
    return session, False


# The one way a session gets an agent, whether the engine chose them (handover, retry,
# an agent back online) or a person did (the admin's "Assign to…").
GIVEN_FIELDS = ["assigned_agent", "assigned_at", "unassigned_reason", "strategy"]


def _give_session_to(session: InboxSession, agent: Membership, *, strategy: str, now) -> list:
    session.assigned_agent = agent
    session.assigned_at = now
    session.unassigned_reason = ""
    session.strategy = strategy
    return list(GIVEN_FIELDS)


def _apply_decision(session: InboxSession, decision: RoutingDecision, now) -> list[str]:
    session.last_assignment_attempt = decision.as_record()
    session.team = decision.team or session.team
    if decision.agent is not None:
        _give_session_to(session, decision.agent, strategy=decision.strategy, now=now)
    else:
        session.strategy = decision.strategy
        session.unassigned_reason = decision.reason or UnassignedReason.NO_AGENTS
    return ["last_assignment_attempt", "team", *GIVEN_FIELDS]


def _assignment_activity(session: InboxSession, decision: RoutingDecision, actor: Actor):
    if decision.agent is not None:
        return build_activity(
            tenant=session.tenant,
            action="session.assigned",
            actor=actor,
            target=session,
            data={
                "agent_id": str(decision.agent.pk),
                "agent_email": decision.agent.user.email,
                "strategy": decision.strategy,
                "tier": decision.tier,
                "team_id": str(decision.team.pk) if decision.team else None,
            },
        )
    return build_activity(
        tenant=session.tenant,
        action="session.unassigned",
        actor=actor,
        target=session,
        data={
            "reason": session.unassigned_reason,
            "strategy": decision.strategy,
            "tiers": decision.tiers,
            "available_agents": decision.available_agents,
        },
    )


def _warn_unassigned(session: InboxSession, decision: RoutingDecision, requested_team) -> None:
    logger.warning(
        UNASSIGNED_WARNING.format(
            session_id=session.pk,
            strategy=decision.strategy,
            available=decision.available_agents,
            tenant_id=session.tenant_id,
            team_id=requested_team.pk if requested_team else "none",
        )
    )


_API_DATETIME = serializers.DateTimeField()  # "…Z", as the sessions API writes times


def session_event(session: InboxSession, event_type: str, **extra) -> Event:
    """A webhook event about a session: the session as the handover answer shows it, plus
    its contact, channel and state, plus the event's own fields."""
    data = handover_body(
        session,
        created=event_type == events.SESSION_CREATED,
        confirmation="queued" if session.confirmation_message_id else "skipped",
    )
    data.update(
        contactId=session.contact_id,
        channel=session.channel,
        sessionStatus=session.status,
        closedAt=_API_DATETIME.to_representation(session.closed_at) if session.closed_at else None,
        **extra,
    )
    return Event(
        tenant_id=session.tenant_id,
        type=event_type,
        data=data,
        subject_id=str(session.pk),
        tenant=session.tenant if InboxSession.tenant.is_cached(session) else None,
    )


def _routing_event(session: InboxSession, decision: RoutingDecision) -> Event:
    if decision.agent is not None:
        return session_event(session, events.SESSION_ASSIGNED, tier=decision.tier)
    return session_event(session, events.SESSION_UNASSIGNED)


def handover_body(session: InboxSession, *, created: bool, confirmation: str) -> dict:
    agent = session.assigned_agent
    return {
        "sessionId": str(session.pk),
        "sessionCreated": created,
        "status": "assigned" if agent else "unassigned",
        "assignedAgent": (
            {"id": str(agent.pk), "name": agent.display_name, "email": agent.user.email}
            if agent
            else None
        ),
        "teamId": str(session.team_id) if session.team_id else None,
        "strategy": session.strategy or None,
        "unassignedReason": session.unassigned_reason or None,
        "confirmationMessage": confirmation,
    }


def _queue_confirmation(
    session: InboxSession, *, created: bool, send_message: bool, text: str, now
) -> tuple[str, str]:
    """Queue the "Connecting you to an agent..." message if it is due: ("queued", "")
    or ("skipped", why). Sets the session's fields; the caller saves them."""
    if not send_message:
        return "skipped", ConfirmationSkipReason.NOT_REQUESTED
    sender = confirmation_sender(session.channel)
    if sender is None:
        return "skipped", ConfirmationSkipReason.NO_SENDER_FOR_CHANNEL
    previous = None if created else session.confirmation_message
    if previous is not None and not previous.is_final:
        return "queued", ""  # the one still on its way confirms this handover too
    if previous is not None and _confirmed_recently(session, previous, now):
        return "skipped", ConfirmationSkipReason.RECENTLY_SENT
    message = build_message(
        tenant=session.tenant,
        channel=sender,
        kind="handover.confirmation",
        target=session.contact_id,
        payload={"session_id": str(session.pk), "text": text},
        now=now,
    )
    queue_messages([message])
    session.confirmation_message = message
    session.confirmation_skipped_reason = ""
    return "queued", ""


def _confirmed_recently(session: InboxSession, previous: OutboundMessage, now) -> bool:
    """The contact got a confirmation within the tenant's quiet period and the session's
    agent is still the one it had then: a second "Connecting you..." would say nothing
    new. Only a reused session gets here, its message loaded with it: no query."""
    if previous.status != MessageStatus.SENT:
        return False  # a failed one never reached the contact
    if session.assigned_at is not None and session.assigned_at > previous.created_at:
        return False  # assigned (or moved) since: the contact hears of the new agent
    sent_at = previous.finished_at or previous.created_at
    # A quiet period of 0 is never "recent": every handover confirms.
    quiet = timedelta(seconds=session.tenant.confirmation_quiet_period_seconds)
    return now - sent_at < quiet


@transaction.atomic
def handover(
    *,
    tenant: Tenant,
    actor: Actor,
    contact_id: str,
    channel: str,
    name: str = "",
    context: dict | None = None,
    team_id=None,
    send_message: bool = True,
    message_text: str = "",
    idempotency_key: str | None = None,
    payload_for_idempotency=None,
) -> HandoverOutcome:
    """Hand a contact's conversation over to a human agent: get or create the open
    session, assign it if it has no agent, queue the confirmation after commit."""
    idempotency_record = None
    if idempotency_key:
        claim = _claim_idempotency_key(
            tenant=tenant,
            key=idempotency_key,
            fingerprint=request_fingerprint(payload_for_idempotency),
        )
        if isinstance(claim, HandoverOutcome):
            return claim
        idempotency_record = claim

    team = _team_of_tenant(tenant=tenant, team_id=team_id) if team_id else None
    session, created = _get_or_create_open_session(
        tenant=tenant,
        contact_id=contact_id,
        channel=channel,
        name=name,
        context=context or {},
        team=team,
    )
    log_context.bind(tenant_id=tenant.pk, session_id=session.pk)  # on every later line
    now = timezone.now()
    changed: list[str] = []
    activities = []
    if created:
        activities.append(
            build_activity(
                tenant=tenant,
                action="session.created",
                actor=actor,
                target=session,
                data={"contact_id": contact_id, "channel": channel},
            )
        )
    else:
        if name and name != session.contact_name:
            session.contact_name = name
            changed.append("contact_name")
        if context is not None and context != session.context:
            session.context = context
            changed.append("context")

    routed = None
    if session.assigned_agent_id is None:
        if team is not None and session.team_id != team.pk:
            session.team = team
        routing_team = team or session.team
        decision = route(
            tenant=tenant, team=routing_team, load=open_sessions_per_agent(tenant), work="sessions"
        )
        routed = decision
        changed += _apply_decision(session, decision, now)
        activities.append(_assignment_activity(session, decision, actor))
        if decision.agent is None:
            _warn_unassigned(session, decision, routing_team)

    confirmation_before = (session.confirmation_message_id, session.confirmation_skipped_reason)
    confirmation, skipped_reason = _queue_confirmation(
        session,
        created=created,
        send_message=send_message,
        text=message_text or DEFAULT_HANDOVER_MESSAGE,
        now=now,
    )
    if skipped_reason and session.confirmation_message_id is None:
        # The session shows (admin, diagnostics) why it has no confirmation.
        session.confirmation_skipped_reason = skipped_reason
    if (session.confirmation_message_id, session.confirmation_skipped_reason) != (
        confirmation_before
    ):
        changed += ["confirmation_message", "confirmation_skipped_reason"]

    if changed:
        session.updated_at = now
        session.save(update_fields=sorted({*changed, "updated_at"}))
    record_activities(activities)
    webhook_events = [session_event(session, events.SESSION_CREATED)] if created else []
    if routed is not None:
        webhook_events.append(_routing_event(session, routed))
    emit(webhook_events)

    body = handover_body(session, created=created, confirmation=confirmation)
    body["confirmationSkippedReason"] = str(skipped_reason) if skipped_reason else None
    outcome = HandoverOutcome(status_code=201 if created else 200, body=body)
    if idempotency_record is not None:
        idempotency_record.session = session
        idempotency_record.response_status = outcome.status_code
        idempotency_record.response_body = outcome.body
        idempotency_record.save(update_fields=["session", "response_status", "response_body"])
    return outcome


@transaction.atomic
def run_session_assignment(
    *, tenant: Tenant, session_id, actor: Actor, trigger: str, skip_locked: bool = False
) -> InboxSession | None:
    """Route an open, unassigned session again (periodic retry, agent back, admin).

    Returns the session, or None when it is gone, closed, already assigned, or (with
    `skip_locked`) being handled by someone else right now.
    """
    sessions = InboxSession.objects.for_tenant(tenant).select_for_update(
        skip_locked=skip_locked, of=("self",)
    )
    session = (
        sessions.select_related("team__assignment_config", "team__schedule")
        .filter(pk=session_id, status=SessionStatus.OPEN, assigned_agent__isnull=True)
        .first()
    )
    if session is None:
        return None
    session.tenant = tenant
    decision = route(
        tenant=tenant, team=session.team, load=open_sessions_per_agent(tenant), work="sessions"
    )
    previous_reason = session.unassigned_reason
    fields = _apply_decision(session, decision, timezone.now())
    session.save(update_fields=[*fields, "updated_at"])
    if decision.agent is not None or session.unassigned_reason != previous_reason:
        activity = _assignment_activity(session, decision, actor)
        activity.data["trigger"] = trigger
        record_activities([activity])
        emit([_routing_event(session, decision)])
    return session


@transaction.atomic
def assign_session_to(
    *, tenant: Tenant, session_id, agent: Membership, actor: Actor
) -> InboxSession:
    """A person assigns (or moves) an open session to a chosen agent."""
    if agent.tenant_id != tenant.pk or not agent.is_active:
        raise NotFound(code="agent_not_found", message="Agent not found.", field="agent")
    session = (
        InboxSession.objects.for_tenant(tenant)
        .select_for_update()
        .filter(pk=session_id, status=SessionStatus.OPEN)
        .first()
    )
    if session is None:
        raise NotFound(code="session_not_found", message="Open session not found.")
    session.tenant = tenant
    previous = session.assigned_agent_id
    now = timezone.now()
    fields = _give_session_to(session, agent, strategy=Strategy.MANUAL, now=now)
    session.save(update_fields=[*fields, "updated_at"])
    Membership.objects.for_tenant(tenant).filter(pk=agent.pk).update(last_assigned_at=now)
    record_activities(
        [
            build_activity(
                tenant=tenant,
                action="session.assigned",
                actor=actor,
                target=session,
                data={
                    "agent_id": str(agent.pk),
                    "agent_email": agent.user.email,
                    "strategy": "manual",
                    "previous_agent_id": str(previous) if previous else None,
                },
            )
        ]
    )
    emit(
        [
            session_event(
                session,
                events.SESSION_ASSIGNED,
                previousAgentId=str(previous) if previous else None,
            )
        ]
    )
    return session


@transaction.atomic
def close_session(*, tenant: Tenant, session_id, actor: Actor) -> InboxSession:
    session = (
        InboxSession.objects.for_tenant(tenant).select_for_update().filter(pk=session_id).first()
    )
    if session is None:
        raise NotFound(code="session_not_found", message="Session not found.")
    session.tenant = tenant
    if session.status == SessionStatus.OPEN:
        session.status = SessionStatus.CLOSED
        session.closed_at = timezone.now()
        session.save(update_fields=["status", "closed_at", "updated_at"])
        record_activities(
            [build_activity(tenant=tenant, action="session.closed", actor=actor, target=session)]
        )
        emit([session_event(session, events.SESSION_CLOSED)])
    return session


def retry_unassigned_sessions(*, tenant_id=None, limit: int = 100) -> dict:
    """Route open unassigned sessions again, least recently tried first, skipping
    `manual` ones.

    A system job across tenants (or one tenant, when an agent of it became available).
    Each session is its own transaction; sessions locked by another worker are skipped.
    """
    pending = InboxSession.all_tenants.filter(
        status=SessionStatus.OPEN, assigned_agent__isnull=True
    ).exclude(unassigned_reason=UnassignedReason.MANUAL_STRATEGY)
    if tenant_id is not None:
        pending = pending.filter(tenant_id=tenant_id)
    # Least recently tried first: every attempt touches updated_at, so sessions nobody
    # can take yet rotate to the back instead of blocking the ones behind them.
    rows = list(pending.order_by("updated_at").values_list("pk", "tenant_id")[:limit])
    tenants = Tenant.objects.in_bulk({tenant for _, tenant in rows})
    summary = {"checked": 0, "assigned": 0, "skipped_manual": 0}
    for session_id, session_tenant_id in rows:
        tenant = tenants[session_tenant_id]
        summary["checked"] += 1
        session = run_session_assignment(
            tenant=tenant,
            session_id=session_id,
            actor=Actor.for_job("retry_unassigned_sessions"),
            trigger="retry",
            skip_locked=True,
        )
        if session is not None and session.assigned_agent_id:
            summary["assigned"] += 1
        elif session is not None and session.unassigned_reason == UnassignedReason.MANUAL_STRATEGY:
            summary["skipped_manual"] += 1
    return summary


def purge_expired_idempotency_keys() -> int:
    """System job: forget Idempotency-Keys older than 24 hours."""
    cutoff = timezone.now() - IDEMPOTENCY_WINDOW
    deleted, _ = HandoverRequest.all_tenants.filter(created_at__lt=cutoff).delete()
    return deleted
