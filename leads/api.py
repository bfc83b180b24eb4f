"""Leads API. Its fields are snake_case (`lead_id`, `to_agent_id`), as callers send them."""

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from core.actor import Actor
from core.errors import Forbidden, NotFound
from core.fields import StrictCharField
from core.schema import error_responses, requires_any_of
from leads.models import LeadStatus, ReassignmentReason
from leads.selectors import active_admin, lead_for_tenant, leads_for_tenant, membership_for_lead
from leads.serializers import (
    LeadDetailOutput,
    LeadOutput,
    ReassignmentResultOutput,
    WarningOutput,
    reassignment_warning,
)
from leads.services import (
    claim_lead,
    close_lead,
    create_lead,
    mark_lead_contacted,
    reassign_lead,
)
from teams.api_base import TenantApiPagination, TenantApiView
from teams.authentication import (
    ApiKeyClient,
    SessionAuthentication401,
    TenantApiKeyAuthentication,
)


@requires_any_of("phone", "email")
class LeadInput(serializers.Serializer):
    """A lead needs a phone number or an email (or both)."""

    name = StrictCharField(max_length=200)
    phone = StrictCharField(max_length=40, required=False, allow_blank=True, default="")
    email = serializers.EmailField(max_length=254, required=False, allow_blank=True, default="")
    source = StrictCharField(max_length=100, required=False, allow_blank=True, default="")
    assigned_agent_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    team_id = serializers.UUIDField(required=False, allow_null=True, default=None)

    def validate(self, attrs):
        if not attrs["phone"] and not attrs["email"]:
            raise serializers.ValidationError({"phone": ["Give a phone number or an email."]})
        return attrs


class LeadFilters(serializers.Serializer):
    status = serializers.ChoiceField(choices=LeadStatus.choices, required=False)
    assigned_agent_id = serializers.UUIDField(required=False)
    breached = serializers.ChoiceField(choices=["claim", "contact", "any"], required=False)
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    search = serializers.CharField(required=False, max_length=100)


class LeadsApi(TenantApiView):
    pagination_class = TenantApiPagination

    @extend_schema(summary="List leads", parameters=[LeadFilters], responses=LeadOutput(many=True))
    def get(self, request):
        filters = LeadFilters(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            leads_for_tenant(tenant=self.tenant, filters=filters.validated_data), request, view=self
        )
        return paginator.get_paginated_response(LeadOutput(page, many=True).data)

    @extend_schema(
        summary="Create a lead",
        description="Assigned to `assigned_agent_id`, or routed by the team's or tenant's "
        "rules. The claim window starts once the lead has an agent. Give `phone` or "
        "`email` (or both): a lead with neither is refused (400, naming `phone`).",
        request=LeadInput,
        responses={
            201: LeadOutput,
            **error_responses(
                {
                    404: "`assigned_agent_id` or `team_id` names no active agent or team of "
                    "this tenant (`agent_not_found`, `team_not_found`)."
                }
            ),
        },
    )
    def post(self, request):
        payload = LeadInput(data=request.data)
        payload.is_valid(raise_exception=True)
        lead = create_lead(
            tenant=self.tenant, actor=Actor.for_api_key(request.auth), **payload.validated_data
        )
        # The lead as written (its agent and user came with the write): no read again.
        return Response(LeadOutput(lead).data, status=201)


class LeadDetailApi(TenantApiView):
    @extend_schema(summary="A lead with its reassignment history", responses=LeadDetailOutput)
    def get(self, request, lead_id):
        lead = lead_for_tenant(tenant=self.tenant, lead_id=lead_id)
        if lead is None:
            raise NotFound(code="lead_not_found", message="Lead not found.")
        return Response(LeadDetailOutput(lead).data)


class CloseLeadInput(serializers.Serializer):
    outcome = StrictCharField(max_length=100, required=False, allow_blank=True, default="")


