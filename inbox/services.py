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
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, Count, F, Q, When
from django.db.models.expressions import RawSQL
from django.db.models.functions import Greatest
from django.utils import timezone
from rest_framework import serializers

from audit.services import build_activity, record_activities
from core import log_context
from core.actor import Actor
from core.errors import NotFound, Unprocessable
from core.locking import first_locked
from core.row_sql import insert_sql, new_row, update_sql
from inbox.channels import confirmation_sender
from inbox.models import (
    ONE_OPEN_SESSION_PER_CONTACT,
    ConfirmationSkipReason,
    HandoverRequest,
    InboxSession,
    SessionNoticeKind,
    SessionStatus,
)
from inbox.notices import notice_email, save_notices, session_notice
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import build_message, queue_messages
from teams.models import Membership, Strategy, Team, Tenant
from teams.routing import (
    ROUTED_AGENT,
    Cte,
    PickRefused,
    RoutingDecision,
    UnassignedReason,
    route,
)
from teams.routing.attached import (
    ROUTED_AGENT_EMAIL,
    ROUTED_AGENT_ID,
    SPLICED,
    STAND_IN_AGENT,
    json_with_routed_agent,
    shadow_of,
    with_routed_agent,
)
from teams.selectors import team_for_routing
from teams.services import CounterDrift, reconcile_agent_counter
from webhooks import events
from webhooks.events import (
    EndpointsKeptChanging,
    Event,
    emit,
    messages_for_events,
    pick_with_endpoints,
)
from webhooks.selectors import active_endpoint_exists_sql

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

    One statement: INSERT the key's record, or take over the record of an expired use of
    the key (ON CONFLICT DO UPDATE … WHERE expired); a live record returns nothing, and
    is read to be replayed. The INSERT waits for a concurrent request holding the same
    key to commit (or roll back), so duplicates in flight execute once.
    """
    mine = new_row(HandoverRequest, tenant=tenant, key=key, request_hash=fingerprint)
    sql, params = insert_sql(mine)
    table = connection.ops.quote_name(HandoverRequest._meta.db_table)
    taken = _execute_returning(
        f"{sql} ON CONFLICT (tenant_id, key) DO UPDATE SET request_hash ="
        " EXCLUDED.request_hash, session_id = NULL, response_status = NULL,"
        " response_body = NULL, created_at = EXCLUDED.created_at"
        f" WHERE {table}.created_at < %s RETURNING id",
        [*params, connection.ops.adapt_datetimefield_value(mine.created_at - IDEMPOTENCY_WINDOW)],
    )
    if taken is not None:
        mine.pk = HandoverRequest._meta.pk.to_python(taken[0])
        mine._state.adding = False
        return mine
    record = HandoverRequest.objects.for_tenant(tenant).get(key=key)
    if record.request_hash != fingerprint:
        raise Unprocessable(
            code="idempotency_key_reused",
            message="This Idempotency-Key was used with a different request body.",
            field="Idempotency-Key",
        )
    return HandoverOutcome(record.response_status, record.response_body, replayed=True)


def _execute_returning(sql: str, params: list):
    """Run one statement; its first row (None when it returned none)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def _team_of_tenant(*, tenant: Tenant, team_id) -> Team:
    team = team_for_routing(tenant=tenant, team_id=team_id)
    if team is None:
        raise NotFound(
            code="team_not_found",
            message=f"Team {team_id} does not exist in this tenant.",
            field="teamId",
        )
    return team


class _NoOpenSession(Exception):
    """The contact's open session, which a moment ago made a new one impossible, was
    closed before it could be locked: the handover starts again."""


def _lock_open_session(*, tenant: Tenant, contact_id: str, channel: str) -> InboxSession:
    session = first_locked(
        InboxSession.objects.for_tenant(tenant).filter(
            contact_id=contact_id, channel=channel, status=SessionStatus.OPEN
        ),
        related=("assigned_agent__user", "team", "confirmation_message"),
    )
    if session is None:
        raise _NoOpenSession
    return session


def _insert_unless_conflicting(obj) -> bool:
    """INSERT … ON CONFLICT DO NOTHING RETURNING pk: whether the row went in.

    Django's bulk_create(ignore_conflicts=True) cannot say whether the row was inserted,
    which would cost a second query on every new session. A concurrent insert of the same
    open session makes this wait for that transaction, then insert nothing.
    """
    sql, params = insert_sql(obj, ignore_conflicts=True)
    pk_column = connection.ops.quote_name(type(obj)._meta.pk.column)
    return _execute_returning(f"{sql} RETURNING {pk_column}", params) is not None


# The one way a session gets an agent, whether the engine chose them (handover, retry,
# an agent back online) or a person did (the admin's "Assign to…").
GIVEN_FIELDS = [
    "assigned_agent",
    "assigned_at",
    "unassigned_reason",
    "strategy",
    "accept_deadline",
    "accepted_at",
]


