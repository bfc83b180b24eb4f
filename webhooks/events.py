"""Event types, and how an event becomes outbox messages.

Callers (the services of inbox and leads, and the outbox's `message_failed` signal) call
`emit()` inside the transaction of the change, so an event exists exactly when its change
does. Each active endpoint of the tenant that wants the type gets one outbox message on
the `webhook` channel, whose body is fixed now: every retry sends the same bytes with the
same `webhook-id`. Events about one object reach one endpoint in order (ordering key).
"""

import json
import uuid
from dataclasses import dataclass, field

from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from outbox.services import build_message, queue_messages
from teams.routing import PickRefused
from webhooks.models import WebhookEndpoint
from webhooks.selectors import active_endpoint_exists_sql

SESSION_CREATED = "session.created"
SESSION_ASSIGNED = "session.assigned"
SESSION_UNASSIGNED = "session.unassigned"
SESSION_CLOSED = "session.closed"
SESSION_ACCEPTED = "session.accepted"
SESSION_ACCEPT_MISSED = "session.accept_missed"
LEAD_CREATED = "lead.created"
LEAD_ASSIGNED = "lead.assigned"
LEAD_CLAIMED = "lead.claimed"
LEAD_CONTACTED = "lead.contacted"
LEAD_SLA_BREACHED = "lead.sla_breached"
LEAD_REASSIGNED = "lead.reassigned"
LEAD_CLOSED = "lead.closed"
MESSAGE_FAILED = "message.failed"
WEBHOOK_TEST = "webhook.test"  # sent on request to one endpoint, whatever it subscribed to

EVENT_TYPES = {
    SESSION_CREATED: "A handover opened a new session for a contact.",
    SESSION_ASSIGNED: "A session got an agent (handover, retry job, an admin, a transfer).",
    SESSION_UNASSIGNED: "Routing left a session without an agent; `unassignedReason` says why.",
    SESSION_CLOSED: "The conversation is over: the bot may take over again.",
    SESSION_ACCEPTED: "The assigned agent accepted the session (accept window).",
    SESSION_ACCEPT_MISSED: (
        "The agent did not accept the session in time; `missedAgentId`, `misses`. A "
        "`session.assigned` or `session.unassigned` follows when it moves on."
    ),
    LEAD_CREATED: "A lead came in.",
    LEAD_ASSIGNED: "A lead got its first agent.",
    LEAD_CLAIMED: "The agent claimed the lead.",
    LEAD_CONTACTED: "The agent contacted the lead.",
    LEAD_SLA_BREACHED: "A claim or contact window ran out; `stage` is `claim` or `contact`.",
    LEAD_REASSIGNED: (
        "A lead moved to another agent; `previousAgentId`, `reason`, `stage`, `notes`,"
        " `reassignedById`, `deadlinePassed`, `windowRestarted`."
    ),
    LEAD_CLOSED: "A lead was closed.",
    MESSAGE_FAILED: "A WhatsApp confirmation or an email finally failed.",
}


@dataclass(frozen=True)
class Event:
    tenant_id: object
    type: str
    data: dict
    # The object the event is about: its events reach each endpoint in order.
    subject_id: str = ""
    timestamp: object = field(default_factory=timezone.now)


def event_body(event: Event) -> str:
    return json.dumps(
        {"type": event.type, "timestamp": event.timestamp.isoformat(), "data": event.data},
        cls=DjangoJSONEncoder,
        separators=(",", ":"),
    )


def new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def message_for(endpoint: WebhookEndpoint, event: Event, *, webhook_id: str | None = None):
    webhook_id = webhook_id or new_webhook_id()
    return build_message(
        tenant=endpoint.tenant_id,
        channel="webhook",
        kind=event.type,
        target=endpoint.url,
        payload={
            "endpoint_id": str(endpoint.pk),
            "webhook_id": webhook_id,
            "type": event.type,
            "body": event_body(event),
        },
        idempotency_key=webhook_id,
        ordering_key=f"{endpoint.pk}:{event.subject_id}" if event.subject_id else "",
    )


def emit(events: list[Event]) -> int:
    """Queue each event for every active endpoint of its tenant that wants it, in the
    caller's transaction (one query for the endpoints, one insert); how many messages.

    The endpoints are always read, never taken from `Tenant.has_active_webhooks` of the
    caller's tenant: that may be a few seconds old (the API key's cache), and a tenant's
    first endpoint would miss the events of those seconds."""
    if not events:
        return 0
    messages = messages_for_events(events, active_endpoints({e.tenant_id for e in events}))
    queue_messages(messages)
    return len(messages)


def active_endpoints(tenant_ids) -> list[WebhookEndpoint]:
    """The active endpoints of these tenants, oldest first. Deliberately across tenants
    (a sweep covers many); `messages_for_events` matches each event with its own
    tenant's endpoints only."""
    return list(
        WebhookEndpoint.all_tenants.filter(tenant_id__in=tenant_ids, is_active=True).order_by(
            "created_at"
        )
    )


def messages_for_events(events: list[Event], endpoints: list[WebhookEndpoint]) -> list:
    """The unsaved messages of `events`: one per endpoint of the event's tenant that
    wants its type."""
    return [
        message_for(endpoint, event)
        for event in events
        for endpoint in endpoints
        if endpoint.tenant_id == event.tenant_id and endpoint.wants(event.type)
    ]


class EndpointsKeptChanging(Exception):
    """The tenant's active endpoints changed after every read (`pick_with_endpoints`)."""


# Endpoints read again when one was added between the read and the pick, this many
# times before the caller writes its events after the pick instead (`emit`).
ENDPOINT_READS = 3


def pick_with_endpoints(tenant_id, pick):
    """`pick(endpoints, only_if)`: a pick (teams.routing `route(only_if=…)`) that writes
    the events for `endpoints`, the tenant's active endpoints read just before it, among
    its attached statements, so the pool's lock is held for that statement alone.
    `only_if` holds while the tenant has no active endpoint besides those, in the pick's
    own snapshot: one added in between, by any process, makes the pick write nothing
    (PickRefused) and the endpoints are read again. EndpointsKeptChanging after
    ENDPOINT_READS reads; nothing was written.

    Not caught: an endpoint switched off, or given other event types, in between still
    gets the events as read."""
    for _ in range(ENDPOINT_READS):
        endpoints = active_endpoints({tenant_id})
        exists_sql, exists_params = active_endpoint_exists_sql(
            tenant=tenant_id, besides=[endpoint.pk for endpoint in endpoints]
        )
        try:
            return pick(endpoints, (f"NOT {exists_sql}", exists_params))
        except PickRefused:
            continue
    raise EndpointsKeptChanging
