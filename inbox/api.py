"""Handover API (camelCase fields, as callers send them) and the handover diagnostics
report."""

import json

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from core.actor import Actor
from core.errors import NotFound
from core.fields import FieldsBoundOnce, StrictCharField
from core.metrics import HANDOVER_REQUESTS, HANDOVER_UNASSIGNED
from core.schema import error_responses
from inbox.acceptance import accept_session, session_of_agent
from inbox.diagnostics import diagnose_handover
from inbox.models import Channel, ConfirmationSkipReason
from inbox.selectors import session_for_tenant
from inbox.services import close_session, handover
from teams.api_base import TenantApiView
from teams.authentication import SessionAuthentication401
from teams.selectors import team_for_tenant

MAX_CONTEXT_BYTES = 16 * 1024
MAX_IDEMPOTENCY_KEY_LENGTH = 255


def _unstorable_text(value) -> str | None:
    """Why a string somewhere in `value` cannot be stored: PostgreSQL's jsonb takes
    neither the NUL character nor a lone UTF-16 surrogate (it is not valid UTF-8)."""
    if isinstance(value, str):
        if "\x00" in value:
            return "nul_character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "surrogate_character"
        return None
    if isinstance(value, dict):
        items = [item for pair in value.items() for item in pair]
    elif isinstance(value, list):
        items = value
    else:
        return None
    for item in items:
        problem = _unstorable_text(item)
        if problem:
            return problem
    return None


@extend_schema_field(
    {
        "type": "object",
        "description": f"Free-form JSON object, at most {MAX_CONTEXT_BYTES // 1024} KB "
        "encoded, without the NUL character.",
    }
)
class ContextField(serializers.JSONField):
    default_error_messages = {
        "not_an_object": "Must be a JSON object.",
        "nul_character": "Must not contain the NUL character (\\u0000).",
        "surrogate_character": "Must not contain lone surrogate characters (\\ud800-\\udfff).",
        "too_large": f"Must be at most {MAX_CONTEXT_BYTES // 1024} KB when encoded as JSON.",
    }

    def to_internal_value(self, data):
        data = super().to_internal_value(data)
        if not isinstance(data, dict):
            self.fail("not_an_object")
        encoded = json.dumps(data, separators=(",", ":"))
        if len(encoded.encode()) > MAX_CONTEXT_BYTES:
            self.fail("too_large")
        problem = _unstorable_text(data)
        if problem:
            self.fail(problem)
        return data


class HandoverInput(FieldsBoundOnce, serializers.Serializer):
    contactId = StrictCharField(max_length=128, help_text="The contact's id on the channel.")
    name = StrictCharField(max_length=200, required=False, allow_blank=True, default="")
    channel = serializers.ChoiceField(choices=Channel.choices, default=Channel.WHATSAPP)
    context = ContextField(required=False, default=None, allow_null=True)
    teamId = serializers.UUIDField(required=False, allow_null=True, default=None)
    sendHandoverMessage = serializers.BooleanField(required=False, default=True)
    handoverMessage = StrictCharField(max_length=1000, required=False, allow_blank=True, default="")


class AssignedAgentOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    email = serializers.EmailField()


class HandoverOutput(serializers.Serializer):
    sessionId = serializers.UUIDField()
    sessionCreated = serializers.BooleanField()
    status = serializers.ChoiceField(choices=["assigned", "unassigned"])
    assignedAgent = AssignedAgentOutput(allow_null=True)
    teamId = serializers.UUIDField(allow_null=True)
    strategy = serializers.CharField(allow_null=True)
    unassignedReason = serializers.CharField(allow_null=True)
    confirmationMessage = serializers.ChoiceField(choices=["queued", "skipped"])
    confirmationSkippedReason = serializers.ChoiceField(
        choices=ConfirmationSkipReason.choices, allow_null=True
    )


