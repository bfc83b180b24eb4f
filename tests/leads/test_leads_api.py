"""The lead API (tenant API key), the agent actions (session) and the agent pages.

POST/GET /api/v1/leads, GET /api/v1/leads/<id>, POST /api/v1/leads/<id>/claim and
/contacted, and the HTML pages under /leads/ that the emails link to.
"""

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from rest_framework.test import APIClient

from audit.models import ActivityLog
from core.actor import Actor
from leads.formatting import lead_url
from leads.models import Lead, LeadStatus, Notification, NotificationKind
from leads.services import create_lead, reassign_lead, sweep_sla_breaches
from teams.models import Membership, Role
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory

LEADS = "/api/v1/leads"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
NO_SUCH_ID = "00000000-0000-4000-8000-000000000000"

pytestmark = pytest.mark.django_db


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


def parse_dt(value: str | None):
    return datetime.fromisoformat(value) if value is not None else None


def error(response) -> dict:
    assert response["Content-Type"].startswith("application/json"), response.content
    return response.json()["error"]


def counter(agent: Membership) -> int:
    return Membership.all_tenants.values_list("current_lead_count", flat=True).get(pk=agent.pk)


def new_lead(tenant, agent=None, **fields) -> Lead:
    values = {"name": "Jane Roe", "phone": "+4915112345678", "email": "jane@example.test"}
    return create_lead(
        tenant=tenant,
        actor=Actor.system(),
        assigned_agent_id=agent.pk if agent is not None else None,
        **{**values, **fields},
    )


def logged_in(agent: Membership) -> APIClient:
    client = APIClient()
    client.force_login(agent.user)
    return client


def claim_url(lead) -> str:
    return f"{LEADS}/{lead.pk}/claim"


def contacted_url(lead) -> str:
    return f"{LEADS}/{lead.pk}/contacted"


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


# --- POST /api/v1/leads ----------------------------------------------------------------


