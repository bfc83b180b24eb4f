from django.urls import path

from teams.api import AgentPresenceApi, AgentsApi, TeamsApi, WhoAmIApi

urlpatterns = [
    path("whoami", WhoAmIApi.as_view(), name="api-whoami"),
    path("agents", AgentsApi.as_view(), name="api-agents"),
    path("agents/<uuid:agent_id>/presence", AgentPresenceApi.as_view(), name="api-agent-presence"),
    path("teams", TeamsApi.as_view(), name="api-teams"),
]
