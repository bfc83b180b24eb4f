from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response

from core.actor import Actor
from core.errors import NotFound
from core.schema import error_responses
from teams.api_base import TenantApiPagination, TenantApiView
from teams.directory import (
    agent_team_ids,
    directory_agents,
    directory_teams,
    team_is_open_now,
    team_member_ids,
    team_strategy,
    tenant_strategy,
)
from teams.models import Membership, Presence, PresenceSource, Role, Strategy
from teams.selectors import team_for_tenant
from teams.services import set_agent_presence


class WhoAmIApi(TenantApiView):
    """Tells an API caller which tenant its key belongs to (a cheap way to test a key)."""

    @extend_schema(
        summary="Which tenant does this API key belong to?",
        responses=inline_serializer(
            "WhoAmI",
            {
                "tenant": inline_serializer(
                    "WhoAmITenant", {"id": serializers.UUIDField(), "name": serializers.CharField()}
                ),
                "apiKey": inline_serializer(
                    "WhoAmIKey",
                    {"prefix": serializers.CharField(), "name": serializers.CharField()},
                ),
            },
        ),
    )
    def get(self, request):
        api_key = request.auth
        return Response(
            {
                "tenant": {"id": str(self.tenant.id), "name": self.tenant.name},
                "apiKey": {"prefix": api_key.prefix, "name": api_key.name},
            }
        )


# --- Presence and the directory ----------------------------------------------------------


class AgentPresenceInput(serializers.Serializer):
    status = serializers.ChoiceField(
        choices=Presence.choices, help_text="Only `online` agents get new work."
    )


class AgentPresenceOutput(serializers.Serializer):
    agentId = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Presence.choices)
    changedAt = serializers.DateTimeField(
        help_text="When the presence last changed (the agent's creation if it never did)."
    )


def _active_agent(tenant, agent_id) -> Membership:
    agent = (
        Membership.objects.for_tenant(tenant)
        .filter(pk=agent_id, is_active=True, user__is_active=True)
        .first()
    )
    if agent is None:
        raise NotFound(
            code="agent_not_found",
            message=f"Agent {agent_id} is not an active agent of this tenant.",
        )
    return agent


class AgentPresenceApi(TenantApiView):
    @extend_schema(
        summary="Set an agent's presence (online, away, offline)",
        description="Only `online` agents get new conversations and leads; coming online "
        "routes waiting work at once. Presence set here stays until someone changes it "
        "(it never lapses to away like presence set from the agent pages). Setting the "
        "presence the agent already has keeps `changedAt`, and puts it in the API's hands.",
        request=AgentPresenceInput,
        responses=AgentPresenceOutput,
    )
    def post(self, request, agent_id):
        payload = AgentPresenceInput(data=request.data)
        payload.is_valid(raise_exception=True)
        agent = set_agent_presence(
            membership=_active_agent(self.tenant, agent_id),
            presence=payload.validated_data["status"],
            actor=Actor.for_api_key(request.auth),
            source=PresenceSource.API,
        )
        return Response(
            AgentPresenceOutput(
                {
                    "agentId": agent.pk,
                    "status": agent.presence,
                    "changedAt": agent.presence_changed_at or agent.created_at,
                }
            ).data
        )


class DirectoryAgentOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField(source="display_name")
    email = serializers.EmailField(source="user.email")
    role = serializers.ChoiceField(choices=Role.choices)
    presence = serializers.ChoiceField(choices=Presence.choices)
    openSessions = serializers.IntegerField(source="open_session_count")
    openLeads = serializers.IntegerField(source="current_lead_count")
    teamIds = serializers.SerializerMethodField()

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_teamIds(self, agent) -> list[str]:
        return agent_team_ids(agent)


class DirectoryAgentFilters(serializers.Serializer):
    presence = serializers.ChoiceField(choices=Presence.choices, required=False)
    team_id = serializers.UUIDField(required=False, help_text="Members of this team only.")


class AgentsApi(TenantApiView):
    pagination_class = TenantApiPagination

    @extend_schema(
        summary="List the tenant's active agents",
        description="By name. `openSessions` and `openLeads` are the work each holds now.",
        parameters=[DirectoryAgentFilters],
        responses={
            200: DirectoryAgentOutput(many=True),
            **error_responses({404: "`team_id` names no team of this tenant (`team_not_found`)."}),
        },
    )
    def get(self, request):
        filters = DirectoryAgentFilters(data=request.query_params)
        filters.is_valid(raise_exception=True)
        team = None
        team_id = filters.validated_data.get("team_id")
        if team_id is not None:
            team = team_for_tenant(tenant=self.tenant, team_id=team_id, field="team_id")
        agents = directory_agents(
            tenant=self.tenant, presence=filters.validated_data.get("presence"), team=team
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(agents, request, view=self)
        return paginator.get_paginated_response(DirectoryAgentOutput(page, many=True).data)


class DirectoryTeamOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    strategy = serializers.ChoiceField(
        choices=Strategy.choices,
        help_text="The team's own strategy, else the tenant's (round_robin by default).",
    )
    isDefault = serializers.BooleanField(source="is_default")
    openNow = serializers.BooleanField(
        help_text="Whether the team's schedule is open now (no schedule: always)."
    )
    memberIds = serializers.ListField(child=serializers.UUIDField(), help_text="Its active agents.")


class DirectoryTeamFilters(serializers.Serializer):
    agent_id = serializers.UUIDField(required=False, help_text="Teams of this agent only.")


class TeamsApi(TenantApiView):
    pagination_class = TenantApiPagination

    @extend_schema(
        summary="List the tenant's teams",
        description="By name, with each team's strategy, whether it is open now and its "
        "active members.",
        parameters=[DirectoryTeamFilters],
        responses={
            200: DirectoryTeamOutput(many=True),
            **error_responses(
                {404: "`agent_id` names no active agent of this tenant (`agent_not_found`)."}
            ),
        },
    )
    def get(self, request):
        filters = DirectoryTeamFilters(data=request.query_params)
        filters.is_valid(raise_exception=True)
        agent = None
        agent_id = filters.validated_data.get("agent_id")
        if agent_id is not None:
            agent = _active_agent(self.tenant, agent_id)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            directory_teams(tenant=self.tenant, agent=agent), request, view=self
        )
        now = timezone.now()
        fallback = tenant_strategy(self.tenant) if page else Strategy.ROUND_ROBIN
        rows = [
            {
                "id": team.pk,
                "name": team.name,
                "strategy": team_strategy(team, fallback),
                "is_default": team.is_default,
                "openNow": team_is_open_now(team, now),
                "memberIds": team_member_ids(team),
            }
            for team in page
        ]
        return paginator.get_paginated_response(DirectoryTeamOutput(rows, many=True).data)