@pytest.mark.parametrize("window", [5, 7])
def test_create_for_a_named_agent_starts_the_claim_window(
    tenant, tenant_client, api_key, teammate, clock, window
):
    tenant.claim_window_minutes = window
    tenant.save(update_fields=["claim_window_minutes"])

    response = tenant_client.post(
        LEADS,
        {
            "name": "Jane Roe",
            "phone": "+4915112345678",
            "email": "jane@example.test",
            "source": "facebook",
            "assigned_agent_id": str(teammate.pk),
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "new"
    assert body["source"] == "facebook"
    assert body["assigned_agent"] == {
        "id": str(teammate.pk),
        "name": teammate.user.full_name,
        "email": teammate.user.email,
    }
    assert parse_dt(body["assigned_at"]) == T0
    assert parse_dt(body["claim_deadline"]) == T0 + minutes(window)
    assert body["contact_deadline"] is None
    assert body["unassigned_reason"] == ""
    assert body["reassignment_count"] == 0
    lead = Lead.objects.for_tenant(tenant).get(pk=body["id"])
    assert body["url"] == lead_url(lead)
    assert lead.claim_deadline == T0 + minutes(window)
    assert counter(teammate) == 1
    [notice] = Notification.all_tenants.filter(recipient=teammate, lead=lead)
    assert notice.kind == NotificationKind.LEAD_ASSIGNED
    assert notice.is_read is False
    assert notice.email_status == "pending"
    activity = ActivityLog.objects.for_tenant(tenant).get(action="lead.created")
    assert (activity.actor_label, activity.via) == ("api_key", f"api_key:{api_key[0].prefix}")
    assert activity.data["agent_id"] == str(teammate.pk)


def test_create_without_an_agent_routes_round_robin_across_members(
    tenant, tenant_client, owner, teammate, clock
):
    members = [teammate, MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)]

    agents = []
    for n in range(6):
        response = tenant_client.post(
            LEADS, {"name": f"Lead {n}", "email": f"l{n}@example.test"}, format="json"
        )
        assert response.status_code == 201, response.content
        agents.append(response.json()["assigned_agent"]["id"])

    assert Counter(agents) == {str(m.pk): 2 for m in members}, "owner (admin) is a later tier"
    assert agents[:3] == agents[3:], "a fixed rotation"
    assert [counter(m) for m in members] == [2, 2, 2]
    assert counter(owner) == 0
    assert Lead.objects.for_tenant(tenant).filter(claim_deadline=T0 + minutes(5)).count() == 6


def test_create_with_a_team_routes_to_its_members(tenant, tenant_client, teammate, clock):
    team = TeamFactory(tenant=tenant)
    in_team = TeamMemberFactory(team=team).membership

    response = tenant_client.post(
        LEADS, {"name": "Jane", "phone": "1", "team_id": str(team.pk)}, format="json"
    )

    assert response.status_code == 201
    assert response.json()["team_id"] == str(team.pk)
    assert response.json()["assigned_agent"]["id"] == str(in_team.pk)


def test_create_when_nobody_can_take_it_is_unassigned_with_a_reason(tenant, tenant_client, clock):
    response = tenant_client.post(LEADS, {"name": "Jane", "phone": "+491"}, format="json")

    assert response.status_code == 201
    body = response.json()
    assert body["assigned_agent"] is None
    assert body["unassigned_reason"] == "no_agents"
    assert body["claim_deadline"] is None
    assert body["assigned_at"] is None
    assert Notification.all_tenants.count() == 0


def test_create_when_every_agent_is_away_says_so(tenant, tenant_client, teammate, clock):
    Membership.all_tenants.filter(pk=teammate.pk).update(presence="away")

    response = tenant_client.post(LEADS, {"name": "Jane", "phone": "+491"}, format="json")

    assert response.json()["unassigned_reason"] == "all_away"
    assert counter(teammate) == 0


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, {"name"}),
        ({"name": ""}, {"name"}),
        ({"name": "Jane"}, {"phone"}),
        ({"name": "Jane", "phone": "", "email": ""}, {"phone"}),
        ({"name": "Jane", "email": "not-an-email"}, {"email"}),
        ({"name": "x" * 201, "phone": "1"}, {"name"}),
        ({"name": "Jane", "phone": "1", "assigned_agent_id": "bob"}, {"assigned_agent_id"}),
        ({"name": "Jane", "phone": "1", "team_id": "12-34"}, {"team_id"}),
    ],
)
def test_create_refuses_invalid_input_naming_the_fields(tenant_client, teammate, payload, fields):
    response = tenant_client.post(LEADS, payload, format="json")

    assert response.status_code == 400
    err = error(response)
    assert err["code"] == "validation_error"
    assert set(err["fields"]) == fields
    assert Lead.all_tenants.count() == 0


def test_create_for_another_tenants_agent_is_a_404(tenant_client, outsider):
    response = tenant_client.post(
        LEADS,
        {"name": "Jane", "phone": "1", "assigned_agent_id": str(outsider.pk)},
        format="json",
    )

    assert response.status_code == 404
    err = error(response)
    assert err["code"] == "agent_not_found"
    assert set(err["fields"]) == {"assigned_agent_id"}
    assert Lead.all_tenants.count() == 0
    assert counter(outsider) == 0


def test_create_for_an_inactive_agent_is_a_404(tenant_client, teammate):
    Membership.all_tenants.filter(pk=teammate.pk).update(is_active=False)

    response = tenant_client.post(
        LEADS,
        {"name": "Jane", "phone": "1", "assigned_agent_id": str(teammate.pk)},
        format="json",
    )

    assert response.status_code == 404
    assert error(response)["code"] == "agent_not_found"


def test_create_for_another_tenants_team_is_a_404(tenant_client, teammate, other_tenant):
    theirs = TeamFactory(tenant=other_tenant)

    response = tenant_client.post(
        LEADS, {"name": "Jane", "phone": "1", "team_id": str(theirs.pk)}, format="json"
    )

    assert response.status_code == 404
    err = error(response)
    assert err["code"] == "team_not_found"
    assert set(err["fields"]) == {"team_id"}
    assert Lead.all_tenants.count() == 0


def test_the_lead_api_needs_the_api_key(api_client, teammate):
    assert api_client.get(LEADS).status_code == 401
    response = api_client.post(LEADS, {"name": "Jane", "phone": "1"}, format="json")
    assert response.status_code == 401
    assert error(response)["code"] == "api_key_missing"


