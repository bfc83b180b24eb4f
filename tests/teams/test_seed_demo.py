import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from inbox.models import CrmIntegration, InboxSession
from leads.models import Lead, LeadReassignment, Notification, NotificationKind
from leads.services import reconcile_lead_counts
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
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": second["admin"]["username"], "password": second["admin"]["password"]},
    )
    assert response.status_code == 302, response.content
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


LEAD_KEYS = {
    "id",
    "name",
    "status",
    "assigned_agent_id",
    "claim_breached",
    "contact_breached",
    "reassignment_count",
}


def leads_by_state(data: dict) -> dict:
    """The demo leads keyed by the state each one shows."""
    by_state = {}
    for lead in data["leads"]:
        if lead["reassignment_count"]:
            state = "reassigned"
        elif lead["claim_breached"]:
            state = "claim_breached"
        elif lead["contact_breached"]:
            state = "contact_breached"
        else:
            state = lead["status"]
        by_state.setdefault(state, []).append(lead)
    return by_state


@pytest.mark.django_db
def test_seed_demo_has_leads_in_every_state_and_they_match_the_database():
    data = seed_demo_json()

    by_state = leads_by_state(data)
    assert set(by_state) >= {
        "new",
        "claimed",
        "contacted",
        "claim_breached",
        "contact_breached",
        "reassigned",
    }
    demo_agents = {a["id"] for a in data["agents"]}
    for entry in data["leads"]:
        assert set(entry) == LEAD_KEYS
        lead = Lead.all_tenants.get(pk=entry["id"])
        assert str(lead.tenant_id) == data["tenant"]["id"]
        assert entry["name"] == lead.name
        assert entry["status"] == lead.status
        assert entry["assigned_agent_id"] == str(lead.assigned_agent_id)
        assert entry["assigned_agent_id"] in demo_agents
        assert entry["claim_breached"] == (lead.claim_sla_breached_at is not None)
        assert entry["contact_breached"] == (lead.contact_sla_breached_at is not None)
        assert entry["reassignment_count"] == lead.reassignment_count

    now = timezone.now()
    [new] = by_state["new"]
    assert Lead.all_tenants.get(pk=new["id"]).claim_deadline > now, "claim window open"
    [claimed] = by_state["claimed"]
    assert Lead.all_tenants.get(pk=claimed["id"]).contact_deadline > now
    assert by_state["claim_breached"][0]["status"] == "new"
    assert by_state["contact_breached"][0]["status"] == "claimed"

    # The breaches were recorded by the real sweep: every demo admin was told.
    admins = {a["id"] for a in data["agents"] if a["role"] in ("admin", "super_admin")}
    for state, kind in (
        ("claim_breached", NotificationKind.CLAIM_SLA_BREACHED),
        ("contact_breached", NotificationKind.CONTACT_SLA_BREACHED),
    ):
        lead_id = by_state[state][0]["id"]
        told = Notification.all_tenants.filter(lead_id=lead_id, kind=kind)
        assert {str(r) for r in told.values_list("recipient_id", flat=True)} == admins
        assert told.count() == len(admins)

    # The reassignment was an admin's decision.
    [reassigned] = by_state["reassigned"]
    move = LeadReassignment.all_tenants.get(lead_id=reassigned["id"])
    assert str(move.reassigned_by_id) == data["admin"]["agent_id"]
    assert move.reason == "manual"
    assert str(move.to_agent_id) == reassigned["assigned_agent_id"]


@pytest.mark.django_db
def test_seed_demo_twice_does_not_duplicate_leads():
    first = seed_demo_json()
    notices = Notification.all_tenants.count()
    second = seed_demo_json()

    assert [lead["id"] for lead in first["leads"]] == [lead["id"] for lead in second["leads"]]
    assert Lead.all_tenants.filter(tenant_id=second["tenant"]["id"]).count() == len(second["leads"])
    assert Lead.all_tenants.filter(tenant_id=second["other_tenant"]["id"]).count() == 1
    assert first["other_tenant"]["lead_id"] == second["other_tenant"]["lead_id"]
    assert Notification.all_tenants.count() == notices, "no breach announced twice"
    assert LeadReassignment.all_tenants.count() == 1