def _give_session_to(
    session: InboxSession, agent, *, strategy: str, now, counted: bool = False
) -> list:
    """Give an open session to `agent` (None takes it away), and move the agents'
    `open_session_count` with it (F(), in the caller's transaction, which has the
    session locked). `counted=True`: the routing statement already counted it on the
    new agent (route(count=True)). `agent` may be ROUTED_AGENT_ID when the session row
    is written by the pick statement itself."""
    previous = session.assigned_agent_id
    if agent is None or isinstance(agent, Membership):
        session.assigned_agent = agent
    else:
        session.assigned_agent_id = agent
    session.assigned_at = now if agent is not None else None
    session.unassigned_reason = ""
    session.strategy = strategy
    # Each new holder gets the tenant's accept window afresh (inbox.acceptance sweeps it);
    # given again to the agent who has it, what they accepted (or not yet) stands.
    if agent is None or session.assigned_agent_id != previous:
        window = session.tenant.session_accept_window_minutes if agent is not None else None
        session.accept_deadline = now + timedelta(minutes=window) if window else None
        session.accepted_at = None
    if not counted and isinstance(agent, Membership | None):
        _move_open_session_count(
            session.tenant_id, from_id=previous, to_id=agent.pk if agent is not None else None
        )
    return list(GIVEN_FIELDS)


# AGENT_BEFORE_SESSION: a change to an open session and to its agents writes the agents'
# rows first. A new session's handover holds its agent's row while its INSERT waits for
# any transaction that changed the contact's open session (the one-open-session index);
# a writer holding that session and then waiting for the agent would deadlock with it.


def _move_open_session_count(tenant_id, *, from_id, to_id) -> None:
    """One open session less for `from_id`, one more for `to_id`, in one UPDATE (a
    transfer locks both rows in the order the index gives them, not in call order)."""
    if from_id == to_id:
        return
    ids = [agent_id for agent_id in (from_id, to_id) if agent_id is not None]
    if not ids:
        return
    # Never below zero: a counter that drifted is repaired by reconcile_counters.
    less = Greatest(F("open_session_count") - 1, 0)
    change = Case(When(pk=to_id, then=F("open_session_count") + 1), default=less)
    Membership.objects.for_tenant(tenant_id).filter(pk__in=ids).update(open_session_count=change)


def _apply_decision(session: InboxSession, decision: RoutingDecision, now) -> list[str]:
    """Write the routing decision on the session. The engine counted the session on the
    agent (route(count=True))."""
    session.last_assignment_attempt = decision.as_record()
    session.team = decision.team or session.team
    if decision.agent is not None:
        _give_session_to(session, decision.agent, strategy=decision.strategy, now=now, counted=True)
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
    session: InboxSession, *, created: bool, send_message: bool, text: str, now, queue=True
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
    if queue:  # else the caller inserts it (with a new session)
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


def _execute_with(ctes: list[tuple[str, list]], *, first: tuple[str, list]):
    """Run `first` (which RETURNING something) with `ctes` in one statement; its row."""
    names = [f"w{n}" for n in range(len(ctes))]
    sql = "WITH first AS (" + first[0] + ")"
    params = list(first[1])
    for name, (cte_sql, cte_params) in zip(names, ctes, strict=True):
        sql += f", {name} AS ({cte_sql})"
        params += cte_params
    return _execute_returning(sql + " SELECT * FROM first", params)  # noqa: S608


def _create_open_session(candidate: InboxSession, rows: list) -> bool:
    """Insert the session unless the contact already has an open one, and `rows` (its
    activity, its confirmation) only if it went in: one statement on PostgreSQL."""
    if connection.vendor != "postgresql":
        if not _insert_unless_conflicting(candidate):
            return False
        for row in rows:
            type(row).all_tenants.bulk_create([row])
        return True
    sql, params = insert_sql(candidate, ignore_conflicts=True)
    pk_column = connection.ops.quote_name(type(candidate)._meta.pk.column)
    when = "EXISTS (SELECT 1 FROM first)"
    inserts = [insert_sql(row, when=when) for row in rows]
    return _execute_with(inserts, first=(f"{sql} RETURNING {pk_column}", params)) is not None


# A write attached to the pick reads the routed agent as its row source (`FROM
# routed_agent`): no row when nobody was picked, and the agent's columns by name. (A
# sub-select per value and an EXISTS per row were a dozen subplans more, which the
# executor sets up again, all of them, each time the statement re-reads a row another
# handover changed while it waited for the pool's lock.)
EMAILED_WHEN = f"{ROUTED_AGENT}.email_on_conversation AND {ROUTED_AGENT}.user_email <> ''"


def _new_session_ctes(
    candidate: InboxSession, decision: RoutingDecision, rows, *, actor, now
) -> tuple[InboxSession, list[Cte]]:
    """A new session's writes as statements of the pick itself (teams.routing `attach`):
    the session row, already given to the picked agent, `rows` (its "session.created"
    activity, its confirmation), the "session.assigned" activity and the agent's notice.
    What depends on who was picked is read from the pick's `routed_agent` in SQL; each
    runs only if somebody was picked (the email only if the agent wants one). Returns the
    session row as written, and the statements. The session is a plain INSERT: a contact
    who has an open session already makes the statement fail
    (ONE_OPEN_SESSION_PER_CONTACT)."""
    row = shadow_of(candidate)
    _give_session_to(row, ROUTED_AGENT_ID, strategy=decision.strategy, now=now, counted=True)
    row.last_assignment_attempt = _assignment_record_sql(decision)
    row.team = decision.team or candidate.team
    statements = [insert_sql(row, source=ROUTED_AGENT, literals=True)]
    statements += [insert_sql(other, source=ROUTED_AGENT, literals=True) for other in rows]
    statements += _routed_agent_told(candidate, decision, actor=actor)
    return row, [Cte(f"assign{n}", sql, params) for n, (sql, params) in enumerate(statements)]