def test_a_logged_in_admin_cannot_use_the_api_key_endpoints(owner):
    response = logged_in(owner).get(LEADS)

    assert response.status_code == 401


# --- GET /api/v1/leads -----------------------------------------------------------------


@pytest.fixture
def listed(tenant, teammate, clock, other_tenant, outsider):
    """Four leads of `tenant` in different states, and one of another tenant.

    a: 09:00, teammate, missed its claim window.       (status new)
    b: 09:02, colleague, claimed 09:03, missed contact.  (status claimed)
    c: 09:30, teammate, claimed and contacted.          (status contacted)
    d: 09:40, colleague, fresh, nothing missed yet.     (status new)
    """
    colleague = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    clock.move_to(T0 - minutes(60))
    a = new_lead(tenant, teammate, name="Anna Alpha", phone="+49 30 1111", email="anna@alpha.de")
    clock.move_to(T0 - minutes(58))
    b = new_lead(tenant, colleague, name="Bernd Beta", phone="+49 40 2222", email="b@beta.de")
    clock.move_to(T0 - minutes(57))
    logged_in(colleague).post(claim_url(b))
    clock.move_to(T0 - minutes(30))
    c = new_lead(tenant, teammate, name="Carla Gamma", phone="+49 89 3333", email="c@gamma.de")
    logged_in(teammate).post(claim_url(c))
    logged_in(teammate).post(contacted_url(c))
    clock.move_to(T0 - minutes(25))
    assert sweep_sla_breaches() == {"claim": 1, "contact": 1}
    clock.move_to(T0 - minutes(20))
    d = new_lead(tenant, colleague, name="Dora Delta", phone="+49 69 4444", email="d@delta.de")
    new_lead(other_tenant, outsider, name="Anna Other", phone="+49 30 1111")
    clock.move_to(T0)
    return {"a": a, "b": b, "c": c, "d": d, "teammate": teammate, "colleague": colleague}


def names(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [lead["name"] for lead in response.json()["results"]]


def test_list_shows_the_tenants_leads_newest_first(tenant_client, listed):
    response = tenant_client.get(LEADS)

    assert names(response) == ["Dora Delta", "Carla Gamma", "Bernd Beta", "Anna Alpha"]
    assert response.json()["count"] == 4


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "new"}, ["Dora Delta", "Anna Alpha"]),
        ({"status": "claimed"}, ["Bernd Beta"]),
        ({"status": "contacted"}, ["Carla Gamma"]),
        ({"status": "closed"}, []),
        ({"breached": "claim"}, ["Anna Alpha"]),
        ({"breached": "contact"}, ["Bernd Beta"]),
        ({"breached": "any"}, ["Bernd Beta", "Anna Alpha"]),
        ({"created_after": "2026-11-23T09:02:00Z"}, ["Dora Delta", "Carla Gamma", "Bernd Beta"]),
        ({"created_before": "2026-11-23T09:30:00Z"}, ["Bernd Beta", "Anna Alpha"]),
        (
            {"created_after": "2026-11-23T09:01:00Z", "created_before": "2026-11-23T09:35:00Z"},
            ["Carla Gamma", "Bernd Beta"],
        ),
        ({"search": "anna"}, ["Anna Alpha"]),
        ({"search": "3333"}, ["Carla Gamma"]),
        ({"search": "BETA.DE"}, ["Bernd Beta"]),
        ({"search": "nobody"}, []),
        ({"status": "new", "search": "delta"}, ["Dora Delta"]),
    ],
)
def test_list_filters(tenant_client, listed, query, expected):
    assert names(tenant_client.get(LEADS, query)) == expected


def test_list_filters_by_agent(tenant_client, listed):
    teammate, colleague = listed["teammate"], listed["colleague"]

    mine = tenant_client.get(LEADS, {"assigned_agent_id": str(teammate.pk)})
    theirs = tenant_client.get(LEADS, {"assigned_agent_id": str(colleague.pk)})

    assert names(mine) == ["Carla Gamma", "Anna Alpha"]
    assert names(theirs) == ["Dora Delta", "Bernd Beta"]