HANDOVER_EXAMPLES = [
    OpenApiExample(
        "WhatsApp handover",
        request_only=True,
        value={
            "contactId": "+4915112345678",
            "name": "Jane Doe",
            "channel": "whatsapp",
            "context": {"lastMessage": "I want to talk to a human"},
        },
    ),
    OpenApiExample(
        "Route to a team, custom message",
        request_only=True,
        value={
            "contactId": "web-visitor-42",
            "channel": "webchat",
            "teamId": "0b6f2a52-9f0e-4c1e-9d8f-2f3f6a1f8c11",
            "handoverMessage": "One moment, a sales expert is joining.",
        },
    ),
    OpenApiExample(
        "Assigned",
        response_only=True,
        status_codes=["201"],
        value={
            "sessionId": "7d0b8c9e-1c7a-4f57-9a43-5b3c2d1e0f99",
            "sessionCreated": True,
            "status": "assigned",
            "assignedAgent": {
                "id": "3a930ce2-3566-47c9-9f5d-582b1919625f",
                "name": "Alice Member",
                "email": "alice@demo.test",
            },
            "teamId": None,
            "strategy": "round_robin",
            "unassignedReason": None,
            "confirmationMessage": "queued",
            "confirmationSkippedReason": None,
        },
    ),
    OpenApiExample(
        "Left unassigned",
        response_only=True,
        status_codes=["200"],
        value={
            "sessionId": "7d0b8c9e-1c7a-4f57-9a43-5b3c2d1e0f99",
            "sessionCreated": False,
            "status": "unassigned",
            "assignedAgent": None,
            "teamId": None,
            "strategy": "manual",
            "unassignedReason": "manual_strategy",
            "confirmationMessage": "skipped",
            "confirmationSkippedReason": "recently_sent",
        },
    ),
]


def _count_handover(outcome) -> None:
    """Counted here, after the service's transaction committed: nothing rolled back is
    counted. A handover that is not a replay routed the session whenever it had no agent,
    so an unassigned answer is one routing attempt that found nobody."""
    if outcome.replayed:
        HANDOVER_REQUESTS.labels(outcome="replayed").inc()
        return
    HANDOVER_REQUESTS.labels(outcome="created" if outcome.status_code == 201 else "reused").inc()
    if outcome.body["status"] == "unassigned":
        HANDOVER_UNASSIGNED.labels(reason=outcome.body["unassignedReason"]).inc()


class HandoverApi(TenantApiView):
    """Hand a contact's conversation over to a human agent."""

    def handle_exception(self, exc):
        try:
            response = super().handle_exception(exc)
        except Exception:
            HANDOVER_REQUESTS.labels(outcome="error").inc()
            raise
        outcome = "error" if response.status_code >= 500 else "rejected"
        HANDOVER_REQUESTS.labels(outcome=outcome).inc()
        return response

    @extend_schema(
        summary="Hand a conversation over to a human agent",
        description=(
            "Gets or creates the contact's open inbox session, assigns an agent by the "
            "team's or tenant's routing rules, and queues the confirmation message. "
            "201 when a session was created, 200 when the open one was reused. Send the "
            "same `Idempotency-Key` to safely retry: the first answer is replayed for 24 h."
        ),
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                {"type": "string", "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
                OpenApiParameter.HEADER,
                required=False,
            ),
            OpenApiParameter("apiKey", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False),
        ],
        request=HandoverInput,
        responses={
            201: HandoverOutput,
            200: HandoverOutput,
            **error_responses(
                {
                    404: "`teamId` names no team of this tenant (`team_not_found`).",
                    422: "The `Idempotency-Key` was used with a different body "
                    "(`idempotency_key_reused`).",
                }
            ),
        },
        examples=HANDOVER_EXAMPLES,
    )
    def post(self, request):
        payload = HandoverInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        idempotency_key = request.headers.get("Idempotency-Key", "").strip() or None
        if idempotency_key and len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
            raise serializers.ValidationError(
                {"Idempotency-Key": [f"At most {MAX_IDEMPOTENCY_KEY_LENGTH} characters."]}
            )
        outcome = handover(
            tenant=self.tenant,
            actor=Actor.for_api_key(request.auth),
            contact_id=data["contactId"],
            channel=data["channel"],
            name=data["name"],
            context=data["context"],
            team_id=data["teamId"],
            send_message=data["sendHandoverMessage"],
            message_text=data["handoverMessage"],
            idempotency_key=idempotency_key,
            payload_for_idempotency=request.data,
        )
        _count_handover(outcome)
        response = Response(outcome.body, status=outcome.status_code)
        if outcome.replayed:
            response["Idempotent-Replayed"] = "true"
        return response