def _routed_agent_told(
    session: InboxSession,
    decision: RoutingDecision,
    *,
    actor,
    extra=None,
    data=None,
    action: str = "session.assigned",
    notice_kind: str = SessionNoticeKind.SESSION_ASSIGNED,
    notice_body: str = "",
    dedupe_key: str = "",
) -> list[tuple[str, list]]:
    """What records and tells of a session given to the routed agent, as statements of
    the pick reading `routed_agent`: the activity (`action`; its `data`, by default the
    decision's strategy, tier and team and `extra`; the agent's id and email added),
    the agent's notice and, if the agent asked for emails, its email. With `dedupe_key`
    a notice (and email) the agent already has for that key is not written again."""
    if data is None:
        data = _assigned_activity_data(extra)(decision)
    activity = build_activity(tenant=session.tenant, action=action, actor=actor, target=session)
    activity.data = RawSQL(  # noqa: S611
        f"%s::jsonb || jsonb_build_object('agent_id', {ROUTED_AGENT}.id::text,"
        f" 'agent_email', {ROUTED_AGENT}.user_email)",
        [json.dumps(data, cls=DjangoJSONEncoder)],
        output_field=SPLICED,
    )
    statements = [insert_sql(activity, source=ROUTED_AGENT, literals=True)]
    # The agent's notice, and its email if the agent asked for emails (inbox.notices).
    notice = session_notice(
        session, None, kind=notice_kind, body=notice_body, dedupe_key=dedupe_key
    )
    notice.recipient_id = ROUTED_AGENT_ID
    email = notice_email(notice, ROUTED_AGENT_EMAIL)
    if dedupe_key:  # the key names the recipient, known only in SQL
        email.idempotency_key = RawSQL(  # noqa: S611
            f"'session-notice/' || {ROUTED_AGENT}.id::text || '/' || %s",
            [dedupe_key],
            output_field=SPLICED,
        )
    dedupe = bool(dedupe_key)
    statements.append(
        insert_sql(
            email, source=ROUTED_AGENT, when=EMAILED_WHEN, ignore_conflicts=dedupe, literals=True
        )
    )
    notice.email_message_id = RawSQL(  # noqa: S611
        f"CASE WHEN {EMAILED_WHEN} THEN %s::uuid END", [email.pk], output_field=SPLICED
    )
    statements.append(
        insert_sql(notice, source=ROUTED_AGENT, ignore_conflicts=dedupe, literals=True)
    )
    return statements


def _assignment_record_sql(decision: RoutingDecision) -> RawSQL:
    """The session's `last_assignment_attempt` of a pick that succeeds, naming the
    routed agent."""
    record = decision.as_record() | {"outcome": "assigned"}
    record.pop("availableAgents", None)
    return RawSQL(  # noqa: S611
        f"%s::jsonb || jsonb_build_object('agentId', {ROUTED_AGENT}.id::text)",
        [json.dumps(record, cls=DjangoJSONEncoder)],
        output_field=SPLICED,
    )


# What routing writes on a session that got an agent or not (`_apply_decision`).
ROUTED_SESSION_FIELDS = ["last_assignment_attempt", "team", *GIVEN_FIELDS, "updated_at"]


# The pick's statement that takes a moved session off its previous agent's counter.
PREVIOUS_AGENT = "previous_agent"


def _one_less_for(agent_id) -> Cte:
    """The statement of the pick that takes a moved session off its previous agent's
    counter (never below zero; reconcile_counters repairs a drifted one), only if
    somebody was picked. The previous agent is never the routed one (excluded). It
    returns the agent's id: the session's UPDATE reads it (`PREVIOUS_AGENT`), so the
    agent's row is written before the session's (AGENT_BEFORE_SESSION); the executor
    runs the data-modifying CTEs nothing reads last, in no promised order."""
    table = connection.ops.quote_name(Membership._meta.db_table)
    return Cte(
        PREVIOUS_AGENT,
        f"UPDATE {table} AS previous SET open_session_count ="  # noqa: S608
        f" GREATEST(previous.open_session_count - 1, 0) FROM {ROUTED_AGENT}"
        " WHERE previous.id = %s RETURNING previous.id",
        [agent_id],
    )


@dataclass(frozen=True)
class _Replay:
    """An Idempotency-Key's answer for the pick to write: the key's row, and the answer
    built from the session as the pick writes it (given to the stand-in agent)."""

    record: HandoverRequest
    outcome_of: Callable[[InboxSession], "HandoverOutcome"]