def test_list_by_another_tenants_agent_is_empty(tenant_client, listed, outsider):
    assert names(tenant_client.get(LEADS, {"assigned_agent_id": str(outsider.pk)})) == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "lost"}, "status"),
        ({"breached": "yes"}, "breached"),
        ({"assigned_agent_id": "me"}, "assigned_agent_id"),
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_before": "2026-13-01"}, "created_before"),
    ],
)
def test_list_refuses_invalid_filters_naming_them(tenant_client, listed, query, field):
    response = tenant_client.get(LEADS, query)

    assert response.status_code == 400
    assert set(error(response)["fields"]) == {field}


def test_list_is_paginated(tenant_client, listed):
    first = tenant_client.get(LEADS, {"limit": 3}).json()
    rest = tenant_client.get(LEADS, {"limit": 3, "offset": 3}).json()

    assert first["count"] == rest["count"] == 4
    assert [lead["name"] for lead in first["results"]] == [
        "Dora Delta",
        "Carla Gamma",
        "Bernd Beta",
    ]
    assert first["previous"] is None
    assert "offset=3" in first["next"]
    assert [lead["name"] for lead in rest["results"]] == ["Anna Alpha"]
    assert rest["next"] is None


def test_list_pages_are_capped(tenant, tenant_client, teammate, clock):
    for n in range(3):
        new_lead(tenant, teammate, name=f"Lead {n}")

    response = tenant_client.get(LEADS, {"limit": 100000})

    assert response.status_code == 200
    assert len(response.json()["results"]) == 3


# --- GET /api/v1/leads/<id> ------------------------------------------------------------


def test_detail_includes_the_reassignment_history(tenant, tenant_client, owner, teammate, clock):
    colleague = MembershipFactory(tenant=tenant)
    lead = new_lead(tenant, teammate)
    clock.move_to(T0 + minutes(7))
    reassign_lead(
        tenant=tenant,
        lead_id=lead.pk,
        to_agent_id=colleague.pk,
        reason="unclaimed",
        notes="Teammate is off",
        actor=Actor.for_membership(owner),
        reassigned_by=owner,
    )

    response = tenant_client.get(f"{LEADS}/{lead.pk}")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(lead.pk)
    assert body["assigned_agent"]["id"] == str(colleague.pk)
    assert body["previous_agent_id"] == str(teammate.pk)
    assert body["reassignment_count"] == 1
    [entry] = body["reassignments"]
    assert entry["from_agent_id"] == str(teammate.pk)
    assert entry["to_agent_id"] == str(colleague.pk)
    assert entry["reassigned_by_id"] == str(owner.pk)
    assert (entry["reason"], entry["stage"], entry["notes"]) == (
        "unclaimed",
        "claim",
        "Teammate is off",
    )
    assert parse_dt(entry["created_at"]) == T0 + minutes(7)


def test_detail_of_a_lead_without_history(tenant, tenant_client, teammate, clock):
    lead = new_lead(tenant, teammate)

    body = tenant_client.get(f"{LEADS}/{lead.pk}").json()

    assert body["reassignments"] == []
    assert parse_dt(body["claim_deadline"]) == T0 + minutes(5)


def test_detail_of_another_tenants_lead_is_a_404(tenant_client, other_tenant, outsider):
    theirs = new_lead(other_tenant, outsider)

    response = tenant_client.get(f"{LEADS}/{theirs.pk}")

    assert response.status_code == 404
    assert error(response)["code"] == "lead_not_found"


def test_detail_of_an_unknown_lead_is_a_404(tenant_client):
    response = tenant_client.get(f"{LEADS}/{NO_SUCH_ID}")

    assert response.status_code == 404
    assert error(response)["code"] == "lead_not_found"


# --- claim and contacted (the logged-in agent) -----------------------------------------


@pytest.mark.parametrize("window", [5, 7])
def test_claim_starts_the_contact_window(tenant, teammate, clock, window):
    tenant.contact_window_minutes = window
    tenant.save(update_fields=["contact_window_minutes"])
    lead = new_lead(tenant, teammate)
    clock.move_to(T0 + minutes(2))

    response = logged_in(teammate).post(claim_url(lead))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "claimed"
    assert parse_dt(body["claimed_at"]) == T0 + minutes(2)
    assert body["claim_deadline"] is None
    assert parse_dt(body["contact_deadline"]) == T0 + minutes(2 + window)
    lead.refresh_from_db()
    assert lead.contact_deadline == T0 + minutes(2 + window)
    activity = ActivityLog.objects.for_tenant(tenant).get(action="lead.claimed")
    assert (activity.actor_id, activity.target_id) == (teammate.pk, str(lead.pk))
    assert counter(teammate) == 1, "a claimed lead is still open"


