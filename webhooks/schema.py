"""The events, as the OpenAPI schema documents them (OpenAPI 3.1 `webhooks`), each with
an example body. The README shows the same examples."""

from drf_spectacular.utils import OpenApiExample, OpenApiWebhook, extend_schema
from rest_framework import serializers

from webhooks import events

AGENT = {"id": "5b0c8c43-7c33-4d0b-9a43-8a4a4d5f0f10", "name": "Alice Member"}
AGENT_WITH_EMAIL = {**AGENT, "email": "alice@demo.test"}
SESSION = {
    "sessionId": "0f2d9a8e-3b1c-4a57-9d2e-6a3f1b7c5e21",
    "sessionCreated": False,
    "status": "assigned",
    "assignedAgent": AGENT_WITH_EMAIL,
    "teamId": None,
    "strategy": "round_robin",
    "unassignedReason": None,
    "confirmationMessage": "queued",
    "contactId": "+4915112345678",
    "channel": "whatsapp",
    "sessionStatus": "open",
    "closedAt": None,
}
LEAD = {
    "id": "8c1e6f0a-2d4b-4f7e-9b1a-3c5d7e9f1a2b",
    "name": "Jane Roe",
    "phone": "+4915112345678",
    "email": "jane@example.test",
    "source": "website",
    "status": "new",
    "team_id": None,
    "assigned_agent": {"id": AGENT["id"], "name": AGENT["name"], "email": "alice@demo.test"},
    "assigned_at": "2026-11-23T10:00:00Z",
    "unassigned_reason": "",
    "previous_agent_id": None,
    "reassignment_count": 0,
    "reassignment_reason": "",
    "reassigned_at": None,
    "claim_deadline": "2026-11-23T10:05:00Z",
    "claimed_at": None,
    "claim_sla_breached_at": None,
    "contact_deadline": None,
    "contacted_at": None,
    "contact_sla_breached_at": None,
    "created_at": "2026-11-23T10:00:00Z",
    "url": "https://handover.example.com/leads/8c1e6f0a-2d4b-4f7e-9b1a-3c5d7e9f1a2b/",
}
PREVIOUS_AGENT_ID = "9d7e1c2b-4a3f-4e5d-8c6b-1a2b3c4d5e6f"

EXAMPLE_DATA = {
    events.SESSION_CREATED: {**SESSION, "sessionCreated": True},
    events.SESSION_ASSIGNED: {**SESSION, "tier": "member"},
    events.SESSION_UNASSIGNED: {
        **SESSION,
        "status": "unassigned",
        "assignedAgent": None,
        "unassignedReason": "all_at_capacity",
    },
    events.SESSION_CLOSED: {
        **SESSION,
        "sessionStatus": "closed",
        "closedAt": "2026-11-23T10:42:00Z",
    },
    events.SESSION_ACCEPTED: {
        **SESSION,
        "acceptDeadline": None,
        "acceptedAt": "2026-11-23T10:02:00Z",
    },
    events.SESSION_ACCEPT_MISSED: {
        **SESSION,
        "acceptDeadline": "2026-11-23T10:10:00Z",
        "missedAgentId": AGENT["id"],
        "misses": 1,
        "maxMisses": 3,
    },
    events.LEAD_CREATED: LEAD,
    events.LEAD_ASSIGNED: LEAD,
    events.LEAD_CLAIMED: {
        **LEAD,
        "status": "claimed",
        "claimed_at": "2026-11-23T10:03:00Z",
        "claim_deadline": None,
        "contact_deadline": "2026-11-23T10:08:00Z",
    },
    events.LEAD_CONTACTED: {
        **LEAD,
        "status": "contacted",
        "claimed_at": "2026-11-23T10:03:00Z",
        "contacted_at": "2026-11-23T10:06:00Z",
        "claim_deadline": None,
    },
    events.LEAD_SLA_BREACHED: {
        **LEAD,
        "claim_sla_breached_at": "2026-11-23T10:05:30Z",
        "stage": "claim",
        "deadline": "2026-11-23T10:05:00Z",
    },
    events.LEAD_REASSIGNED: {
        **LEAD,
        "previous_agent_id": PREVIOUS_AGENT_ID,
        "reassignment_count": 1,
        "reassignment_reason": "unclaimed",
        "previousAgentId": PREVIOUS_AGENT_ID,
        "reason": "unclaimed",
        "stage": "claim",
        "notes": "",
        "reassignedById": None,
        "deadlinePassed": True,
        "windowRestarted": True,
    },
    events.LEAD_CLOSED: {**LEAD, "status": "closed", "claim_deadline": None, "outcome": "won"},
    events.MESSAGE_FAILED: {
        "messageId": "3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7",
        "channel": "whatsapp",
        "kind": "handover.confirmation",
        "target": "+4915112345678",
        "attempts": 6,
        "error": "CRM answered HTTP 503 … Gave up after 6 attempts.",
        "sessionId": SESSION["sessionId"],
    },
}


def example_body(event_type: str) -> dict:
    return {
        "type": event_type,
        "timestamp": "2026-11-23T10:06:00.123456+00:00",
        "data": EXAMPLE_DATA[event_type],
    }


class EventBody(serializers.Serializer):
    type = serializers.ChoiceField(choices=list(events.EVENT_TYPES))
    timestamp = serializers.DateTimeField()
    data = serializers.DictField(
        help_text="The object as the API shows it, and the event's fields."
    )


def _webhook(event_type: str) -> OpenApiWebhook:
    return OpenApiWebhook(
        name=event_type,
        decorator=extend_schema(
            summary=events.EVENT_TYPES[event_type],
            description=(
                "POSTed to every active endpoint subscribed to this type, signed as Standard "
                "Webhooks specifies: headers `webhook-id` (the same on every retry), "
                "`webhook-timestamp`, `webhook-signature` (`v1,<base64 HMAC-SHA256>`). "
                "Answer 2xx; anything else is retried for about a day (410 turns the "
                "endpoint off)."
            ),
            request=EventBody,
            examples=[OpenApiExample(event_type, value=example_body(event_type))],
            responses={200: None},
        ),
    )


def schema_name(event_type: str) -> str:
    return event_type.replace(".", "_")


# drf-spectacular imports each webhook by dotted path (settings cannot import this
# module), so each one gets a module-level name: webhooks.schema.session_created, ...
for _event_type in events.EVENT_TYPES:
    globals()[schema_name(_event_type)] = _webhook(_event_type)
