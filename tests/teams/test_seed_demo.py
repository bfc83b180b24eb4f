import json
from io import StringIO

import pytest
from django.core.management import call_command

from inbox.models import CrmIntegration, InboxSession
from teams.models import ApiKey, Membership, Role, Team, TeamMember, Tenant, User


def seed_demo_json() -> dict:
    out = StringIO()
    call_command("seed_demo", "--json", stdout=out)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1, "seed_demo --json prints exactly one JSON object"
    return json.loads(lines[0])


@pytest.mark.django_db
def test_seed_demo_twice_gives_one_tenant_and_working_credentials(client, api_client):
    first = seed_demo_json()
    second = seed_demo_json()

    assert Tenant.objects.filter(slug="demo").count() == 1
    assert Tenant.objects.filter(slug="demo-other").count() == 1
    assert first["tenant"]["id"] == second["tenant"]["id"]
    assert {a["id"] for a in first["agents"]} == {a["id"] for a in second["agents"]}
    assert Team.all_tenants.filter(tenant_id=first["tenant"]["id"]).count() == len(second["teams"])
    assert InboxSession.all_tenants.filter(tenant_id=first["tenant"]["id"]).count() == len(
        second["sessions"]
    )
    assert User.objects.filter(email="alice@demo.test").count() == 1

    # The latest key works; the previous run's key was revoked, so one demo key is live.
    response = api_client.get("/api/v1/whoami", HTTP_X_API_KEY=second["api_key"])
    assert response.status_code == 200
    assert response.json()["tenant"]["id"] == second["tenant"]["id"]
    assert api_client.get("/api/v1/whoami", HTTP_X_API_KEY=first["api_key"]).status_code == 401
    assert ApiKey.all_tenants.filter(tenant_id=second["tenant"]["id"], is_active=True).count() == 1

    # The printed admin login opens the admin.
    assert client.login(username=second["admin"]["username"], password=second["admin"]["password"])
    assert client.get("/admin/").status_code == 200


@pytest.mark.django_db
def test_seed_demo_json_has_the_documented_shape():
    data = seed_demo_json()

    assert {"tenant", "api_key", "admin", "agents", "teams", "leads", "other_tenant"} <= set(data)
    assert set(data["tenant"]) == {"id", "name"}
    assert set(data["admin"]) == {"username", "password", "agent_id"}
    assert {a["role"] for a in data["agents"]} == set(Role.values)
    assert data["admin"]["agent_id"] in {a["id"] for a in data["agents"]}
    for team in data["teams"]:
        assert set(team) == {"id", "name", "strategy", "is_default", "agent_ids"}
    assert [t["is_default"] for t in data["teams"]].count(True) == 1
    round_robin = [
        t for t in data["teams"] if t["strategy"] == "round_robin" and len(t["agent_ids"]) >= 3
    ]
    assert round_robin, "a round-robin team with several agents"
    assert Team.all_tenants.filter(
        pk__in=[t["id"] for t in data["teams"]], schedule__isnull=False
    ).exists()
    assert set(data["other_tenant"]) == {"id", "api_key", "team_id", "agent_id", "lead_id"}
    assert isinstance(data["leads"], list)

    # Team memberships in the output match the database.
    for team in data["teams"]:
        stored = TeamMember.all_tenants.filter(team_id=team["id"]).values_list(
            "membership_id", flat=True
        )
        assert {str(m) for m in stored} == set(team["agent_ids"])


@pytest.mark.django_db
def test_seed_demo_other_tenant_is_isolated(api_client):
    data = seed_demo_json()
    other = data["other_tenant"]

    response = api_client.get("/api/v1/whoami", HTTP_X_API_KEY=other["api_key"])
    assert response.json()["tenant"]["id"] == other["id"] != data["tenant"]["id"]
    agent = Membership.all_tenants.get(pk=other["agent_id"])
    assert str(agent.tenant_id) == other["id"]
    assert str(Team.all_tenants.get(pk=other["team_id"]).tenant_id) == other["id"]


@pytest.mark.django_db
def test_seed_demo_human_output_prints_login_and_key():
    out = StringIO()
    call_command("seed_demo", "--admin-password", "let-me-in-please", stdout=out)
    text = out.getvalue()
    assert "admin@demo.test" in text
    assert "let-me-in-please" in text
    assert "wk_" in text
    assert User.objects.get(email="admin@demo.test").check_password("let-me-in-please")


@pytest.mark.django_db
def test_seed_demo_has_sessions_in_several_states_and_a_crm_integration():
    data = seed_demo_json()

    states = {(s["status"], s["assigned_agent_id"] is not None) for s in data["sessions"]}
    assert ("open", True) in states
    assert ("open", False) in states
    assert ("closed", True) in states
    assert "manual_strategy" in {s["unassigned_reason"] for s in data["sessions"]}
    integration = CrmIntegration.all_tenants.get(tenant_id=data["tenant"]["id"])
    assert integration.has_api_key
    assert not integration.is_active, "inactive unless a real CRM is configured"