def test_mark_contacted_stops_the_contact_timer(tenant, teammate, clock):
    lead = new_lead(tenant, teammate)
    client = logged_in(teammate)
    clock.move_to(T0 + minutes(1))
    client.post(claim_url(lead))
    clock.move_to(T0 + minutes(4))

    response = client.post(contacted_url(lead))

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "contacted"
    assert parse_dt(body["contacted_at"]) == T0 + minutes(4)
    assert body["contact_deadline"] is None
    assert parse_dt(body["claimed_at"]) == T0 + minutes(1)
    assert ActivityLog.objects.for_tenant(tenant).filter(action="lead.contacted").count() == 1
    clock.move_to(T0 + minutes(60))
    assert sweep_sla_breaches() == {"claim": 0, "contact": 0}, "nothing left to miss"


def test_claiming_twice_is_a_409(tenant, teammate, clock):
    lead = new_lead(tenant, teammate)
    client = logged_in(teammate)
    client.post(claim_url(lead))
    clock.move_to(T0 + minutes(1))

    response = client.post(claim_url(lead))

    assert response.status_code == 409
    assert error(response)["code"] == "already_claimed"
    lead.refresh_from_db()
    assert lead.claimed_at == T0, "the first claim stands"
    assert lead.contact_deadline == T0 + minutes(5)


def test_contacting_before_claiming_is_a_409(tenant, teammate, clock):
    lead = new_lead(tenant, teammate)

    response = logged_in(teammate).post(contacted_url(lead))

    assert response.status_code == 409
    assert error(response)["code"] == "not_claimed"
    lead.refresh_from_db()
    assert lead.status == LeadStatus.NEW
    assert lead.claim_deadline == T0 + minutes(5)


def test_contacting_twice_is_a_409(tenant, teammate, clock):
    lead = new_lead(tenant, teammate)
    client = logged_in(teammate)
    client.post(claim_url(lead))
    client.post(contacted_url(lead))

    response = client.post(contacted_url(lead))

    assert response.status_code == 409
    assert error(response)["code"] == "already_contacted"


@pytest.mark.parametrize("role", [Role.MEMBER, Role.ADMIN])
def test_only_the_assignee_can_claim_or_contact(tenant, teammate, clock, role):
    lead = new_lead(tenant, teammate)
    someone_else = logged_in(MembershipFactory(tenant=tenant, role=role))

    claim = someone_else.post(claim_url(lead))
    logged_in(teammate).post(claim_url(lead))
    contacted = someone_else.post(contacted_url(lead))

    assert (claim.status_code, contacted.status_code) == (403, 403)
    assert error(claim)["code"] == error(contacted)["code"] == "not_assignee"
    lead.refresh_from_db()
    assert lead.status == LeadStatus.CLAIMED


def test_the_previous_assignee_cannot_claim_after_a_reassignment(tenant, owner, teammate, clock):
    colleague = MembershipFactory(tenant=tenant)
    lead = new_lead(tenant, teammate)
    reassign_lead(
        tenant=tenant,
        lead_id=lead.pk,
        to_agent_id=colleague.pk,
        reason="manual",
        actor=Actor.for_membership(owner),
        reassigned_by=owner,
    )

    response = logged_in(teammate).post(claim_url(lead))

    assert response.status_code == 403
    assert error(response)["code"] == "not_assignee"
    assert logged_in(colleague).post(claim_url(lead)).status_code == 200


def test_an_agent_of_another_tenant_gets_a_404(tenant, teammate, outsider, clock):
    lead = new_lead(tenant, teammate)

    claim = logged_in(outsider).post(claim_url(lead))
    contacted = logged_in(outsider).post(contacted_url(lead))

    assert (claim.status_code, contacted.status_code) == (404, 404)
    assert error(claim)["code"] == "lead_not_found"
    assert Lead.all_tenants.get(pk=lead.pk).status == LeadStatus.NEW


