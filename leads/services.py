"""Writes for leads: intake, claim, contact, reassignment, SLA sweeps, counters.

Lock order, everywhere: the lead first, then agents (memberships) by primary key. That
order is what keeps concurrent reassignments, claims and sweeps free of deadlocks.
Agent counters (`current_lead_count`) move only with F() updates in the same
transaction as the lead change, so they cannot drift.
"""

import contextvars
import json
import logging
import threading
import uuid
from collections import namedtuple
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.contenttypes.models import ContentType
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, F, Q
from django.db.models.constants import OnConflict
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.timesince import timesince

from audit.models import ActivityLog
from audit.services import build_activity, record_activities
from core import log_context
from core.actor import SYSTEM, Actor
from core.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from core.locking import first_locked
from core.metrics import LEAD_SLA_BREACHES
from core.row_sql import insert_sql, new_row, update_sql
from leads.emails import RENDERER as EMAIL_RENDERER
from leads.emails import attach_email
from leads.formatting import format_deadline
from leads.models import (
    OPEN_LEAD_STATUSES,
    STAGE_FOR_REASON,
    Lead,
    LeadReassignment,
    LeadStatus,
    Notification,
    NotificationKind,
    ReassignmentReason,
    ReassignmentStage,
)
from leads.serializers import LeadOutput
from outbox.channels import get_channel
from outbox.models import MessageStatus, OutboundMessage
from outbox.services import queue_messages
from teams.models import ADMIN_ROLES, Membership, Presence, Tenant, User
from teams.routing import ROUTED_AGENT, Cte, advance_cursor, route
from teams.routing.attached import (
    ROUTED_AGENT_EMAIL,
    ROUTED_AGENT_ID,
    SPLICED,
    STAND_IN_AGENT,
    json_with_routed_agent,
    shadow_of,
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

logger = logging.getLogger(__name__)

SWEEP_BATCH_SIZE = 500


# --- helpers ---------------------------------------------------------------------------


def lead_load(agents) -> dict:
    """Leads routing measures load by the agents' own counters: no query needed."""
    return {agent.pk: agent.current_lead_count for agent in agents}


def _not_found(what: str, field: str | None = None) -> NotFound:
    return NotFound(
        code=f"{what}_not_found", message=f"{what.capitalize()} not found.", field=field
    )


def _lock_lead(*, tenant: Tenant, lead_id) -> Lead:
    lead = (
        Lead.objects.for_tenant(tenant)
        .select_for_update(of=("self",))
        .select_related("tenant")
        .filter(pk=lead_id)
        .first()
    )
    if lead is None:
        raise _not_found("lead", "lead_id")
    return lead


def _active_agent(*, tenant: Tenant, agent_id, field: str) -> Membership:
    agent = (
        Membership.objects.for_tenant(tenant)
        .select_related("user")
        .filter(pk=agent_id, is_active=True, user__is_active=True)
        .first()
    )
    if agent is None:
        raise NotFound(
            code="agent_not_found",
            message="Agent not found, inactive, or not in this tenant.",
            field=field,
        )
    return agent


def _bump_counter(*, tenant: Tenant, agent_id, delta: int, assigned_at=None) -> None:
    """Move an agent's lead counter; `assigned_at` also stamps `last_assigned_at`."""
    if agent_id is None:
        return
    agents = Membership.objects.for_tenant(tenant).filter(pk=agent_id)
    if delta < 0:
        # Never below zero, even if a counter had drifted before reconciliation.
        agents = agents.filter(current_lead_count__gte=-delta)
    changes = {"current_lead_count": F("current_lead_count") + delta}
    if assigned_at is not None:
        changes["last_assigned_at"] = assigned_at
    agents.update(**changes)


def _new_agent_notification(
    *,
    lead: Lead,
    agent: Membership,
    kind: str,
    reason: str = "",
    result: "ReassignmentResult | None" = None,
):
    deadline = lead.open_deadline
    lines = [f"{lead.name} ({lead.phone or lead.email or 'no contact details'})"]
    if reason:
        lines.append(f"Reason: {ReassignmentReason(reason).label}.")
    if deadline:
        step = "claim" if lead.status == LeadStatus.NEW else "contact"
        when = format_deadline(deadline, lead.tenant)
        if result is not None and result.breach_at_once:
            lines.append(
                f"The {result.window} deadline ({when}) had already passed when it was "
                f"reassigned to you: please {step} it now."
            )
        elif result is not None and result.window_restarted and reason == ReassignmentReason.MANUAL:
            lines.append(f"The {result.window} window was restarted: please {step} it by {when}.")
        else:
            lines.append(f"Please {step} it by {when}.")
    title = (
        f"Lead reassigned to you: {lead.name}"
        if kind == NotificationKind.LEAD_REASSIGNED
        else f"New lead for you: {lead.name}"
    )
    return Notification(
        tenant=lead.tenant,
        recipient=agent,
        lead=lead,
        kind=kind,
        title=title[:200],
        body=" ".join(lines),
    )


def _notify(
    notifications: list[Notification],
    *,
    ignore_conflicts: bool = False,
    email_details: dict | None = None,
) -> None:
    """Save notices and queue their emails in the outbox, in the caller's transaction.
    `email_details` travel with each email, for what the lead's row does not keep."""
    if not notifications:
        return
    queue_messages(
        [attach_email(notification, details=email_details) for notification in notifications],
        ignore_conflicts=ignore_conflicts,
    )
    Notification.all_tenants.bulk_create(notifications, ignore_conflicts=ignore_conflicts)


# --- intake ----------------------------------------------------------------------------


def lead_event(lead: Lead, event_type: str, **extra) -> Event:
    """A webhook event about a lead: the lead as the leads API shows it, plus the event's
    own fields."""
    data = dict(LeadOutput(lead).data)
    data.update(extra)
    return Event(
        tenant_id=lead.tenant_id,
        type=event_type,
        data=data,
        subject_id=str(lead.pk),
    )


def _give_lead_to(lead: Lead, agent, now) -> list[str]:
    """The one way a lead gets an agent: routed (create, retry) or moved (reassignment,
    automatic or by a person). Timers and counters are the caller's: they depend on why.
    `agent` may be ROUTED_AGENT_ID when the lead's row is written by the pick statement
    itself."""
    if isinstance(agent, Membership):
        lead.assigned_agent = agent
    else:
        lead.assigned_agent_id = agent
    lead.assigned_at = now
    lead.unassigned_reason = ""
    return ["assigned_agent", "assigned_at", "unassigned_reason"]


def _start_claim_window(lead: Lead, agent, now) -> None:
    _give_lead_to(lead, agent, now)
    lead.claim_deadline = now + timedelta(minutes=lead.tenant.claim_window_minutes)


def create_lead(
    *,
    tenant: Tenant,
    actor: Actor,
    name: str,
    phone: str = "",
    email: str = "",
    source: str = "",
    assigned_agent_id=None,
    team_id=None,
) -> Lead:
    """A new lead, given to the named agent or routed by the tenant's rules; the claim
    window starts as soon as it has an agent.

    On PostgreSQL a routed lead is written by the pick statement itself (the lead, its
    activity, the agent's notification and email, the webhook events; the agent's
    counter is the pick's), so the pool's lock is held for that one statement and no
    write after it. When nobody is picked nothing was written; a transaction writes the
    unassigned lead with that decision (the engine is not run twice)."""
    team = None
    if team_id is not None:
        team = team_for_routing(tenant=tenant, team_id=team_id)
        if team is None:
            raise NotFound(code="team_not_found", message="Team not found.", field="team_id")
    fields = {"name": name, "phone": phone, "email": email, "source": source, "team": team}
    nobody = None
    if assigned_agent_id is None and connection.vendor == "postgresql":
        routed = _routed_lead_in_pick(tenant=tenant, actor=actor, **fields)
        if isinstance(routed, Lead):
            return routed
        nobody = routed
    return _create_lead(
        tenant=tenant,
        actor=actor,
        assigned_agent_id=assigned_agent_id,
        nobody_picked=nobody,
        **fields,
    )


@transaction.atomic
def _create_lead(
    *, tenant: Tenant, actor: Actor, assigned_agent_id, nobody_picked, team, source, **fields
) -> Lead:
    """create_lead() in one transaction: the named agent's, or routed here (SQLite, or
    the tenant's webhook endpoints kept changing); `nobody_picked` is the decision of a
    pick a moment ago that found nobody: it stands for a routing with the same inputs."""
    now = timezone.now()
    lead = Lead(tenant=tenant, team=team, source=source, **fields)
    decision = nobody_picked
    if assigned_agent_id is not None:
        agent = _active_agent(tenant=tenant, agent_id=assigned_agent_id, field="assigned_agent_id")
    else:
        if decision is None:
            decision = route(tenant=tenant, team=team, load=lead_load, work="leads")
        agent = decision.agent
    if agent is not None:
        _start_claim_window(lead, agent, now)
    else:
        lead.unassigned_reason = decision.reason
    lead.save(force_insert=True)
    log_context.bind(tenant_id=tenant.pk, lead_id=lead.pk)  # on every later line

    data = {"source": source, "agent_id": str(agent.pk) if agent else None}
    if decision is not None:
        data.update(strategy=decision.strategy, tier=decision.tier, reason=decision.reason)
    record_activities(
        [build_activity(tenant=tenant, action="lead.created", actor=actor, target=lead, data=data)]
    )
    webhook_events = [lead_event(lead, events.LEAD_CREATED)]
    if agent is not None:
        _bump_counter(tenant=tenant, agent_id=agent.pk, delta=+1)
        _notify(
            [_new_agent_notification(lead=lead, agent=agent, kind=NotificationKind.LEAD_ASSIGNED)]
        )
        webhook_events.append(lead_event(lead, events.LEAD_ASSIGNED))
    emit(webhook_events)
    return lead


def _routed_lead_in_pick(*, tenant: Tenant, actor: Actor, source: str, **fields):
    """A routed lead written by the pick statement (PostgreSQL): the lead, or the
    decision when nobody was picked (nothing was written), or None when the tenant's
    webhook endpoints changed under every read (nothing was written)."""
    now = timezone.now()
    lead = new_row(Lead, tenant=tenant, source=source, **fields)
    decision, row = _lead_in_pick(
        lead,
        actor=actor,
        now=now,
        new=True,
        activity_data=lambda decision: {
            "source": lead.source,
            "strategy": decision.strategy,
            "tier": decision.tier,
            "reason": decision.reason,
        },
        event_types=[events.LEAD_CREATED, events.LEAD_ASSIGNED],
    )
    if decision is None or not decision.attached:
        return decision
    # The statement wrote the lead and everything about it; mirror it here.
    lead._state.adding = False
    lead.created_at, lead.updated_at = row.created_at, row.updated_at
    _start_claim_window(lead, decision.agent, now)
    log_context.bind(tenant_id=tenant.pk, lead_id=lead.pk)
    return lead


def _route_waiting_lead_in_pick(lead: Lead, *, actor: Actor, now):
    """Route a waiting lead (locked by the caller's transaction) with every write about
    it attached to the pick (PostgreSQL), so the pick is the transaction's last
    statement and the pool's lock is held from it to COMMIT alone: the decision (when
    nobody was picked, nothing was written), or None when the tenant's webhook endpoints
    changed under every read (nothing was written)."""
    decision, row = _lead_in_pick(
        lead,
        actor=actor,
        now=now,
        new=False,
        activity_data=lambda decision: {"strategy": decision.strategy},
        event_types=[events.LEAD_ASSIGNED],
    )
    if decision is not None and decision.attached:
        # The statement wrote the lead and everything about it; mirror it here.
        _start_claim_window(lead, decision.agent, now)
        lead.updated_at = row.updated_at
    return decision


def _lead_in_pick(lead: Lead, *, actor: Actor, now, new: bool, activity_data, event_types):
    """Route `lead` (`new`: not yet inserted; else waiting, locked by the caller's
    transaction) with its writes attached to the pick (`_lead_ctes`): (the decision,
    the lead's row as the statement wrote it, or None when nobody was picked); (None,
    None) when the tenant's webhook endpoints changed under every read. Nothing is
    written unless somebody is picked."""
    written = []

    def pick(endpoints, only_if):
        def lead_ctes(provisional) -> list[Cte]:
            row, ctes = _lead_ctes(
                lead,
                actor=actor,
                now=now,
                new=new,
                data=activity_data(provisional),
                event_types=event_types,
                endpoints=endpoints,
            )
            written[:] = [row]
            return ctes

        # A new lead's pick inside a caller's transaction: a savepoint, so a failed pick
        # does not abort it. (A waiting lead's pick is its transaction's last statement.)
        savepoint = new and connection.in_atomic_block
        with transaction.atomic() if savepoint else nullcontext():
            return route(
                tenant=lead.tenant,
                team=lead.team,
                work="leads",
                count=True,
                attach=lead_ctes,
                only_if=only_if,
            )

    try:
        decision = pick_with_endpoints(lead.tenant_id, pick)
    except EndpointsKeptChanging:
        return None, None
    return decision, (written[0] if decision.attached else None)


def _lead_ctes(
    lead: Lead, *, actor: Actor, now, new: bool, data: dict, event_types, endpoints
) -> tuple:
    """A routed lead's writes as statements of the pick (teams.routing `attach`), each
    reading the picked agent from the statement's `routed_agent`: the lead (`new`: its
    row; else its routing fields), given to the agent with its claim window started;
    its activity ("lead.created" or "lead.assigned", with `data` and the agent's id);
    the agent's notification and its email; the webhook events `event_types` for
    `endpoints`. Returns the lead's row as written, and the statements."""
    row = shadow_of(lead)
    _start_claim_window(row, ROUTED_AGENT_ID, now)
    if new:
        statements = [insert_sql(row, source=ROUTED_AGENT, literals=True)]
    else:
        statements = [update_sql(row, ROUTED_LEAD_FIELDS, source=ROUTED_AGENT)]
    # The lead as the agent got it, for what is built in Python (the stand-in agent in
    # place of the routed one: its values are replaced in SQL).
    given = shadow_of(lead)
    _start_claim_window(given, STAND_IN_AGENT, now)
    given.created_at, given.updated_at = row.created_at, row.updated_at

    action = "lead.created" if new else "lead.assigned"
    activity = build_activity(tenant=lead.tenant, action=action, actor=actor, target=lead)
    activity.data = RawSQL(  # noqa: S611
        f"%s::jsonb || jsonb_build_object('agent_id', {ROUTED_AGENT}.id::text)",
        [json.dumps(data)],
        output_field=SPLICED,
    )
    statements.append(insert_sql(activity, source=ROUTED_AGENT, literals=True))
    statements += _routed_agent_told(given, endpoints=endpoints, event_types=event_types)
    ctes = [Cte(f"lead{n}", sql, params) for n, (sql, params) in enumerate(statements)]
    return row, ctes


def _routed_agent_told(given: Lead, *, endpoints, event_types) -> list[tuple[str, list]]:
    """What tells of a lead routed by the pick, as its attached statements: the routed
    agent's notification and its email, and the webhook events `event_types` for
    `endpoints`. `given`: the lead as the agent got it, with the stand-in agent in place
    of the routed one (its values are replaced in SQL)."""
    notification = _new_agent_notification(
        lead=given, agent=STAND_IN_AGENT, kind=NotificationKind.LEAD_ASSIGNED
    )
    email = attach_email(notification)
    email.target = ROUTED_AGENT_EMAIL
    notification.recipient_id = ROUTED_AGENT_ID
    statements = [
        insert_sql(email, source=ROUTED_AGENT, literals=True),
        insert_sql(notification, source=ROUTED_AGENT, literals=True),
    ]
    # The lead as the API shows it, built only for an endpoint to hear it.
    happened = [lead_event(given, event_type) for event_type in event_types] if endpoints else []
    for message in messages_for_events(happened, endpoints):
        message.payload = json_with_routed_agent(message.payload, "body")
        statements.append(insert_sql(message, source=ROUTED_AGENT, literals=True))
    return statements


# What routing gives a waiting lead (with `updated_at`, which moves it to the back of
# the retries).
ROUTED_LEAD_FIELDS = [
    "assigned_agent",
    "assigned_at",
    "unassigned_reason",
    "claim_deadline",
    "updated_at",
]


@transaction.atomic
def route_unassigned_lead(*, tenant: Tenant, lead_id, actor: Actor) -> Lead | None:
    """Try again to give a lead nobody could take (periodic retry, agent back).

    On PostgreSQL every write about a lead that got an agent is attached to the pick,
    the transaction's last statement: the pool's lock is held from it to COMMIT."""
    lead = (
        Lead.objects.for_tenant(tenant)
        .select_for_update(skip_locked=True, of=("self",))
        .select_related("tenant", "team__assignment_config", "team__schedule")
        .filter(pk=lead_id, status=LeadStatus.NEW, assigned_agent__isnull=True)
        .first()
    )
    if lead is None:
        return None
    now = timezone.now()
    decision = None
    if connection.vendor == "postgresql":
        decision = _route_waiting_lead_in_pick(lead, actor=actor, now=now)
    if decision is None:  # SQLite, or the tenant's webhook endpoints kept changing
        decision = route(tenant=tenant, team=lead.team, load=lead_load, work="leads")
    if decision.agent is None:
        # Saved even when unchanged: updated_at moves the lead to the back of the retries.
        lead.unassigned_reason = decision.reason
        lead.save(update_fields=["unassigned_reason", "updated_at"])
        return lead
    if decision.attached:
        log_context.bind(tenant_id=tenant.pk, lead_id=lead.pk)
        return lead
    _start_claim_window(lead, decision.agent, now)
    lead.save(update_fields=ROUTED_LEAD_FIELDS)
    _bump_counter(tenant=tenant, agent_id=decision.agent.pk, delta=+1)
    record_activities(
        [
            build_activity(
                tenant=tenant,
                action="lead.assigned",
                actor=actor,
                target=lead,
                data={"agent_id": str(decision.agent.pk), "strategy": decision.strategy},
            )
        ]
    )
    _notify(
        [
            _new_agent_notification(
                lead=lead, agent=decision.agent, kind=NotificationKind.LEAD_ASSIGNED
            )
        ]
    )
    emit([lead_event(lead, events.LEAD_ASSIGNED)])
    return lead


def retry_unassigned_leads(*, tenant_id=None, limit: int = 100) -> dict:
    """System job: route waiting leads again, least recently tried first, one transaction
    each."""
    waiting = Lead.all_tenants.filter(status=LeadStatus.NEW, assigned_agent__isnull=True).exclude(
        unassigned_reason="manual_strategy"
    )
    if tenant_id is not None:
        waiting = waiting.filter(tenant_id=tenant_id)
    # Least recently tried first, so leads nobody can take yet do not block the rest.
    rows = list(waiting.order_by("updated_at").values_list("pk", "tenant_id")[:limit])
    tenants = Tenant.objects.in_bulk({tenant for _, tenant in rows})
    assigned = 0
    for lead_id, tenant_id_ in rows:
        lead = route_unassigned_lead(
            tenant=tenants[tenant_id_],
            lead_id=lead_id,
            actor=Actor.for_job("retry_unassigned_leads"),
        )
        assigned += bool(lead is not None and lead.assigned_agent_id)
    return {"checked": len(rows), "assigned": assigned}


# --- agent actions ---------------------------------------------------------------------


def _own_lead(*, tenant: Tenant, lead_id, agent: Membership) -> Lead:
    lead = _lock_lead(tenant=tenant, lead_id=lead_id)
    if lead.assigned_agent_id != agent.pk:
        raise Forbidden(code="not_assignee", message="Only the assigned agent can do this.")
    return lead


@transaction.atomic
def claim_lead(*, tenant: Tenant, lead_id, agent: Membership, via: str = "") -> Lead:
    lead = _own_lead(tenant=tenant, lead_id=lead_id, agent=agent)
    if lead.status != LeadStatus.NEW:
        raise Conflict(code="already_claimed", message=f"The lead is already {lead.status}.")
    now = timezone.now()
    lead.status = LeadStatus.CLAIMED
    lead.claimed_at = now
    lead.claim_deadline = None
    lead.contact_deadline = now + timedelta(minutes=tenant.contact_window_minutes)
    lead.save(
        update_fields=["status", "claimed_at", "claim_deadline", "contact_deadline", "updated_at"]
    )
    record_activities(
        [
            build_activity(
                tenant=tenant,
                action="lead.claimed",
                actor=Actor.for_membership(agent, via=via),
                target=lead,
                data={"contact_deadline": lead.contact_deadline.isoformat()},
            )
        ]
    )
    emit([lead_event(lead, events.LEAD_CLAIMED)])
    return lead


@transaction.atomic
def mark_lead_contacted(*, tenant: Tenant, lead_id, agent: Membership, via: str = "") -> Lead:
    lead = _own_lead(tenant=tenant, lead_id=lead_id, agent=agent)
    if lead.status == LeadStatus.NEW:
        raise Conflict(code="not_claimed", message="Claim the lead before marking it contacted.")
    if lead.status != LeadStatus.CLAIMED:
        raise Conflict(code="already_contacted", message=f"The lead is already {lead.status}.")
    lead.status = LeadStatus.CONTACTED
    lead.contacted_at = timezone.now()
    lead.contact_deadline = None
    lead.save(update_fields=["status", "contacted_at", "contact_deadline", "updated_at"])
    record_activities(
        [
            build_activity(
                tenant=tenant,
                action="lead.contacted",
                actor=Actor.for_membership(agent, via=via),
                target=lead,
            )
        ]
    )
    emit([lead_event(lead, events.LEAD_CONTACTED)])
    return lead


@transaction.atomic
def close_lead(*, tenant: Tenant, lead_id, actor: Actor, outcome: str = "") -> Lead:
    """The lead is done (won, lost, duplicate...): timers stop and it leaves the agent's
    open leads, so their counter and capacity free up."""
    lead = _lock_lead(tenant=tenant, lead_id=lead_id)
    if lead.status == LeadStatus.CLOSED:
        raise Conflict(code="lead_closed", message="The lead is already closed.")
    lead.status = LeadStatus.CLOSED
    lead.claim_deadline = None
    lead.contact_deadline = None
    lead.save(update_fields=["status", "claim_deadline", "contact_deadline", "updated_at"])
    _bump_counter(tenant=tenant, agent_id=lead.assigned_agent_id, delta=-1)
    record_activities(
        [
            build_activity(
                tenant=tenant,
                action="lead.closed",
                actor=actor,
                target=lead,
                data={"outcome": outcome, "agent_id": str(lead.assigned_agent_id or "") or None},
            )
        ]
    )
    emit([lead_event(lead, events.LEAD_CLOSED, outcome=outcome)])
    return lead


# --- reassignment ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReassignmentResult:
    """A reassignment done, and what it did to the deadline the lead was running."""

    lead: Lead
    reassignment: LeadReassignment
    # The window running after the reassignment ("claim" or "contact"; None once the lead
    # was contacted) and its deadline.
    window: str | None = None
    deadline: datetime | None = None
    # The deadline running when the lead was reassigned had already passed.
    deadline_passed: bool = False
    # The reassignment replaced that deadline with a fresh window (by its reason, or
    # `restart_window` on a manual one).
    window_restarted: bool = False

    @property
    def breach_at_once(self) -> bool:
        """The new agent got a deadline that had already passed: the sweep records a
        breach against them at once (or the lead is already marked breached)."""
        return self.deadline_passed and not self.window_restarted

    def passed_phrase(self) -> str:
        """e.g. "The contact deadline passed 12 minutes ago"."""
        return deadline_passed_phrase(self.window, self.deadline, self.reassignment.created_at)


def running_window(lead: Lead) -> tuple[str | None, datetime | None]:
    """The SLA window a lead is in and its deadline: claim while new, contact while
    claimed, none after that."""
    if lead.status == LeadStatus.NEW:
        return ReassignmentStage.CLAIM.value, lead.claim_deadline
    if lead.status == LeadStatus.CLAIMED:
        return ReassignmentStage.CONTACT.value, lead.contact_deadline
    return None, None


def deadline_passed_phrase(window: str | None, deadline: datetime, now: datetime) -> str:
    """e.g. "The contact deadline passed 12 minutes ago", as admins read it."""
    if now - deadline < timedelta(minutes=1):
        ago = "less than a minute ago"
    else:
        # timesince joins number and unit with a no-break space; JSON and emails get a space.
        ago = f"{timesince(deadline, now)} ago".replace("\xa0", " ")
    return f"The {window} deadline passed {ago}"


def _check_reason_fits_state(lead: Lead, reason: str) -> None:
    if not lead.is_open:
        raise Conflict(code="lead_closed", message="A closed lead cannot be reassigned.")
    expected = {
        ReassignmentReason.UNCLAIMED: LeadStatus.NEW,
        ReassignmentReason.NO_CONTACT: LeadStatus.CLAIMED,
    }.get(reason)
    if expected is not None and lead.status != expected:
        raise Conflict(
            code="reason_does_not_fit",
            message=f"Reason {reason!r} is for {expected} leads; this lead is {lead.status}.",
            field="reason",
        )


def _reset_timers(lead: Lead, reason: str, now, *, restart_window: bool = False) -> list[str]:
    contact_window = timedelta(minutes=lead.tenant.contact_window_minutes)
    if reason == ReassignmentReason.UNCLAIMED:
        lead.status = LeadStatus.CLAIMED
        lead.claimed_at = now
        lead.claim_deadline = None
        lead.contact_deadline = now + contact_window
        return ["status", "claimed_at", "claim_deadline", "contact_deadline"]
    if reason == ReassignmentReason.NO_CONTACT:
        lead.contact_deadline = now + contact_window
        lead.contact_sla_breached_at = None
        return ["contact_deadline", "contact_sla_breached_at"]
    # Manual: the timers are kept, unless the admin asked for the running window to start
    # again, as the other reasons do. A breach already recorded belongs to the old window.
    if restart_window and lead.status == LeadStatus.NEW and lead.claim_deadline is not None:
        lead.claim_deadline = now + timedelta(minutes=lead.tenant.claim_window_minutes)
        lead.claim_sla_breached_at = None
        return ["claim_deadline", "claim_sla_breached_at"]
    if restart_window and lead.status == LeadStatus.CLAIMED and lead.contact_deadline is not None:
        lead.contact_deadline = now + contact_window
        lead.contact_sla_breached_at = None
        return ["contact_deadline", "contact_sla_breached_at"]
    return []


def _authorize_reassignment(*, tenant: Tenant, actor: Actor, reassigned_by) -> None:
    """Who may move a lead: the system (sweeps, jobs), a superuser, or an active admin or
    super admin of the lead's tenant, named as `reassigned_by` (whatever the channel:
    admin, API key on their behalf, signed-in API)."""
    user = actor.person_user
    if user is None and reassigned_by is None and actor.label == SYSTEM:
        return
    if user is not None and user.is_active and user.is_superuser:
        return
    if (
        reassigned_by is not None
        and reassigned_by.tenant_id == tenant.pk
        and reassigned_by.is_active
        and reassigned_by.is_tenant_admin
    ):
        return
    raise Forbidden(
        code="not_an_admin",
        message="Only an active admin or super admin of the lead's tenant can reassign it.",
        field="reassigned_by_id",
    )


def _reassign_lead(
    *,
    tenant: Tenant,
    lead_id,
    to_agent_id,
    reason: str,
    actor: Actor,
    reassigned_by: Membership | None,
    notes: str = "",
    restart_window: bool = False,
) -> ReassignmentResult:
    """Move a lead to another agent, in one transaction: lock the lead, then both agents
    (in a fixed order); move the lead and reset its timers as the reason says; write the
    history row; move both agents' lead counts; mark the old agent's notices read; notify
    the new agent; record the audit row.

    `reassigned_by` is the admin who decided, or None when the system did (auto-reassign
    on breach). The new agent's email is sent after commit.

    A manual reassignment keeps the timers, so a deadline that has already passed is
    handed to the new agent as it is (the result's `breach_at_once`), unless
    `restart_window` starts the running window again from now. The other reasons always
    start a new window; for them, and for a lead with no window running, the flag changes
    nothing.
    """
    if reason not in ReassignmentReason.values:
        raise InvalidInput(code="invalid_reason", message="Unknown reason.", field="reason")
    _authorize_reassignment(tenant=tenant, actor=actor, reassigned_by=reassigned_by)
    to_agent_id = uuid.UUID(str(to_agent_id))
    lead = _lock_lead(tenant=tenant, lead_id=lead_id)
    log_context.bind(tenant_id=tenant.pk, lead_id=lead.pk)  # on every later line
    old_agent_id = lead.assigned_agent_id
    locked = {
        agent.pk: agent
        for agent in Membership.objects.for_tenant(tenant)
        .select_for_update(of=("self",))
        .select_related("user")
        .filter(pk__in=[pk for pk in (old_agent_id, to_agent_id) if pk is not None])
        .order_by("pk")
    }
    to_agent = locked.get(to_agent_id)
    if to_agent is None or not to_agent.is_active or not to_agent.user.is_active:
        raise NotFound(
            code="agent_not_found",
            message="Target agent not found, inactive, or not in this tenant.",
            field="to_agent_id",
        )
    if to_agent.pk == old_agent_id:
        raise Conflict(
            code="already_assigned",
            message="The lead is already assigned to this agent.",
            field="to_agent_id",
        )
    _check_reason_fits_state(lead, reason)

    now = timezone.now()
    _, previous_deadline = running_window(lead)
    deadline_passed = previous_deadline is not None and previous_deadline <= now  # as the sweep
    timer_fields = _reset_timers(lead, reason, now, restart_window=restart_window)
    window_restarted = previous_deadline is not None and bool(timer_fields)
    lead.previous_agent_id = old_agent_id
    given_fields = _give_lead_to(lead, to_agent, now)
    lead.reassignment_count += 1  # the row is locked, so a plain increment is exact
    lead.reassignment_reason = reason
    lead.reassigned_at = now
    if lead.status == LeadStatus.NEW and lead.claim_deadline is None:
        # A lead that never had an agent starts its claim window now.
        lead.claim_deadline = now + timedelta(minutes=tenant.claim_window_minutes)
        timer_fields.append("claim_deadline")
    lead.save(
        update_fields=[
            *timer_fields,
            *given_fields,
            "previous_agent",
            "reassignment_count",
            "reassignment_reason",
            "reassigned_at",
            "updated_at",
        ]
    )

    reassignment = LeadReassignment.objects.create(
        tenant=tenant,
        lead=lead,
        from_agent_id=old_agent_id,
        to_agent=to_agent,
        reassigned_by=reassigned_by,
        reason=reason,
        stage=STAGE_FOR_REASON[reason],
        notes=notes,
    )
    window, deadline = running_window(lead)
    result = ReassignmentResult(
        lead=lead,
        reassignment=reassignment,
        window=window,
        deadline=deadline,
        deadline_passed=deadline_passed,
        window_restarted=window_restarted,
    )
    _bump_counter(tenant=tenant, agent_id=old_agent_id, delta=-1)
    _bump_counter(tenant=tenant, agent_id=to_agent.pk, delta=+1, assigned_at=now)
    if old_agent_id is not None:
        Notification.objects.for_tenant(tenant).filter(
            recipient_id=old_agent_id, lead=lead, is_read=False
        ).update(is_read=True, read_at=now)
    record_activities(
        [
            build_activity(
                tenant=tenant,
                action="lead.reassigned",
                actor=actor,
                target=lead,
                data={
                    "from_agent_id": str(old_agent_id) if old_agent_id else None,
                    "to_agent_id": str(to_agent.pk),
                    "reason": reason,
                    "stage": reassignment.stage,
                    "notes": notes,
                    "reassignment_id": str(reassignment.pk),
                    "window": window,
                    "previous_deadline": _iso(previous_deadline),
                    "deadline": _iso(deadline),
                    "deadline_passed": deadline_passed,
                    "window_restarted": window_restarted,
                },
            )
        ]
    )
    _notify(
        [
            _new_agent_notification(
                lead=lead,
                agent=to_agent,
                kind=NotificationKind.LEAD_REASSIGNED,
                reason=reason,
                result=result,
            )
        ],
        # The history row does not keep whether the window was restarted; the email
        # (rendered later) tells a restarted window from a kept one by this.
        email_details={"window": window, "window_restarted": window_restarted},
    )
    # A lead nobody had is given its first agent here (manual strategy): say so too.
    first_agent = [lead_event(lead, events.LEAD_ASSIGNED)] if old_agent_id is None else []
    emit(
        [
            *first_agent,
            lead_event(
                lead,
                events.LEAD_REASSIGNED,
                previousAgentId=str(old_agent_id) if old_agent_id else None,
                reason=reason,
                stage=reassignment.stage,
                notes=notes,
                reassignedById=str(reassigned_by.pk) if reassigned_by else None,
                # As the API answers it: was the old deadline already missed, and does
                # the new agent get a fresh window (else the old deadline stands).
                deadlinePassed=deadline_passed,
                windowRestarted=window_restarted,
            ),
        ]
    )
    return result


# The reassignment in a transaction of its own (a savepoint inside the caller's): the
# API's, the admin's. `reassign_by_engine` runs `_reassign_lead` in its retry's savepoint.
reassign_lead = transaction.atomic(_reassign_lead)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


# --- SLA sweeps ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stage:
    name: str
    status: str
    deadline: str
    breached: str
    kind: str
    reason: str


CLAIM_STAGE = _Stage(
    ReassignmentStage.CLAIM,
    LeadStatus.NEW,
    "claim_deadline",
    "claim_sla_breached_at",
    NotificationKind.CLAIM_SLA_BREACHED,
    ReassignmentReason.UNCLAIMED,
)
CONTACT_STAGE = _Stage(
    ReassignmentStage.CONTACT,
    LeadStatus.CLAIMED,
    "contact_deadline",
    "contact_sla_breached_at",
    NotificationKind.CONTACT_SLA_BREACHED,
    ReassignmentReason.NO_CONTACT,
)


@dataclass(frozen=True)
class _Breach:
    """A breach just recorded, of a lead whose tenant wants it reassigned automatically."""

    lead_id: uuid.UUID
    tenant: Tenant
    agent_id: uuid.UUID | None
    deadline: object  # the missed deadline (datetime)


@dataclass(frozen=True)
class _BatchResult:
    recorded: int
    more: bool  # more due leads were waiting beyond this batch
    to_reassign: list[_Breach]


def _insert_rows(model, rows: list[dict], *, ignore_conflicts: bool = False) -> None:
    """INSERT `rows` (attname → value; a missing field gets its default) as VALUES lists,
    in chunks the database accepts: the sweep's rows where `_insert_breach_rows` does not
    build them (SQLite: embedded mode, whose sweeps are small)."""
    if not rows:
        return
    fields = model._meta.concrete_fields
    given = [f for f in fields if f.attname in rows[0]]
    shared = [f for f in fields if f.attname not in rows[0]]
    defaults = [f.get_db_prep_save(f.get_default(), connection) for f in shared]
    on_conflict = OnConflict.IGNORE if ignore_conflicts else None
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in [*given, *shared])
    head = (
        f"{connection.ops.insert_statement(on_conflict=on_conflict)} "
        f"{quote(model._meta.db_table)} ({columns}) "
    )
    tail = connection.ops.on_conflict_suffix_sql(fields, on_conflict, None, None) or ""
    table = [
        [*(f.get_db_prep_save(row[f.attname], connection) for f in given), *defaults]
        for row in rows
    ]
    size = max(1, connection.ops.bulk_batch_size(fields, table))
    row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
    with connection.cursor() as cursor:
        for first in range(0, len(table), size):
            chunk = table[first : first + size]
            cursor.execute(
                f"{head}VALUES {', '.join([row_sql] * len(chunk))} {tail}",
                [value for row in chunk for value in row],
            )