def move_session_in_pick(
    session: InboxSession,
    *,
    team,
    exclude,
    actor,
    now,
    action: str,
    activity_data,
    event_extra,
    notice_kind: str,
    notice_body: str = "",
    dedupe_key: str = "",
    written_from: InboxSession | None = None,
    more_fields=(),
    rows_first=(),
    replay: _Replay | None = None,
) -> RoutingDecision | None:
    """Move an open session (locked by the caller's transaction, with or without an
    agent) to an agent the engine picks from `team`'s pools (never one of `exclude`),
    with every write about the move attached to the pick (PostgreSQL): the previous
    agent's counter, the session, the activity (`action`, `activity_data(decision)`),
    the new agent's notice and email, the "session.assigned" event
    (`event_extra(decision)`). The pick is then the transaction's last statement and
    the pool's lock is held from it to COMMIT alone. The decision (when nobody was
    picked, nothing was written and the caller decides); None when the tenant's webhook
    endpoints changed under every read (nothing was written).

    A handover that reuses the session also writes: the session as `written_from`
    holds it (a copy of `session` with changes the caller made), with `more_fields`;
    `rows_first` (a new confirmation), inserted before the session that points at
    them; the answer to replay (`replay`)."""
    previous = session.assigned_agent_id
    base = written_from if written_from is not None else session
    fields = sorted({*ROUTED_SESSION_FIELDS, *more_fields})
    written = []

    def attach(provisional: RoutingDecision, endpoints) -> list[Cte]:
        row = shadow_of(base)
        _give_session_to(row, ROUTED_AGENT_ID, strategy=provisional.strategy, now=now, counted=True)
        row.last_assignment_attempt = _assignment_record_sql(provisional)
        row.team = provisional.team or session.team
        ctes, source = [], ROUTED_AGENT
        if previous is not None:
            ctes.append(_one_less_for(previous))
            source = f"{ROUTED_AGENT} LEFT JOIN {PREVIOUS_AGENT} ON true"
        statements = [insert_sql(other, source=ROUTED_AGENT, literals=True) for other in rows_first]
        statements.append(update_sql(row, fields, source=source))
        written[:] = [row]
        statements += _routed_agent_told(
            row,
            provisional,
            actor=actor,
            action=action,
            data=activity_data(provisional),
            notice_kind=notice_kind,
            notice_body=notice_body,
            dedupe_key=dedupe_key,
        )
        told = shadow_of(base)
        told.team = row.team
        _give_session_to(told, STAND_IN_AGENT, strategy=provisional.strategy, now=now, counted=True)
        event = session_event(told, events.SESSION_ASSIGNED, **event_extra(provisional, told))
        record, outcome = (replay.record, replay.outcome_of(told)) if replay else (None, None)
        statements += _told_outside(told, [event], endpoints, record, outcome)
        return ctes + [Cte(f"move{n}", sql, params) for n, (sql, params) in enumerate(statements)]

    def pick(endpoints, only_if):
        return route(
            tenant=session.tenant,
            team=team,
            work="sessions",
            count=True,
            exclude_agent_ids=exclude,
            attach=lambda provisional: attach(provisional, endpoints),
            only_if=only_if,
        )

    try:
        decision = pick_with_endpoints(session.tenant_id, pick)
    except EndpointsKeptChanging:
        return None
    if decision.attached:  # the statement wrote it all; mirror the session here
        for row in rows_first:
            row._state.adding = False
        _apply_decision(session, decision, now)
        session.updated_at = written[0].updated_at
    return decision


def _assigned_activity_data(extra=None):
    """The "session.assigned" activity's data of a routed session, for
    `move_session_in_pick`."""
    return lambda decision: {
        "strategy": decision.strategy,
        "tier": decision.tier,
        "team_id": str(decision.team.pk) if decision.team else None,
        **(extra or {}),
    }


def _tier_of(decision: RoutingDecision, given: InboxSession) -> dict:
    return {"tier": decision.tier}


def _route_waiting_session_in_pick(
    session: InboxSession, team, *, actor, now, extra=None
) -> RoutingDecision | None:
    """Route an open, unassigned session that the caller's transaction holds, with every
    write about it attached to the pick (`move_session_in_pick`: the session, the
    "session.assigned" activity with `extra` in its data, the notice and its email, the
    event). The decision, or None when the tenant's webhook endpoints kept changing."""
    return move_session_in_pick(
        session,
        team=team,
        # Never back to an agent who let its accept window run out.
        exclude=session.missed_agent_ids or (),
        actor=actor,
        now=now,
        action="session.assigned",
        activity_data=_assigned_activity_data(extra),
        event_extra=_tier_of,
        notice_kind=SessionNoticeKind.SESSION_ASSIGNED,
    )


def _as_given_to_stand_in(candidate: InboxSession, decision: RoutingDecision, now):
    """The new session as the pick statement writes it if `decision` stands, given to
    the stand-in agent."""
    session = shadow_of(candidate)
    session._state.adding = False
    session.team = decision.team or candidate.team
    _give_session_to(session, STAND_IN_AGENT, strategy=decision.strategy, now=now, counted=True)
    return session


def _outcome_ctes(
    candidate: InboxSession,
    decision: RoutingDecision,
    *,
    now,
    new: "_NewSession",
    endpoints: list,
    idempotency_record: HandoverRequest | None,
) -> list[Cte]:
    """What a new session's handover writes about its outcome, as statements of the
    pick: the webhook events (session.created, session.assigned) for `endpoints`, and
    the Idempotency-Key's answer to replay. So the pool's lock is held for the one
    statement, as without them; each runs only if somebody was picked."""
    session = _as_given_to_stand_in(candidate, decision, now)
    happened = [
        session_event(session, events.SESSION_CREATED),
        session_event(session, events.SESSION_ASSIGNED, tier=decision.tier),
    ]
    outcome = _outcome(
        session, created=True, confirmation=new.confirmation, skipped_reason=new.skipped_reason
    )
    statements = _told_outside(session, happened, endpoints, idempotency_record, outcome)
    return [Cte(f"outcome{n}", sql, params) for n, (sql, params) in enumerate(statements)]