def test_an_unknown_lead_is_a_404(teammate):
    response = logged_in(teammate).post(f"{LEADS}/{NO_SUCH_ID}/claim")

    assert response.status_code == 404


def test_a_deactivated_agent_gets_a_404(tenant, teammate, clock):
    lead = new_lead(tenant, teammate)
    client = logged_in(teammate)
    Membership.all_tenants.filter(pk=teammate.pk).update(is_active=False)

    response = client.post(claim_url(lead))

    assert response.status_code == 404


def test_anonymous_agent_actions_are_a_401(api_client, tenant, teammate, clock):
    lead = new_lead(tenant, teammate)

    claim = api_client.post(claim_url(lead))
    contacted = api_client.post(contacted_url(lead))

    assert (claim.status_code, contacted.status_code) == (401, 401)
    assert error(claim)["code"] == "not_authenticated"
    assert Lead.all_tenants.get(pk=lead.pk).status == LeadStatus.NEW


def test_the_api_key_cannot_claim_for_an_agent(tenant, tenant_client, teammate, clock):
    lead = new_lead(tenant, teammate)

    response = tenant_client.post(claim_url(lead))

    assert response.status_code == 401
    assert Lead.all_tenants.get(pk=lead.pk).status == LeadStatus.NEW


# --- agent pages -----------------------------------------------------------------------