_BREACH_ROW = (
    "pk",
    "tenant_id",
    "name",
    "assigned_agent_id",
    "assigned_agent__user__full_name",
    "assigned_agent__user__email",
    "tenant__timezone",
    "tenant__auto_reassign_on_breach",
    "tenant__has_active_webhooks",
)


def _stamp_batch_with_orm(stage: _Stage, now, batch_size: int) -> tuple[list, bool]:
    due = Lead.all_tenants.filter(  # a system job across every tenant
        status=stage.status,
        **{f"{stage.deadline}__lte": now, f"{stage.breached}__isnull": True},
    )
    ids = list(
        due.order_by(stage.deadline, "pk")
        .select_for_update(skip_locked=True)
        .values_list("pk", flat=True)[: batch_size + 1]
    )
    more = len(ids) > batch_size
    ids = ids[:batch_size]
    if not ids:
        return [], False
    Lead.all_tenants.filter(pk__in=ids, **{f"{stage.breached}__isnull": True}).update(
        **{stage.breached: now}
    )
    # Only the rows this sweep stamped: without row locks (SQLite) a racing sweep could
    # have selected the same ids, and it must not announce them a second time.
    leads = list(
        Lead.all_tenants.filter(pk__in=ids, **{stage.breached: now}).values_list(
            *_BREACH_ROW, stage.deadline, named=True
        )
    )
    return leads, more