def _told_outside(
    given: InboxSession,
    happened: list[Event],
    endpoints: list,
    idempotency_record: HandoverRequest | None,
    outcome: "HandoverOutcome | None",
) -> list[tuple[str, list]]:
    """The webhook messages of `happened` for `endpoints`, and the Idempotency-Key's
    answer to replay (`outcome`), as statements of the pick: built with the stand-in
    agent (`given`), whose id, name and email the statement replaces with the routed
    agent's."""
    statements = []
    for message in messages_for_events(happened, endpoints):
        message.payload = json_with_routed_agent(message.payload, "body")
        statements.append(insert_sql(message, source=ROUTED_AGENT, literals=True))
    if idempotency_record is not None:
        body_sql, body_params = with_routed_agent(json.dumps(outcome.body))
        table = connection.ops.quote_name(HandoverRequest._meta.db_table)
        statements.append(
            (
                f"UPDATE {table} SET session_id = %s, response_status = %s,"  # noqa: S608
                f" response_body = ({body_sql})::jsonb FROM {ROUTED_AGENT}"
                f" WHERE {table}.id = %s",
                [given.pk, outcome.status_code, *body_params, idempotency_record.pk],
            )
        )
    return statements


def _route_new_session(
    candidate, team, rows, *, actor, now, only_if=None, more=None
) -> RoutingDecision:
    """Route a session not yet inserted, and insert it (with `rows`) in the pick
    statement when somebody is picked: the session row is written once, already
    assigned. When nobody is picked nothing was written (`decision.attached` is False).
    `only_if`: the pick's condition (teams.routing `route`). `more(decision)`: further
    statements for the pick to run (`_outcome_ctes`)."""

    written = []

    def new_session_ctes(provisional: RoutingDecision):
        row, ctes = _new_session_ctes(candidate, provisional, rows, actor=actor, now=now)
        written[:] = [row]
        return ctes + (more(provisional) if more is not None else [])

    decision = route(
        tenant=candidate.tenant,
        team=team,
        work="sessions",
        count=True,
        attach=new_session_ctes,
        only_if=only_if,
    )
    if decision.attached:
        # The statement wrote the session, its rows, the activity and the notice; mirror
        # it here.
        candidate._state.adding = False
        candidate.created_at, candidate.updated_at = written[0].created_at, written[0].updated_at
        candidate.last_assignment_attempt = decision.as_record()
        candidate.team = decision.team or candidate.team
        _give_session_to(
            candidate, decision.agent, strategy=decision.strategy, now=now, counted=True
        )
        for row in rows:
            row._state.adding = False
    return decision


def _route_new_session_with_events(
    candidate, team, new: "_NewSession", *, actor, now, idempotency_record
) -> tuple[RoutingDecision, bool]:
    """`_route_new_session` with the webhook events and the answer to replay written by
    the pick: (the decision, whether the pick wrote them); webhooks `pick_with_endpoints`
    reads the endpoints. When they kept changing, the pick writes the session alone
    (still after the pool's lock, AGENT_BEFORE_SESSION) and the caller writes the events
    and the answer after it."""

    def pick(endpoints, only_if):
        def outcome_ctes(provisional: RoutingDecision) -> list[Cte]:
            return _outcome_ctes(
                candidate,
                provisional,
                now=now,
                new=new,
                endpoints=endpoints,
                idempotency_record=idempotency_record,
            )

        return _route_new_session(
            candidate, team, new.rows, actor=actor, now=now, more=outcome_ctes, only_if=only_if
        )

    try:
        return pick_with_endpoints(candidate.tenant_id, pick), True
    except EndpointsKeptChanging:
        return _route_new_session(candidate, team, new.rows, actor=actor, now=now), False


def _notify_assigned(session: InboxSession, agent: Membership) -> None:
    save_notices([session_notice(session, agent, kind=SessionNoticeKind.SESSION_ASSIGNED)])


def _record_routing(
    session, decision, *, actor, requested_team, now, extra=None, changed=()
) -> None:
    """The writes of a routing decision the pick statement did not make (nobody picked,
    the tenant's endpoints kept changing, SQLite): the session row (with the `changed`
    fields set before), the activity and the agent's notice."""
    fields = _apply_decision(session, decision, now)
    session.updated_at = now
    session.save(update_fields=sorted({*fields, *changed, "updated_at"}))
    activity = _assignment_activity(session, decision, actor)
    activity.data.update(extra or {})
    record_activities([activity])
    if decision.agent is not None:
        _notify_assigned(session, decision.agent)
    else:
        _warn_unassigned(session, decision, requested_team)


# A handover whose contact's open session closes under it starts again, this many times.
HANDOVER_ATTEMPTS = 3


@dataclass(frozen=True)
class HandoverAsk:
    """What a handover asks for (the API's body, the key's tenant and actor)."""

    tenant: Tenant
    actor: Actor
    contact_id: str
    channel: str
    name: str = ""
    context: dict | None = None
    team_id: object = None
    send_message: bool = True
    message_text: str = ""
    idempotency_key: str | None = None
    payload_for_idempotency: object = None

    @property
    def text(self) -> str:
        return self.message_text or DEFAULT_HANDOVER_MESSAGE