class CloseLeadApi(TenantApiView):
    @extend_schema(
        summary="Close a lead (won, lost, duplicate...)",
        description="Stops its timers and frees the agent's capacity. 409 if already closed.",
        request=CloseLeadInput,
        responses={
            200: LeadOutput,
            **error_responses({409: "The lead is already closed (`lead_closed`)."}),
        },
    )
    def post(self, request, lead_id):
        payload = CloseLeadInput(data=request.data)
        payload.is_valid(raise_exception=True)
        lead = close_lead(
            tenant=self.tenant,
            lead_id=lead_id,
            actor=Actor.for_api_key(request.auth),
            outcome=payload.validated_data["outcome"],
        )
        return Response(LeadOutput(lead_for_tenant(tenant=self.tenant, lead_id=lead.pk)).data)


class AgentLeadActionApi(APIView):
    """Claim / mark contacted: the logged-in agent acting on a lead assigned to them."""

    authentication_classes = [SessionAuthentication401]
    permission_classes = [IsAuthenticated]
    action_service = None

    @extend_schema(
        request=None,
        responses={
            200: LeadOutput,
            **error_responses(
                {
                    403: "The lead is not assigned to you (`not_assignee`), or the CSRF "
                    "token is missing or wrong.",
                    409: "The lead is not in a state for this (`already_claimed`, "
                    "`not_claimed`, `already_contacted`).",
                }
            ),
        },
    )
    def post(self, request, lead_id):
        membership = membership_for_lead(user=request.user, lead_id=lead_id)
        if membership is None:
            raise NotFound(code="lead_not_found", message="Lead not found.")
        lead = type(self).action_service(
            tenant=membership.tenant, lead_id=lead_id, agent=membership, via="api"
        )
        lead = lead_for_tenant(tenant=membership.tenant, lead_id=lead.pk)
        return Response(LeadOutput(lead).data)


class ClaimLeadApi(AgentLeadActionApi):
    action_service = staticmethod(claim_lead)


class MarkLeadContactedApi(AgentLeadActionApi):
    action_service = staticmethod(mark_lead_contacted)


class ReassignLeadInput(serializers.Serializer):
    lead_id = serializers.UUIDField()
    to_agent_id = serializers.UUIDField()
    reason = serializers.ChoiceField(choices=ReassignmentReason.choices)
    notes = StrictCharField(max_length=2000, required=False, allow_blank=True, default="")
    reassigned_by_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    restart_window = serializers.BooleanField(
        required=False,
        default=False,
        help_text="With `manual`: start the lead's running window (claim or contact) again "
        "from now instead of keeping its deadline, which may already have passed. The "
        "other reasons always start a new window.",
    )


class ReassignLeadRequest(ReassignLeadInput):
    """The body as documented: as an API-key caller must send it."""

    reassigned_by_id = serializers.UUIDField(
        help_text="The active admin (or super admin) of the tenant who decided. Required "
        "with an API key. A logged-in admin may leave it out or send their own agent id."
    )


class ReassignLeadOutput(serializers.Serializer):
    success = serializers.BooleanField()
    lead = LeadOutput()
    reassignment = ReassignmentResultOutput()
    warning = WarningOutput(
        allow_null=True,
        help_text="Set when the new agent got a deadline that had already passed "
        "(`claim_deadline_passed` or `contact_deadline_passed`): a `manual` reassignment "
        "without `restart_window`. The next SLA sweep records the breach against them.",
    )


def _not_an_admin() -> Forbidden:
    return Forbidden(
        code="not_an_admin",
        message="Only an active admin or super admin of the lead's tenant can reassign it.",
        field="reassigned_by_id",
    )