# What `_stamp_batch` reads of each stamped lead: what the batch decides in Python (the
# deadline in the tenant's time zone, events, automatic reassignment). The notices' other
# values are read by the statement that writes them (`_insert_breach_rows`).
_STAMPED_ROW = (
    "pk",
    "tenant_id",
    "assigned_agent_id",
    "tenant__timezone",
    "tenant__auto_reassign_on_breach",
    "tenant__has_active_webhooks",
)
_STAMPED_ROW_TYPES: dict = {}


def _stamp_batch(stage: _Stage, now, batch_size: int) -> tuple[list, bool]:
    """Lock, stamp and read one batch in a single statement (PostgreSQL): the due leads
    (one beyond the batch, SKIP LOCKED), the batch's breach stamped, and each stamped
    lead (`_STAMPED_ROW` and its deadline); and whether more were due.

    Oldest deadline first, ties in any order: the index of open windows hands the
    leads over in that order, so a backlog is not sorted whole for every batch (as it
    was with the primary key as tie-breaker), and the batch is stamped through the
    primary key rather than by a join that read every unbreached lead."""
    row_type = _STAMPED_ROW_TYPES.get(stage.deadline)
    if row_type is None:
        row_type = _STAMPED_ROW_TYPES[stage.deadline] = namedtuple(
            "StampedRow", [*_STAMPED_ROW, stage.deadline], rename=True
        )
    quote = connection.ops.quote_name
    lead, breached = quote(Lead._meta.db_table), quote(stage.breached)
    deadline = quote(stage.deadline)
    sql = f"""
        WITH due AS (
            SELECT id, {deadline} AS deadline FROM {lead}
            WHERE status = %s AND {deadline} <= %s AND {breached} IS NULL
            ORDER BY {deadline} LIMIT %s
            FOR UPDATE SKIP LOCKED
        ), stamped AS (
            UPDATE {lead} AS l SET {breached} = %s
            WHERE l.id = ANY(ARRAY(SELECT id FROM due ORDER BY deadline LIMIT %s))
              AND l.{breached} IS NULL
            RETURNING l.id, l.tenant_id, l.assigned_agent_id, l.{deadline}
        )
        SELECT s.id, s.tenant_id, s.assigned_agent_id, t.timezone,
               t.auto_reassign_on_breach, t.has_active_webhooks, s.{deadline},
               (SELECT count(*) FROM due) > %s AS more
        FROM stamped AS s
        JOIN {quote(Tenant._meta.db_table)} AS t ON t.id = s.tenant_id
        ORDER BY s.{deadline}, s.id
    """  # noqa: S608 (names from the model; every value is a parameter)
    params = [stage.status, now, batch_size + 1, now, batch_size, batch_size]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return [], False
    return [row_type(*row[:-1]) for row in rows], rows[0][-1]