def handover(**kwargs) -> HandoverOutcome:
    """Hand a contact's conversation over to a human agent: get or create the open
    session, assign it if it has no agent, queue the confirmation with the change.

    On PostgreSQL a new session is one statement in the common case: the pick, which
    also inserts the session already assigned, its activities, its confirmation and the
    agent's notice (teams.routing, `attach`). Alone it needs no BEGIN or COMMIT, so the
    pool's lock lasts that statement and no round trip more. With an Idempotency-Key or
    a tenant's webhooks it runs in a transaction with their writes. Team and config come
    from the routing cache.

    A contact who has an open session makes that statement fail on the one-open-session
    index (nothing was written); the handover runs again in a transaction that locks
    the open session and reuses it (`_handover`). Should that session be closed in
    between, the handover starts again: never does it hold a new session's index entry
    while it waits for a pool's lock, which another handover of the contact could hold
    while it waits for that entry.
    """
    ask = HandoverAsk(**kwargs)
    for _ in range(HANDOVER_ATTEMPTS - 1):
        try:
            return _handover_once(ask)
        except _NoOpenSession:
            pass
    return _handover_once(ask)


def _handover_once(ask: HandoverAsk) -> HandoverOutcome:
    if connection.vendor != "postgresql":
        return _handover(ask, create_in_pick=False)
    try:
        if ask.idempotency_key or ask.tenant.has_active_webhooks:
            return _handover(ask, create_in_pick=True)
        outcome = _new_session_in_one_statement(ask)
        if outcome is None:  # the tenant has webhooks: their events go with the change
            return _handover(ask, create_in_pick=True)
        if isinstance(outcome, HandoverOutcome):
            return outcome
        # Nobody was picked (nothing was written): the transaction records it.
        return _handover(ask, create_in_pick=False, nobody_picked=outcome)
    except IntegrityError as error:
        if not _is_open_session_conflict(error):
            raise
    return _handover(ask, create_in_pick=False, may_create=False)


def _is_open_session_conflict(error: IntegrityError) -> bool:
    diag = getattr(error.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None) == ONE_OPEN_SESSION_PER_CONTACT


@dataclass
class _NewSession:
    """A session to insert with its rows, and what the answer says of its confirmation."""

    candidate: InboxSession
    rows: list
    confirmation: str
    skipped_reason: str


def _new_session(ask: HandoverAsk, *, team, now) -> _NewSession:
    candidate = new_row(
        InboxSession,
        tenant=ask.tenant,
        contact_id=ask.contact_id,
        channel=ask.channel,
        contact_name=ask.name,
        context=ask.context or {},
        team=team,
    )
    # A new session's confirmation and first activity do not depend on who takes it.
    confirmation, skipped_reason = _queue_confirmation(
        candidate, created=True, send_message=ask.send_message, text=ask.text, now=now, queue=False
    )
    candidate.confirmation_skipped_reason = str(skipped_reason or "")
    rows = [
        build_activity(
            tenant=ask.tenant,
            action="session.created",
            actor=ask.actor,
            target=candidate,
            data={"contact_id": ask.contact_id, "channel": ask.channel},
        )
    ]
    if candidate.confirmation_message is not None:
        rows.append(candidate.confirmation_message)
    return _NewSession(candidate, rows, confirmation, skipped_reason)


def _outcome(session, *, created: bool, confirmation: str, skipped_reason) -> HandoverOutcome:
    body = handover_body(session, created=created, confirmation=confirmation)
    body["confirmationSkippedReason"] = str(skipped_reason) if skipped_reason else None
    return HandoverOutcome(status_code=201 if created else 200, body=body)


def _new_session_in_one_statement(
    ask: HandoverAsk,
) -> HandoverOutcome | RoutingDecision | None:
    """A new session, assigned, by the pick statement alone (outside a transaction: the
    statement is one). When nobody was picked nothing was written: the decision. None
    when the tenant has an active webhook endpoint after all (nothing was written): the
    tenant this was chosen by (`has_active_webhooks`) can be a few seconds old (the API
    key's cache), so the statement itself checks, and the events are not lost."""
    tenant = ask.tenant
    team = _team_of_tenant(tenant=tenant, team_id=ask.team_id) if ask.team_id else None
    now = timezone.now()
    new = _new_session(ask, team=team, now=now)
    endpoint_sql, endpoint_params = active_endpoint_exists_sql(tenant=tenant)
    # Inside a caller's transaction, a savepoint: the failed statement of a contact with
    # an open session must not abort it.
    try:
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            routed = _route_new_session(
                new.candidate,
                team,
                new.rows,
                actor=ask.actor,
                now=now,
                only_if=(f"NOT {endpoint_sql}", endpoint_params),
            )
    except PickRefused:
        return None
    if not routed.attached:
        return routed
    session = new.candidate
    log_context.bind(tenant_id=tenant.pk, session_id=session.pk)
    return _outcome(
        session, created=True, confirmation=new.confirmation, skipped_reason=new.skipped_reason
    )