def test_my_leads_lists_only_my_open_leads(client, tenant, teammate, outsider, clock):
    colleague = MembershipFactory(tenant=tenant)
    mine = new_lead(tenant, teammate, name="Mine Open")
    closed = new_lead(tenant, teammate, name="Mine Closed")
    Lead.all_tenants.filter(pk=closed.pk).update(status=LeadStatus.CLOSED)
    new_lead(tenant, colleague, name="Colleagues Lead")
    new_lead(outsider.tenant, outsider, name="Outsiders Lead")
    client.force_login(teammate.user)

    response = client.get("/leads/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Mine Open" in html
    assert f"/leads/{mine.pk}/" in html
    assert "Mine Closed" not in html
    assert "Colleagues Lead" not in html
    assert "Outsiders Lead" not in html


def test_my_leads_needs_a_login(client):
    response = client.get("/leads/")

    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_lead_page_of_my_lead(client, tenant, teammate, clock):
    lead = new_lead(tenant, teammate)
    client.force_login(teammate.user)

    response = client.get(f"/leads/{lead.pk}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Jane Roe" in html
    assert f'data-deadline="{lead.claim_deadline.isoformat()}"' in html


def test_lead_page_of_someone_elses_lead_is_a_404(client, tenant, teammate, owner, outsider, clock):
    lead = new_lead(tenant, teammate)

    for agent in (owner, MembershipFactory(tenant=tenant), outsider):
        client.force_login(agent.user)
        assert client.get(f"/leads/{lead.pk}/").status_code == 404, agent


def test_claim_from_the_lead_page(client, tenant, teammate, clock):
    lead = new_lead(tenant, teammate)
    client.force_login(teammate.user)
    clock.move_to(T0 + minutes(1))

    response = client.post(f"/leads/{lead.pk}/claim/", follow=True)

    assert response.redirect_chain == [(f"/leads/{lead.pk}/", 302)]
    assert "Claimed. The contact window has started." in response.content.decode()
    lead.refresh_from_db()
    assert lead.status == LeadStatus.CLAIMED
    assert lead.contact_deadline == T0 + minutes(6)


def test_claiming_twice_from_the_page_shows_the_refusal(client, tenant, teammate, clock):
    lead = new_lead(tenant, teammate)
    client.force_login(teammate.user)
    client.post(f"/leads/{lead.pk}/claim/")

    response = client.post(f"/leads/{lead.pk}/claim/", follow=True)

    assert response.status_code == 200
    assert "already claimed" in response.content.decode()


def test_mark_contacted_from_the_lead_page(client, tenant, teammate, clock):
    lead = new_lead(tenant, teammate)
    client.force_login(teammate.user)
    client.post(f"/leads/{lead.pk}/claim/")

    response = client.post(f"/leads/{lead.pk}/contacted/")

    assert response.status_code == 302
    assert Lead.all_tenants.get(pk=lead.pk).status == LeadStatus.CONTACTED


def test_the_page_actions_need_post_and_the_assignee(client, tenant, teammate, clock):
    lead = new_lead(tenant, teammate)
    client.force_login(teammate.user)
    assert client.get(f"/leads/{lead.pk}/claim/").status_code == 405

    client.force_login(MembershipFactory(tenant=tenant).user)
    assert client.post(f"/leads/{lead.pk}/claim/").status_code == 404
    assert Lead.all_tenants.get(pk=lead.pk).status == LeadStatus.NEW


def test_the_page_form_needs_the_csrf_token(tenant, teammate, clock):
    from django.test import Client

    lead = new_lead(tenant, teammate)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(teammate.user)

    response = browser.post(f"/leads/{lead.pk}/claim/")

    assert response.status_code == 403
    assert Lead.all_tenants.get(pk=lead.pk).status == LeadStatus.NEW


def test_lead_fields_refuse_numbers_and_overlong_emails(tenant_client):
    numbers = tenant_client.post("/api/v1/leads", {"name": 12, "phone": 5}, format="json")
    long_email = tenant_client.post(
        "/api/v1/leads", {"name": "N", "email": "a" * 250 + "@example.test"}, format="json"
    )

    assert numbers.status_code == 400
    assert {"name", "phone"} <= set(numbers.json()["error"]["fields"])
    assert long_email.status_code == 400
    assert "email" in long_email.json()["error"]["fields"]


def test_page_links_never_repeat_the_api_key(api_key, api_client, tenant):
    from leads.services import create_lead
    from tests.factories import MembershipFactory as Agent

    agent = Agent(tenant=tenant)
    for n in range(3):
        create_lead(
            tenant=tenant, actor=Actor.system(), name=f"L{n}", phone="1", assigned_agent_id=agent.pk
        )

    page = api_client.get(f"/api/v1/leads?apiKey={api_key[1]}&limit=1&offset=1").json()

    assert page["next"] and page["previous"] is not None
    assert api_key[1] not in page["next"] and api_key[1] not in (page["previous"] or "")
    assert "limit=1" in page["next"]


def test_closing_a_lead_frees_the_agent_and_stops_its_timers(
    tenant, tenant_client, api_client, other_api_key
):
    from leads.models import Lead
    from tests.factories import MembershipFactory as Agent

    agent = Agent(tenant=tenant)
    created = tenant_client.post(
        "/api/v1/leads",
        {"name": "Done deal", "phone": "1", "assigned_agent_id": str(agent.id)},
        format="json",
    ).json()
    api_client.credentials(HTTP_X_API_KEY=other_api_key[1])

    foreign = api_client.post(f"/api/v1/leads/{created['id']}/close", {}, format="json")
    closed = tenant_client.post(
        f"/api/v1/leads/{created['id']}/close", {"outcome": "won"}, format="json"
    )
    twice = tenant_client.post(f"/api/v1/leads/{created['id']}/close", {}, format="json")

    assert foreign.status_code == 404
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert closed.json()["claim_deadline"] is None
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "lead_closed"
    agent.refresh_from_db()
    assert agent.current_lead_count == 0
    assert Lead.objects.for_tenant(tenant).get().status == "closed"


@pytest.mark.parametrize("how", ["routed", "named agent", "nobody online"])
def test_the_created_lead_answers_as_it_reads_back(tenant, tenant_client, how):
    """The 201 answer is built from the lead as written, not read again: it must say
    what a read of the lead says."""
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    body = {"name": "Jane Roe", "phone": "+4915112345678", "email": "jane@example.com"}
    if how == "named agent":
        body["assigned_agent_id"] = str(agent.pk)
    if how == "nobody online":
        Membership.objects.for_tenant(tenant).update(presence="offline")

    created = tenant_client.post("/api/v1/leads", body, format="json")

    assert created.status_code == 201, created.content
    read = tenant_client.get(f"/api/v1/leads/{created.json()['id']}").json()
    read.pop("reassignments")
    assert created.json() == read
    assert (created.json()["assigned_agent"] is None) == (how == "nobody online")