@transaction.atomic
def _record_breach_batch(stage: _Stage, now, batch_size: int) -> _BatchResult:
    """Record one batch of missed deadlines of one stage.

    Set-based: the statement count is the same for 1 or `batch_size` leads, and no model
    instance is built per lead or per notice. Rows another sweep is handling are skipped
    (SKIP LOCKED), and the breach column is only set where still empty, so each breach
    is recorded, and announced, exactly once. One row beyond the batch is locked too, so
    the caller knows whether to go on without asking again.
    """
    postgres = connection.vendor == "postgresql"
    if postgres:
        leads, more = _stamp_batch(stage, now, batch_size)
    else:
        leads, more = _stamp_batch_with_orm(stage, now, batch_size)
    if not leads:
        return _BatchResult(recorded=0, more=more, to_reassign=[])
    admins = _admins_of(leads)
    created_at = timezone.now()
    if postgres:
        _insert_breach_rows(stage, leads, admins, created_at)
    else:
        emails, notices, activities = _breach_rows(stage, leads, admins, created_at)
        # The emails first: a notice points at its email. A notice whose breach was
        # already announced (a racing sweep, without row locks) is dropped by its unique
        # dedupe key, and so is its email by its idempotency key.
        _insert_rows(OutboundMessage, emails, ignore_conflicts=True)
        _insert_rows(Notification, notices, ignore_conflicts=True)
        _insert_rows(ActivityLog, activities)
    _emit_breach_events(stage, [lead for lead in leads if lead.tenant__has_active_webhooks])

    auto = {lead.tenant_id for lead in leads if lead.tenant__auto_reassign_on_breach}
    tenants = Tenant.objects.in_bulk(auto) if auto else {}
    to_reassign = [
        _Breach(
            lead_id=lead.pk,
            tenant=tenants[lead.tenant_id],
            agent_id=lead.assigned_agent_id,
            deadline=getattr(lead, stage.deadline),
        )
        for lead in leads
        if lead.tenant_id in auto
    ]
    return _BatchResult(recorded=len(leads), more=more, to_reassign=to_reassign)