class DiagnosticsFilters(serializers.Serializer):
    teamId = serializers.UUIDField(required=False, help_text="Check routing to this team.")


class HandoverDiagnosticsApi(TenantApiView):
    """The "session not assigned" troubleshooting checklist, run for the key's tenant."""

    @extend_schema(
        summary="Why would a handover stay unassigned?",
        parameters=[DiagnosticsFilters],
        responses={
            200: OpenApiTypes.OBJECT,
            **error_responses({404: "`teamId` names no team of this tenant (`team_not_found`)."}),
        },
    )
    def get(self, request):
        filters = DiagnosticsFilters(data=request.query_params)
        filters.is_valid(raise_exception=True)
        team = None
        team_uuid = filters.validated_data.get("teamId")
        if team_uuid is not None:
            team = team_for_tenant(tenant=self.tenant, team_id=team_uuid, field="teamId")
        return Response(diagnose_handover(tenant=self.tenant, team=team).as_dict())


class SessionOutput(serializers.Serializer):
    sessionId = serializers.UUIDField(source="pk")
    status = serializers.CharField()
    contactId = serializers.CharField(source="contact_id")
    channel = serializers.CharField()
    assignedAgentId = serializers.UUIDField(source="assigned_agent_id", allow_null=True)
    unassignedReason = serializers.CharField(source="unassigned_reason")
    confirmationStatus = serializers.CharField(source="confirmation_status")
    closedAt = serializers.DateTimeField(source="closed_at", allow_null=True)


class SessionDetailApi(TenantApiView):
    @extend_schema(summary="An inbox session", responses=SessionOutput)
    def get(self, request, session_id):
        session = session_for_tenant(tenant=self.tenant, session_id=session_id)
        if session is None:
            raise NotFound(code="session_not_found", message="Session not found.")
        return Response(SessionOutput(session).data)


class CloseSessionApi(TenantApiView):
    @extend_schema(
        summary="Close a session when the conversation is over",
        description="The agent's open-session load goes down; the contact's next handover "
        "opens a new session. Closing a closed session changes nothing.",
        request=None,
        responses=SessionOutput,
    )
    def post(self, request, session_id):
        session = close_session(
            tenant=self.tenant, session_id=session_id, actor=Actor.for_api_key(request.auth)
        )
        return Response(SessionOutput(session).data)


class AcceptedSessionOutput(SessionOutput):
    acceptedAt = serializers.DateTimeField(source="accepted_at", allow_null=True)
    acceptDeadline = serializers.DateTimeField(source="accept_deadline", allow_null=True)


class AcceptSessionApi(APIView):
    """The logged-in agent accepts a conversation assigned to them (the accept window)."""

    authentication_classes = [SessionAuthentication401]
    permission_classes = [IsAuthenticated]

    @extend_schema(
        summary="Accept a conversation assigned to you",
        description="As the logged-in agent (Django session and CSRF token, not an API "
        "key). Ends the session's accept window; accepting again changes nothing. Late "
        "is fine until the accept sweep has moved the session to someone else: then it "
        "is no longer yours (404).",
        request=None,
        responses={
            200: AcceptedSessionOutput,
            **error_responses({403: "The CSRF token is missing or wrong."}),
        },
    )
    def post(self, request, session_id):
        found = session_of_agent(user=request.user, session_id=session_id)
        if found is None:
            raise NotFound(
                code="session_not_found", message="No open session of yours has this id."
            )
        session, agent = found
        session = accept_session(
            tenant=session.tenant,
            session_id=session.pk,
            agent=agent,
            actor=Actor.for_membership(agent, via="api"),
        )
        return Response(AcceptedSessionOutput(session).data)