@pytest.mark.django_db
def test_seed_demo_run_again_later_keeps_the_open_windows_open(time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    first = leads_by_state(seed_demo_json())
    time_machine.shift(timedelta(hours=2))

    again = leads_by_state(seed_demo_json())

    for state in ("new", "claimed", "reassigned"):
        assert [lead["id"] for lead in again[state]] == [lead["id"] for lead in first[state]]
        assert not again[state][0]["claim_breached"]
        assert not again[state][0]["contact_breached"]
    [new] = again["new"]
    assert Lead.all_tenants.get(pk=new["id"]).claim_deadline > timezone.now()


@pytest.mark.django_db
def test_seed_demo_other_tenant_has_its_own_lead():
    data = seed_demo_json()
    other = data["other_tenant"]

    lead = Lead.all_tenants.get(pk=other["lead_id"])
    assert str(lead.tenant_id) == other["id"]
    assert str(lead.assigned_agent_id) == other["agent_id"]
    assert other["lead_id"] not in {lead["id"] for lead in data["leads"]}


@pytest.mark.django_db
def test_seed_demo_lead_counters_reconcile_without_drift():
    seed_demo_json()
    seed_demo_json()

    assert reconcile_lead_counts() == []
    out = StringIO()
    call_command("reconcile_lead_counts", stdout=out)
    assert "No drift" in out.getvalue()


# --- presence and the accept window (issue 13) -------------------------------------------


def routing_agent_ids(data: dict) -> set[str]:
    """Everyone a demo handover may be routed to: the teams' members and the role tiers
    (every agent with a role in the default waterfall), except the one meant to be away."""
    in_teams = {agent_id for team in data["teams"] for agent_id in team["agent_ids"]}
    return in_teams | {a["id"] for a in data["agents"] if a["email"] != "gina@demo.test"}


@pytest.mark.django_db
def test_seed_demo_keeps_routing_agents_online_and_one_agent_away(api_client):
    data = seed_demo_json()

    stored = Membership.all_tenants.in_bulk([a["id"] for a in data["agents"]], field_name="pk")
    presence = {str(pk): m.presence for pk, m in stored.items()}
    assert {presence[agent_id] for agent_id in routing_agent_ids(data)} == {"online"}
    [away] = [a for a in data["agents"] if a["presence"] == "away"]
    assert away["email"] == "gina@demo.test" and presence[away["id"]] == "away"
    assert away["id"] not in {i for team in data["teams"] for i in team["agent_ids"]}

    # The first handover with the printed key routes at once, with or without a team.
    headers = {"HTTP_X_API_KEY": data["api_key"]}
    first = api_client.post(
        "/api/v1/handover", {"contactId": "+447700900999", "name": "Jane"}, format="json", **headers
    )
    assert first.status_code == 201, first.content
    assert first.json()["status"] == "assigned"
    assert first.json()["assignedAgent"]["id"] != away["id"]
    for team in data["teams"]:
        if team["name"] in ("Support", "Sales"):
            response = api_client.post(
                "/api/v1/handover",
                {"contactId": f"team-{team['name']}", "teamId": team["id"]},
                format="json",
                **headers,
            )
            assert response.json()["status"] == "assigned", response.content


@pytest.mark.django_db
def test_seed_demo_has_a_conversation_waiting_for_acceptance():
    data = seed_demo_json()

    tenant = Tenant.objects.get(pk=data["tenant"]["id"])
    assert tenant.session_accept_window_minutes == 10 == data["accept_window_minutes"]
    waiting = InboxSession.all_tenants.select_related("assigned_agent").get(
        pk=data["waiting_session"]["id"]
    )
    assert waiting.status == "open" and waiting.accepted_at is None
    assert waiting.assigned_agent.presence == "online"
    assert timezone.now() < waiting.accept_deadline <= timezone.now() + timedelta(minutes=10)
    assert str(waiting.pk) in {s["id"] for s in data["sessions"]}


@pytest.mark.django_db
def test_seed_demo_run_again_later_restores_presence_and_the_waiting_conversation(time_machine):
    time_machine.move_to(timezone.now(), tick=False)
    first = seed_demo_json()
    alice = Membership.all_tenants.get(user__email="alice@demo.test")
    Membership.all_tenants.filter(pk=alice.pk).update(presence="away")
    time_machine.shift(timedelta(hours=2))  # the accept deadline has long passed

    second = seed_demo_json()

    assert second["waiting_session"]["id"] == first["waiting_session"]["id"]
    waiting = InboxSession.all_tenants.get(pk=second["waiting_session"]["id"])
    assert waiting.accept_deadline > timezone.now() and waiting.accepted_at is None
    alice.refresh_from_db()
    assert alice.presence == "online"
    assert Membership.all_tenants.filter(user__email="gina@demo.test").count() == 1
    assert InboxSession.all_tenants.filter(contact_id="+447700900006", status="open").count() == 1


@pytest.mark.django_db
def test_seed_demo_replaces_a_waiting_conversation_that_was_accepted():
    first = seed_demo_json()
    InboxSession.all_tenants.filter(pk=first["waiting_session"]["id"]).update(
        accepted_at=timezone.now()
    )

    second = seed_demo_json()

    assert second["waiting_session"]["id"] != first["waiting_session"]["id"]
    assert InboxSession.all_tenants.get(pk=first["waiting_session"]["id"]).status == "closed"
    assert InboxSession.all_tenants.get(pk=second["waiting_session"]["id"]).accepted_at is None


@pytest.mark.django_db
def test_seed_demo_human_output_shows_presence_and_the_waiting_conversation():
    out = StringIO()
    call_command("seed_demo", stdout=out)
    text = out.getvalue()
    assert "presence:" in text and "away: gina@demo.test" in text
    assert "accept window: 10 min; waiting for acceptance: +447700900006" in text