def _admins_of(leads: list) -> dict:
    """Who hears of the leads' breaches: per tenant, its active admins and super admins
    (`(membership id, email)`)."""
    admins: dict = {}
    for admin_id, tenant_id, email in Membership.all_tenants.filter(
        tenant_id__in={lead.tenant_id for lead in leads},
        role__in=ADMIN_ROLES,
        is_active=True,
        user__is_active=True,
    ).values_list("pk", "tenant_id", "user__email"):
        admins.setdefault(tenant_id, []).append((admin_id, email))
    return admins


# The words of a breach notice, shared by the two ways of writing it.
_VERB = {CLAIM_STAGE.name: "claimed", CONTACT_STAGE.name: "contacted"}
_NEXT_STEP_AUTO = "It goes to another agent automatically if anyone else is available."
_NEXT_STEP_MANUAL = "Reassign it from the admin."
_NOBODY = "nobody"  # who a lead without an agent was assigned to


def _breach_rows(stage: _Stage, leads: list, admins: dict, created_at):
    """The batch's rows, built in Python (attname → value; `leads`: `_BREACH_ROW` rows):
    per lead and admin a notice and its email, per lead an audit row. The same rows as
    `_insert_breach_rows` writes on PostgreSQL."""
    email_channel = get_channel("email")
    notices, emails, activities = [], [], []
    verb = _VERB[stage.name]
    lead_type = ContentType.objects.get_for_model(Lead)
    job = Actor.for_job("check_sla")
    zones: dict = {}
    for lead in leads:
        deadline = getattr(lead, stage.deadline)
        # format_deadline reads only the tenant's timezone: one stand-in per timezone.
        zone = zones.get(lead.tenant__timezone) or zones.setdefault(
            lead.tenant__timezone, Tenant(timezone=lead.tenant__timezone)
        )
        who = (
            (lead.assigned_agent__user__full_name or lead.assigned_agent__user__email)
            if lead.assigned_agent_id
            else _NOBODY
        )
        next_step = _NEXT_STEP_AUTO if lead.tenant__auto_reassign_on_breach else _NEXT_STEP_MANUAL
        title = f"Lead not {verb} in time: {lead.name}"[:200]
        body = (
            f"{lead.name} was assigned to {who} and not {verb} by "
            f"{format_deadline(deadline, zone)}. {next_step}"
        )
        dedupe_key = f"{stage.kind}:{lead.pk}:{deadline.isoformat()}"
        lead_admins = admins.get(lead.tenant_id, [])
        for admin_id, email in lead_admins:
            notice_id, message_id = uuid.uuid4(), uuid.uuid4()
            emails.append(
                _breach_email(
                    email_channel,
                    lead,
                    admin_id,
                    email,
                    notice_id,
                    message_id,
                    stage,
                    dedupe_key,
                    created_at,
                )
            )
            notices.append(
                {
                    "id": notice_id,
                    "tenant_id": lead.tenant_id,
                    "recipient_id": admin_id,
                    "lead_id": lead.pk,
                    "kind": stage.kind,
                    "title": title,
                    "body": body,
                    "dedupe_key": dedupe_key,
                    "email_message_id": message_id,
                    "created_at": created_at,
                }
            )
        activities.append(
            {
                "id": uuid.uuid4(),
                "tenant_id": lead.tenant_id,
                "created_at": created_at,
                "action": f"lead.{stage.kind}",
                "actor_id": None,
                "actor_user_id": None,
                "actor_label": job.label,
                "via": job.via,
                "target_type_id": lead_type.pk,
                "target_id": str(lead.pk),
                "target_label": lead.name[:255],
                "data": {
                    "deadline": deadline.isoformat(),
                    "agent_id": str(lead.assigned_agent_id) if lead.assigned_agent_id else None,
                    "admins_notified": len(lead_admins),
                },
            }
        )
    return emails, notices, activities