@transaction.atomic
def _handover(
    ask: HandoverAsk,
    *,
    create_in_pick: bool,
    nobody_picked: RoutingDecision | None = None,
    may_create: bool = True,
) -> HandoverOutcome:
    """handover(), in one transaction. `create_in_pick`: insert a new session in the
    pick statement (it fails if the contact has an open session); else insert it first
    (INSERT … ON CONFLICT DO NOTHING, with its activity and confirmation) and route it
    after, or reuse the open one. `nobody_picked`: the decision of a routing a moment
    ago that found nobody for this handover; it stands for a routing with the same
    inputs (the engine is not run twice). `may_create=False`: only reuse the open
    session (_NoOpenSession when there is none)."""
    tenant, actor, contact_id, channel = ask.tenant, ask.actor, ask.contact_id, ask.channel
    name, context, send_message, text = ask.name, ask.context, ask.send_message, ask.text
    idempotency_key, payload_for_idempotency = ask.idempotency_key, ask.payload_for_idempotency
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

    team = _team_of_tenant(tenant=tenant, team_id=ask.team_id) if ask.team_id else None
    now = timezone.now()
    new = _new_session(ask, team=team, now=now)
    candidate, rows = new.candidate, new.rows
    confirmation, skipped_reason = new.confirmation, new.skipped_reason
    decided = nobody_picked
    outcome_in_pick = False
    if create_in_pick:
        decided, outcome_in_pick = _route_new_session_with_events(
            candidate, team, new, actor=actor, now=now, idempotency_record=idempotency_record
        )
    # The pick statement wrote the session and everything about it, and (outcome_in_pick)
    # the events and the answer to replay.
    written_by_pick = decided is not None and decided.attached
    outcome_written = written_by_pick and outcome_in_pick
    if written_by_pick:
        created, session = True, candidate
    elif may_create and _create_open_session(candidate, rows):
        candidate._state.adding = False
        created, session = True, candidate
    else:
        created = False
        session = _lock_open_session(tenant=tenant, contact_id=contact_id, channel=channel)
        session.tenant = tenant
    log_context.bind(tenant_id=tenant.pk, session_id=session.pk)  # on every later line

    changed: list[str] = []
    if not created:
        if name and name != session.contact_name:
            session.contact_name = name
            changed.append("contact_name")
        if context is not None and context != session.context:
            session.context = context
            changed.append("context")

    routed = None
    if created and decided is not None:
        routed = decided
        if not decided.attached:  # nobody was picked: the session went in unassigned
            _record_routing(session, decided, actor=actor, requested_team=team, now=now)
    # A session nobody accepted N times waits for a person: a new message does not
    # start the round again.
    elif session.assigned_agent_id is None and (
        session.unassigned_reason != UnassignedReason.NOT_ACCEPTED
    ):
        if team is not None and session.team_id != team.pk:
            session.team = team
            changed.append("team")
        routing_team = team or session.team
        if decided is not None and routing_team == team and not session.missed_agent_ids:
            routed = decided  # nobody a moment ago, for the same team and agents
        elif connection.vendor == "postgresql":
            routed = _route_reused_session_in_pick(
                session,
                routing_team,
                ask,
                changed=changed,
                idempotency_record=idempotency_record,
                now=now,
            )
            if isinstance(routed, HandoverOutcome):
                return routed  # the pick wrote it all
        if routed is None:  # SQLite, or the tenant's webhook endpoints kept changing
            routed = route(
                tenant=tenant,
                team=routing_team,
                work="sessions",
                count=True,
                # Never back to an agent who let its accept window run out.
                exclude_agent_ids=session.missed_agent_ids or (),
            )
        # The session row is written after the routing (AGENT_BEFORE_SESSION).
        _record_routing(
            session, routed, actor=actor, requested_team=routing_team, now=now, changed=changed
        )
        changed = []

    if not created:
        confirmation_before = (
            session.confirmation_message_id,
            session.confirmation_skipped_reason,
        )
        confirmation, skipped_reason = _queue_confirmation(
            session, created=False, send_message=send_message, text=text, now=now
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

    webhook_events = [session_event(session, events.SESSION_CREATED)] if created else []
    if routed is not None:
        webhook_events.append(_routing_event(session, routed))
    if not outcome_written:
        emit(webhook_events)

    outcome = _outcome(
        session, created=created, confirmation=confirmation, skipped_reason=skipped_reason
    )
    if idempotency_record is not None and not outcome_written:
        idempotency_record.session = session
        idempotency_record.response_status = outcome.status_code
        idempotency_record.response_body = outcome.body
        idempotency_record.save(update_fields=["session", "response_status", "response_body"])
    return outcome


def _route_reused_session_in_pick(
    session: InboxSession,
    team,
    ask: "HandoverAsk",
    *,
    changed: list[str],
    idempotency_record: HandoverRequest | None,
    now,
) -> "HandoverOutcome | RoutingDecision | None":
    """A handover of a contact whose open session waits for an agent, with every write
    about the session that gets one attached to the pick (PostgreSQL): the session
    (given to the agent, with the `changed` fields and the confirmation), the
    confirmation message, the activity, the notice and its email, the
    "session.assigned" event, the answer to replay. The pick is then the
    transaction's last statement and the pool's lock is held from it to COMMIT alone.
    The handover's outcome; or the decision when nobody was picked (nothing was
    written); or None when the tenant's webhook endpoints changed under every read."""
    # The confirmation as it is if somebody is picked: the session is then assigned
    # now, so a confirmation sent before it is not a recent one (`_confirmed_recently`).
    given = shadow_of(session)
    given.assigned_at = now
    confirmation, skipped_reason = _queue_confirmation(
        given, created=False, send_message=ask.send_message, text=ask.text, now=now, queue=False
    )
    if skipped_reason and given.confirmation_message_id is None:
        given.confirmation_skipped_reason = skipped_reason
    new_message = (
        given.confirmation_message
        if given.confirmation_message_id != session.confirmation_message_id
        else None
    )
    fields = set(changed)
    if (given.confirmation_message_id, given.confirmation_skipped_reason) != (
        session.confirmation_message_id,
        session.confirmation_skipped_reason,
    ):
        fields |= {"confirmation_message", "confirmation_skipped_reason"}

    def outcome_of(told: InboxSession) -> HandoverOutcome:
        return _outcome(
            told, created=False, confirmation=confirmation, skipped_reason=skipped_reason
        )

    decision = move_session_in_pick(
        session,
        team=team,
        # Never back to an agent who let its accept window run out.
        exclude=session.missed_agent_ids or (),
        actor=ask.actor,
        now=now,
        action="session.assigned",
        activity_data=_assigned_activity_data(),
        event_extra=_tier_of,
        notice_kind=SessionNoticeKind.SESSION_ASSIGNED,
        written_from=given,
        more_fields=fields,
        rows_first=[new_message] if new_message is not None else [],
        replay=_Replay(idempotency_record, outcome_of) if idempotency_record else None,
    )
    if decision is None or not decision.attached:
        return decision
    # The statement wrote it all; the session mirrors it (move_session_in_pick).
    session.confirmation_message = given.confirmation_message
    session.confirmation_skipped_reason = given.confirmation_skipped_reason
    return _outcome(
        session, created=False, confirmation=confirmation, skipped_reason=skipped_reason
    )


@transaction.atomic
def run_session_assignment(
    *, tenant: Tenant, session_id, actor: Actor, trigger: str, skip_locked: bool = False
) -> InboxSession | None:
    """Route an open, unassigned session again (periodic retry, agent back, admin).

    Returns the session, or None when it is gone, closed, already assigned, or (with
    `skip_locked`) being handled by someone else right now. On PostgreSQL every write
    about a session that got an agent is attached to the pick, the transaction's last
    statement: the pool's lock is held from it to COMMIT.
    """
    sessions = InboxSession.objects.for_tenant(tenant).select_for_update(
        skip_locked=skip_locked, of=("self",)
    )
    session = sessions.filter(
        pk=session_id, status=SessionStatus.OPEN, assigned_agent__isnull=True
    ).first()
    if session is None:
        return None
    session.tenant = tenant
    team = team_for_routing(tenant=tenant, team_id=session.team_id) if session.team_id else None
    previous_reason = session.unassigned_reason
    now = timezone.now()
    decision = None
    if connection.vendor == "postgresql":
        decision = _route_waiting_session_in_pick(
            session, team, actor=actor, now=now, extra={"trigger": trigger}
        )
        if decision is not None and decision.attached:
            return session
    if decision is None:  # SQLite, or the tenant's webhook endpoints kept changing
        # Never back to an agent who let its accept window run out.
        decision = route(
            tenant=tenant,
            team=team,
            work="sessions",
            count=True,
            exclude_agent_ids=session.missed_agent_ids or (),
        )
    fields = _apply_decision(session, decision, now)
    session.save(update_fields=[*fields, "updated_at"])
    if decision.agent is not None or session.unassigned_reason != previous_reason:
        activity = _assignment_activity(session, decision, actor)
        activity.data["trigger"] = trigger
        record_activities([activity])
        if decision.agent is not None:
            _notify_assigned(session, decision.agent)
        emit([_routing_event(session, decision)])
    return session


@transaction.atomic
def assign_session_to(
    *, tenant: Tenant, session_id, agent: Membership, actor: Actor
) -> InboxSession:
    """A person assigns (or moves) an open session to a chosen agent: an active agent of
    the tenant whose login works (as a transfer requires)."""
    if agent.tenant_id != tenant.pk or not (agent.is_active and agent.user.is_active):
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
    Membership.objects.for_tenant(tenant).filter(pk=agent.pk).update(last_assigned_at=now)
    session.save(update_fields=[*fields, "updated_at"])  # after the agent's row
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
    if previous != agent.pk:
        _notify_assigned(session, agent)
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
def close_session(
    *, tenant: Tenant, session_id, actor: Actor, assigned_to: Membership | None = None
) -> InboxSession:
    """Close a session (and free its agent). `assigned_to`: only if it is still with that
    agent when locked (an agent's own Close must not close a session moved meanwhile)."""
    sessions = InboxSession.objects.for_tenant(tenant).select_for_update().filter(pk=session_id)
    if assigned_to is not None:
        sessions = sessions.filter(assigned_agent=assigned_to)
    session = sessions.first()
    if session is None:
        raise NotFound(code="session_not_found", message="Session not found.")
    session.tenant = tenant
    if session.status == SessionStatus.OPEN:
        # A closed session no longer counts against its agent. The agent's row is
        # written before the session's, as every writer of both does (AGENT_BEFORE_SESSION).
        _move_open_session_count(tenant.pk, from_id=session.assigned_agent_id, to_id=None)
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
    ).exclude(
        # Manual ones wait for a person; not_accepted ones were missed too often already.
        unassigned_reason__in=[UnassignedReason.MANUAL_STRATEGY, UnassignedReason.NOT_ACCEPTED]
    )
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


def reconcile_open_session_counts(
    *, fix: bool = False, tenant: Tenant | None = None
) -> list[CounterDrift]:
    """Compare every agent's `open_session_count` with its open sessions; repair if
    asked (teams.services.reconcile_agent_counter)."""
    return reconcile_agent_counter(
        counter="open_session_count",
        actual=Count("sessions", filter=Q(sessions__status=SessionStatus.OPEN)),
        count_now=lambda agent: (
            InboxSession.objects.for_tenant(agent.tenant_id)
            .filter(assigned_agent=agent, status=SessionStatus.OPEN)
            .count()
        ),
        fix=fix,
        tenant=tenant,
    )