class ReassignLeadApi(APIView):
    """POST /api/v1/reassign-lead.

    Either a logged-in admin of the lead's tenant (then `reassigned_by` is that admin),
    or the tenant's API key with `reassigned_by_id` naming an active admin of it.
    """

    authentication_classes = [TenantApiKeyAuthentication, SessionAuthentication401]
    permission_classes = [IsAuthenticated]

    def permission_denied(self, request, message=None, code=None):
        if request.authenticators and not request.successful_authenticator:
            raise exceptions.NotAuthenticated(
                "Log in as an admin, or send the tenant API key in X-API-Key.",
                code="not_authenticated",
            )
        super().permission_denied(request, message=message, code=code)

    @extend_schema(
        summary="Reassign a lead to another agent",
        description="The reason decides the timers: `unclaimed` marks the lead claimed and "
        "starts a contact window, `no_contact` starts a new contact window, `manual` keeps "
        "them. A `manual` reassignment of a lead whose deadline has already passed hands "
        "the new agent a breach at once: the answer's `reassignment.deadline_passed` is "
        "true and `warning` says so, unless `restart_window` started the window again "
        "(`reassignment.window_restarted`, new `reassignment.deadline`).",
        request=ReassignLeadRequest,
        responses={
            200: ReassignLeadOutput,
            **error_responses(
                {
                    403: "`reassigned_by_id` (or the logged-in user) is not an active admin "
                    "of the lead's tenant (`not_an_admin`), or the CSRF token is missing or "
                    "wrong.",
                    404: "`lead_id` or `to_agent_id` names no lead or active agent of the "
                    "tenant (`lead_not_found`, `agent_not_found`).",
                    409: "The lead's state refuses it (`lead_closed`, `already_assigned`, "
                    "`reason_does_not_fit`).",
                }
            ),
        },
        examples=[
            OpenApiExample(
                "Unclaimed lead",
                request_only=True,
                value={
                    "lead_id": "5b0b1b53-6a8e-4c1c-9f7e-0d1f5b2c9e11",
                    "to_agent_id": "3a930ce2-3566-47c9-9f5d-582b1919625f",
                    "reason": "unclaimed",
                    "notes": "Alice is on holiday",
                    "reassigned_by_id": "fcbfbbfe-04d0-4e1a-852c-f670babafe64",
                },
            ),
            OpenApiExample(
                "Manual, restarting a contact window that has passed",
                request_only=True,
                value={
                    "lead_id": "5b0b1b53-6a8e-4c1c-9f7e-0d1f5b2c9e11",
                    "to_agent_id": "3a930ce2-3566-47c9-9f5d-582b1919625f",
                    "reason": "manual",
                    "restart_window": True,
                    "reassigned_by_id": "fcbfbbfe-04d0-4e1a-852c-f670babafe64",
                },
            ),
        ],
    )
    def post(self, request):
        payload = ReassignLeadInput(data=request.data)
        if isinstance(request.user, ApiKeyClient):
            # With a key, the API must be told which admin decided; a session says itself.
            reassigned_by = payload.fields["reassigned_by_id"]
            reassigned_by.required, reassigned_by.allow_null = True, False
        payload.is_valid(raise_exception=True)
        data = payload.validated_data

        if isinstance(request.user, ApiKeyClient):
            tenant = request.user.tenant
            admin = active_admin(tenant=tenant, agent_id=data["reassigned_by_id"])
            if admin is None:
                raise _not_an_admin()
            actor = Actor.for_api_key(request.auth, on_behalf_of=admin)
        else:
            admin = membership_for_lead(user=request.user, lead_id=data["lead_id"])
            if admin is None:
                raise NotFound(code="lead_not_found", message="Lead not found.", field="lead_id")
            tenant = admin.tenant
            if not admin.is_tenant_admin:
                raise _not_an_admin()
            if data["reassigned_by_id"] not in (None, admin.pk):
                raise _not_an_admin()
            actor = Actor.for_membership(admin, via="api")

        result = reassign_lead(
            tenant=tenant,
            lead_id=data["lead_id"],
            to_agent_id=data["to_agent_id"],
            reason=data["reason"],
            notes=data["notes"],
            reassigned_by=admin,
            actor=actor,
            restart_window=data["restart_window"],
        )
        return Response(
            {
                "success": True,
                "lead": LeadOutput(result.lead).data,
                "reassignment": ReassignmentResultOutput(result).data,
                "warning": reassignment_warning(result),
            }
        )