def _breach_email(
    channel, lead, admin_id, email, notice_id, message_id, stage, dedupe_key, now
) -> dict:
    """The outbox row `leads.emails.attach_email` would build for this notice, as a row."""
    payload = {"renderer": EMAIL_RENDERER, "notification_id": str(notice_id)}
    return {
        "id": message_id,
        "tenant_id": lead.tenant_id,
        "channel": channel.name,
        "kind": f"lead.{stage.kind}",
        "target": email or "",
        "endpoint_key": channel.endpoint_key(
            tenant_id=lead.tenant_id, target=email or "", payload=payload
        )[:255],
        "payload": payload,
        "ordering_key": "",
        "idempotency_key": f"lead-notification/{admin_id}/{dedupe_key}",
        "status": MessageStatus.PENDING,
        "max_attempts": channel.max_attempts or settings.OUTBOX_MAX_ATTEMPTS,
        "next_attempt_at": now,
        "created_at": now,
        "updated_at": now,
    }


def _insert_select(model, values: dict[str, str], source: str, tail: str = "") -> str:
    """`INSERT INTO <model's table> (<every column>) SELECT … FROM <source> <tail>`:
    `values` maps attnames to SQL expressions; every other column gets its default, the
    parameter `%(default_<attname>)s` (`_insert_defaults`)."""
    quote = connection.ops.quote_name
    fields = model._meta.concrete_fields
    unknown = set(values) - {f.attname for f in fields}
    if unknown:
        raise ValueError(f"{model.__name__} has no {', '.join(sorted(unknown))}")
    columns = ", ".join(quote(f.column) for f in fields)
    selected = ", ".join(
        values.get(f.attname) or f"%(default_{f.attname})s::{f.db_type(connection)}" for f in fields
    )
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({columns}) "  # noqa: S608
        f"SELECT {selected} FROM {source} {tail}"
    )


def _insert_defaults(model, values: dict[str, str]) -> dict:
    """The parameters `_insert_select` leaves for the columns `values` does not give."""
    return {
        f"default_{f.attname}": f.get_db_prep_save(f.get_default(), connection)
        for f in model._meta.concrete_fields
        if f.attname not in values
    }


# The rows of `_insert_breach_rows`, column by column, as `_breach_rows` builds them:
# `p` is a lead (`text`) paired with one of its tenant's admins, `l` a lead.
_BREACH_EMAIL = {
    "id": "p.message_id",
    "tenant_id": "p.tenant_id",
    "channel": "%(channel)s::text",
    "kind": "%(action)s::text",
    "target": "p.email",
    "endpoint_key": "p.endpoint_key",
    "payload": "jsonb_build_object("
    "'renderer', %(renderer)s::text, 'notification_id', p.notice_id::text)",
    "ordering_key": "''",
    "idempotency_key": "'lead-notification/' || p.admin_id::text || '/' || p.dedupe_key",
    "status": "%(pending)s::text",
    "max_attempts": "%(max_attempts)s::integer",
    "next_attempt_at": "%(now)s::timestamptz",
    "created_at": "%(now)s::timestamptz",
    "updated_at": "%(now)s::timestamptz",
}
_BREACH_NOTICE = {
    "id": "p.notice_id",
    "tenant_id": "p.tenant_id",
    "recipient_id": "p.admin_id",
    "lead_id": "p.lead_id",
    "kind": "%(kind)s::text",
    "title": "p.title",
    "body": "p.body",
    "dedupe_key": "p.dedupe_key",
    "email_message_id": "p.message_id",
    "created_at": "%(now)s::timestamptz",
}
_BREACH_ACTIVITY = {
    "id": "gen_random_uuid()",
    "tenant_id": "l.tenant_id",
    "created_at": "%(now)s::timestamptz",
    "action": "%(action)s::text",
    "actor_label": "%(actor_label)s::text",
    "via": "%(via)s::text",
    "target_type_id": "%(target_type)s::integer",
    "target_id": "l.id::text",
    "target_label": "left(l.name, 255)",
    "data": "jsonb_build_object('deadline', l.deadline, 'agent_id', l.agent_id::text,"
    " 'admins_notified', coalesce(n.admins, 0))",
}
_BREACH_SQL: dict = {}


def _breach_sql(stage: _Stage) -> str:
    """The statement of `_insert_breach_rows` for `stage`, built once: the same text
    every batch, which psycopg prepares once a connection has run it a few times."""
    sql = _BREACH_SQL.get(stage.name)
    if sql is not None:
        return sql
    quote = connection.ops.quote_name
    # The deadline as `datetime.isoformat()` writes it in UTC (as Django reads it):
    # microseconds only when there are any.
    utc = f"(l.{quote(stage.deadline)} AT TIME ZONE 'UTC')"
    iso = (
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN to_char({utc}, 'US') = "
        f"'000000' THEN '' ELSE '.' || to_char({utc}, 'US') END || '+00:00'"
    )
    conflicts = "ON CONFLICT DO NOTHING"  # as `_breach_rows`' (see `_insert_breach_rows`)
    emails = _insert_select(OutboundMessage, _BREACH_EMAIL, "pair AS p", conflicts)
    notices = _insert_select(Notification, _BREACH_NOTICE, "pair AS p", conflicts)
    activities = _insert_select(
        ActivityLog, _BREACH_ACTIVITY, "lead AS l LEFT JOIN admins AS n USING (tenant_id)"
    )
    sql = _BREACH_SQL[stage.name] = f"""
        WITH lead AS MATERIALIZED (
            SELECT l.id, l.tenant_id, l.name, l.assigned_agent_id AS agent_id,
                   given.deadline_text, {iso} AS deadline,
                   CASE WHEN l.assigned_agent_id IS NULL THEN %(nobody)s::text
                        ELSE coalesce(nullif(u.full_name, ''), u.email) END AS who,
                   l.tenant_id = ANY(%(auto_tenant_ids)s::uuid[]) AS auto
            FROM unnest(%(lead_ids)s::uuid[], %(deadline_texts)s::text[])
                AS given(id, deadline_text)
            JOIN {quote(Lead._meta.db_table)} AS l ON l.id = given.id
            LEFT JOIN {quote(Membership._meta.db_table)} AS m ON m.id = l.assigned_agent_id
            LEFT JOIN {quote(User._meta.db_table)} AS u ON u.id = m.user_id
        ), text AS (
            SELECT id, tenant_id,
                   left('Lead not ' || %(verb)s::text || ' in time: ' || name, 200) AS title,
                   name || ' was assigned to ' || who || ' and not ' || %(verb)s::text
                   || ' by ' || deadline_text || '. '
                   || CASE WHEN auto THEN %(next_auto)s::text ELSE %(next_manual)s::text END
                   AS body,
                   %(kind)s::text || ':' || id::text || ':' || deadline AS dedupe_key
            FROM lead
        ), admin AS (
            SELECT * FROM unnest(
                %(admin_tenant_ids)s::uuid[], %(admin_ids)s::uuid[],
                %(admin_emails)s::text[], %(endpoint_keys)s::text[]
            ) AS a(tenant_id, id, email, endpoint_key)
        ), pair AS MATERIALIZED (
            SELECT t.id AS lead_id, t.tenant_id, t.title, t.body, t.dedupe_key,
                   a.id AS admin_id, a.email, a.endpoint_key,
                   gen_random_uuid() AS notice_id, gen_random_uuid() AS message_id
            FROM text AS t JOIN admin AS a ON a.tenant_id = t.tenant_id
        ), admins AS (
            SELECT tenant_id, count(*) AS admins FROM admin GROUP BY tenant_id
        ), email AS ({emails}
        ), notice AS ({notices}
        )
        {activities}
    """  # noqa: S608 (names from the models; every value is a parameter)
    return sql


def _insert_breach_rows(stage: _Stage, leads: list, admins: dict, created_at) -> None:
    """Write the batch's notices, their emails and its audit rows in one statement
    (PostgreSQL; `leads`: `_stamp_batch` rows): the rows `_breach_rows` builds in
    Python, built by the server, which pairs each lead with its tenant's admins.

    Building and sending tens of thousands of rows was most of a big sweep's time; what
    travels now is what only Python knows: each deadline in its tenant's time zone, as
    every notice shows it (`format_deadline`, with Python's time zone data), the tenants
    that reassign automatically (as this batch read them) and each admin with the
    outbox endpoint of its email. A notice (or email) whose breach was announced before
    is dropped by its unique dedupe (idempotency) key, as `_breach_rows`' are.
    """
    email_channel = get_channel("email")
    job = Actor.for_job("check_sla")
    # Which far side an admin's email goes to depends on the tenant and the address,
    # not on the notice: one key per admin.
    shared_payload = {"renderer": EMAIL_RENDERER}
    batch_admins = [
        (tenant_id, admin_id, email or "")
        for tenant_id in dict.fromkeys(lead.tenant_id for lead in leads)
        for admin_id, email in admins.get(tenant_id, [])
    ]
    zones: dict = {}
    deadline_texts = []
    for lead in leads:
        zone = zones.get(lead.tenant__timezone) or zones.setdefault(
            lead.tenant__timezone, Tenant(timezone=lead.tenant__timezone)
        )
        deadline_texts.append(format_deadline(getattr(lead, stage.deadline), zone))
    params = {
        "lead_ids": [lead.pk for lead in leads],
        "deadline_texts": deadline_texts,
        "auto_tenant_ids": list(
            {lead.tenant_id for lead in leads if lead.tenant__auto_reassign_on_breach}
        ),
        "admin_tenant_ids": [tenant_id for tenant_id, _, _ in batch_admins],
        "admin_ids": [admin_id for _, admin_id, _ in batch_admins],
        "admin_emails": [email for _, _, email in batch_admins],
        "endpoint_keys": [
            email_channel.endpoint_key(tenant_id=tenant_id, target=email, payload=shared_payload)[
                :255
            ]
            for tenant_id, _, email in batch_admins
        ],
        "now": created_at,
        "verb": _VERB[stage.name],
        "nobody": _NOBODY,
        "next_auto": _NEXT_STEP_AUTO,
        "next_manual": _NEXT_STEP_MANUAL,
        "kind": str(stage.kind),
        "action": f"lead.{stage.kind}",
        "channel": email_channel.name,
        "renderer": EMAIL_RENDERER,
        "pending": str(MessageStatus.PENDING),
        "max_attempts": email_channel.max_attempts or settings.OUTBOX_MAX_ATTEMPTS,
        "actor_label": job.label,
        "via": job.via,
        "target_type": ContentType.objects.get_for_model(Lead).pk,
        **_insert_defaults(OutboundMessage, _BREACH_EMAIL),
        **_insert_defaults(Notification, _BREACH_NOTICE),
        **_insert_defaults(ActivityLog, _BREACH_ACTIVITY),
    }
    with connection.cursor() as cursor:
        cursor.execute(_breach_sql(stage), params)


def _emit_breach_events(stage: _Stage, leads: list) -> None:
    """The `lead.sla_breached` events of the batch's leads whose tenant has endpoints,
    each lead shown as the leads API shows it (one serializer for all of them)."""
    if not leads:
        return
    full = list(
        Lead.all_tenants.filter(pk__in=[lead.pk for lead in leads]).select_related(
            "tenant", "assigned_agent__user"
        )
    )
    shown = LeadOutput(full, many=True).data
    emit(
        [
            Event(
                tenant_id=lead.tenant_id,
                type=events.LEAD_SLA_BREACHED,
                data={
                    **data,
                    "stage": str(stage.name),
                    "deadline": getattr(lead, stage.deadline).isoformat(),
                },
                subject_id=str(lead.pk),
            )
            for lead, data in zip(full, shown, strict=True)
        ]
    )


@transaction.atomic
def _auto_reassign(breach: _Breach, stage: _Stage) -> bool:
    """Tenant policy: give a breached lead to someone else, as the system.

    Runs after the batch has committed, one lead per transaction: a batch never holds a
    tenant's round-robin cursor and agents while it routes hundreds of leads, and each
    transaction takes its locks in the usual order (the lead, then agents). The lead is
    locked again and left alone if anyone acted on it in between.
    """
    lead = first_locked(
        Lead.objects.for_tenant(breach.tenant).filter(pk=breach.lead_id),
        related=("team__assignment_config", "team__schedule"),
    )
    if (
        lead is None
        or lead.status != stage.status
        or getattr(lead, stage.breached) is None
        or lead.assigned_agent_id != breach.agent_id
        or getattr(lead, stage.deadline) != breach.deadline
    ):
        return False
    try:
        decision, _ = reassign_by_engine(
            tenant=breach.tenant,
            lead=lead,
            reason=stage.reason,
            actor=Actor.for_job("check_sla"),
            reassigned_by=None,
            notes=f"Automatic: {stage.name} window missed.",
        )
    except Conflict as refused:
        if refused.code != "agents_kept_filling":
            raise
        # Nothing was written; as when nobody could take it, the lead stays.
        logger.info(
            "Lead %s breached %s; every agent picked for it lost its room first (%s)",
            lead.pk,
            stage.name,
            refused.code,
        )
        return False
    if decision.agent is None:
        logger.info(
            "Lead %s breached %s; nobody else can take it (%s)",
            lead.pk,
            stage.name,
            decision.reason,
        )
        return False
    return True


class _PickStale(Exception):
    """Between this pick's read and its writes another pick moved the pool's cursor, or
    the agent it chose lost its room (filled by other work, away, deactivated)."""


# Picks whose cursor another pick moved first are undone and run again this many times;
# then the pool's cursor is locked by the pick and held to COMMIT.
CURSOR_TRIES = 3
# Picks under the cursor's lock whose agent lost its room to a pick of another pool.
ROOM_TRIES = 3


def _has_room(agent: Membership) -> bool:
    """Whether an agent read under its row lock can take one more lead, as a pick would
    have it: online, below capacity by its lead counter (`_reassign_lead` refuses an
    inactive one)."""
    return agent.presence == Presence.ONLINE and (
        agent.capacity is None or agent.current_lead_count < agent.capacity
    )


def _reassign_if_room(*, tenant: Tenant, lead: Lead, agent_id, reassignment: dict):
    """`_reassign_lead` to the picked agent, checked once its row is locked as the pick
    would (`_has_room`; deactivated since the pick: refused): _PickStale when it lost
    its room since the pick read it (the caller rolls the reassignment back)."""
    try:
        result = _reassign_lead(
            tenant=tenant, lead_id=lead.pk, to_agent_id=agent_id, **reassignment
        )
    except NotFound as missing:
        if missing.field != "to_agent_id":
            raise
        raise _PickStale from missing
    # The agent as locked, before this lead was counted on it.
    if not _has_room(result.reassignment.to_agent):
        raise _PickStale
    return result


def reassign_by_engine(*, tenant: Tenant, lead: Lead, **reassignment):
    """Give a lead (locked by the caller's transaction) to another agent the engine
    picks, by `reassign_lead` (`reassignment`: its reason, actor, notes): (the decision,
    the reassignment's result or None when nobody could take it).

    The pick locks nothing (`cursor_last`): the reassignment, whose writes lock both
    agents in primary-key order like every other reassignment, runs first, and the
    pool's round-robin cursor is moved last, so it is locked from that statement to
    COMMIT alone. If another pick moved the cursor in between, or holds it right now,
    the reassignment is undone (a savepoint, which also lets go of the agents' rows)
    and the pick runs again; after CURSOR_TRIES the pick locks the cursor first and
    holds it to COMMIT, the lock order of every other pick.

    The pick reads its agent without locking it: a pick of another pool the agent is
    in (another team, a role tier) may fill it, or the agent may go away or be
    deactivated, before the reassignment locks its row, and this pool's cursor does not
    tell. So the locked row is checked as the pick would (`_reassign_if_room`): an agent
    without room is undone and picked again, under the cursor's lock once it is held
    (up to ROOM_TRIES picks; then Conflict `agents_kept_filling`, nothing written)."""
    exclude = [lead.assigned_agent_id] if lead.assigned_agent_id else []

    def pick(*, cursor_last: bool):
        return route(
            tenant=tenant,
            team=lead.team,
            work="leads",
            exclude_agent_ids=exclude,
            lock_agents=False,
            cursor_last=cursor_last,
        )

    for _ in range(CURSOR_TRIES):
        try:
            with transaction.atomic():
                decision = pick(cursor_last=True)
                if decision.agent is None:
                    return decision, None
                # In this savepoint itself, not one of its own: rows locked in a savepoint
                # released into this one are waited for by others as if locked by the
                # whole transaction (PostgreSQL waits for the top-level transaction of a
                # subtransaction that committed), so they would wait past this savepoint's
                # rollback, for the try after it: a deadlock.
                result = _reassign_if_room(
                    tenant=tenant, lead=lead, agent_id=decision.agent.pk, reassignment=reassignment
                )
                if not advance_cursor(tenant=tenant, decision=decision):
                    raise _PickStale
                return decision, result
        except _PickStale:
            continue
    # The pick locks the cursor and moves it; from here on this transaction holds it to
    # COMMIT, so a pick of this pool cannot come in between again.
    try:
        return _reassign_under_the_cursor(pick, tenant=tenant, lead=lead, reassignment=reassignment)
    except _NobodyLeft as nobody:
        return nobody.decision, None


class _NobodyLeft(Exception):
    """Nobody is left to pick once agents without room were left out (the decision)."""

    def __init__(self, decision):
        super().__init__()
        self.decision = decision


@transaction.atomic  # a Conflict, or nobody left, leaves the cursors as they were
def _reassign_under_the_cursor(pick, *, tenant: Tenant, lead: Lead, reassignment: dict):
    """`reassign_by_engine`'s picks that lock the pool's cursor, up to ROOM_TRIES: an
    agent without room is undone (the reassignment's own savepoint, which lets go of
    its agents' rows: nothing rolls back past it while others wait) and picked again
    under the lock. When nobody is left, _NobodyLeft, and the cursors' moves and locks
    are undone too, as a pick that finds nobody leaves them."""
    for _ in range(ROOM_TRIES):
        decision = pick(cursor_last=False)
        if decision.agent is None:
            raise _NobodyLeft(decision)
        try:
            with transaction.atomic():
                result = _reassign_if_room(
                    tenant=tenant, lead=lead, agent_id=decision.agent.pk, reassignment=reassignment
                )
            return decision, result
        except _PickStale:
            continue
    raise Conflict(
        code="agents_kept_filling",
        message=(
            "Every agent picked for the lead lost its room (other work, away or"
            " deactivated) before it could be given the lead; try again."
        ),
        field="lead",
    )


def sweep_sla_breaches(
    *, now=None, batch_size: int = SWEEP_BATCH_SIZE, workers: int | None = None
) -> dict:
    """Stage 1 (claim window) and stage 2 (contact window): record every missed deadline.

    A backlog (more than one batch due) is shared with `workers - 1` helper threads, each
    on its own database connection (PostgreSQL only, and not inside a caller's
    transaction, whose rows they could not see). Batches are independent: SKIP LOCKED
    hands each due lead to one of them, and most of a batch's work is the database's, so
    two connections drain a backlog much faster than one.

    `workers` defaults to the setting SLA_SWEEP_CONNECTIONS (2).

    Returns how many breaches each stage recorded: `{"claim": n, "contact": m}`.
    """
    now = now or timezone.now()
    if workers is None:
        workers = settings.SLA_SWEEP_CONNECTIONS
    counts = {}
    for stage in (CLAIM_STAGE, CONTACT_STAGE):
        recorded, more = _sweep_batch(stage, now, batch_size)
        if more:
            recorded += _sweep_backlog(stage, now, batch_size, workers)
        counts[stage.name] = recorded
    return counts


def _sweep_batch(stage: _Stage, now, batch_size: int) -> tuple[int, bool]:
    """Record one batch, then move its leads whose tenant asks for it: how many breaches
    it recorded, and whether more were due."""
    batch = _record_breach_batch(stage, now, batch_size)
    LEAD_SLA_BREACHES.labels(stage=stage.name).inc(batch.recorded)  # committed
    for breach in batch.to_reassign:
        lead_fields = {"tenant_id": str(breach.tenant.pk), "lead_id": str(breach.lead_id)}
        try:
            # Every line about this lead names it; the next lead starts afresh.
            with log_context.bound(**lead_fields):
                _auto_reassign(breach, stage)
        except (DomainError, DatabaseError):
            # The breach is recorded and the admins told; one lead that cannot be
            # moved (its transaction rolled back) must not stop the sweep.
            logger.exception(
                "Automatic reassignment of lead %s failed",
                breach.lead_id,
                extra=lead_fields,
            )
    return batch.recorded, batch.more


def _sweep_batches(stage: _Stage, now, batch_size: int, stop=None) -> int:
    """Batch after batch until none is due (or `stop` is set): how many breaches they
    recorded."""
    total, more = 0, True
    while more and not (stop is not None and stop.is_set()):
        recorded, more = _sweep_batch(stage, now, batch_size)
        total += recorded
    return total


def _sweep_backlog(stage: _Stage, now, batch_size: int, workers: int) -> int:
    """The rest of a stage's backlog, with helpers where they can see the same rows.

    When the sweep's thread runs out of due leads, the helpers go on until they do too:
    the last leads may be the ones a helper had locked (SKIP LOCKED hid them from the
    sweep's thread), and only the helper holding them knows more are due. When the
    sweep's thread fails or is stopped (a task's soft time limit included), the helpers
    stop after the batch in hand. Either way the sweep waits for them, so none outlives
    its sweep with a connection of its own."""
    helpers = []
    if workers > 1 and connection.vendor == "postgresql" and not connection.in_atomic_block:
        stop = threading.Event()
        helpers = [_SweepHelper(stage, now, batch_size, stop) for _ in range(workers - 1)]
    try:
        for helper in helpers:
            helper.start()
        total = _sweep_batches(stage, now, batch_size)
    except BaseException:
        _wait_for([helper for helper in helpers if helper.ident is not None], stop_first=True)
        raise
    _wait_for(helpers, stop_first=False)
    for helper in helpers:
        if helper.error is not None:
            raise helper.error
        total += helper.recorded
    return total


def _wait_for(helpers: list, *, stop_first: bool) -> None:
    """Join the helpers; told to stop first, or as soon as the wait is interrupted (e.g.
    a soft time limit while they finish the backlog), which is raised once they are
    done."""
    if not helpers:
        return
    if stop_first:
        helpers[0].stop.set()
    interrupted = None
    for helper in helpers:
        while True:
            try:
                helper.join()
                break
            except BaseException as exc:
                helpers[0].stop.set()
                interrupted = interrupted or exc
    if interrupted is not None:
        raise interrupted


class _SweepHelper(threading.Thread):
    """`_sweep_batches` on a connection of its own until `stop`; its count, or its
    error, is the sweep's (log lines keep the sweep's context)."""

    def __init__(self, stage: _Stage, now, batch_size: int, stop: threading.Event):
        super().__init__(name=f"sla-sweep-{stage.name}", daemon=True)
        self.sweep = (stage, now, batch_size, stop)
        self.stop = stop
        self.context = contextvars.copy_context()
        self.recorded = 0
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.recorded = self.context.run(_sweep_batches, *self.sweep)
        except Exception as exc:  # raised again by the sweep's thread
            self.error = exc
            logger.exception("An SLA sweep helper failed")
        finally:
            connection.close()  # this thread's own


# --- counters --------------------------------------------------------------------------


def reconcile_lead_counts(*, fix: bool = False, tenant: Tenant | None = None) -> list[CounterDrift]:
    """Compare every agent's `current_lead_count` with its open leads; repair if asked
    (teams.services.reconcile_agent_counter)."""
    return reconcile_agent_counter(
        counter="current_lead_count",
        actual=Count("leads", filter=Q(leads__status__in=OPEN_LEAD_STATUSES)),
        count_now=lambda agent: (
            Lead.objects.for_tenant(agent.tenant_id)
            .filter(assigned_agent=agent, status__in=OPEN_LEAD_STATUSES)
            .count()
        ),
        fix=fix,
        tenant=tenant,
    )
