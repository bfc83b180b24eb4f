"""GET /api/v1/agents and /api/v1/teams: external systems find the ids they need."""

import datetime
from uuid import uuid4

import pytest
import time_machine
from rest_framework.test import APIClient

from teams.directory import directory_teams, team_is_open_now
from teams.models import Presence, Role, Strategy, TeamHoliday, TeamOpeningHours
from teams.routing.schedules import schedule_is_open
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    TeamScheduleFactory,
)

pytestmark = pytest.mark.django_db


def _ids(page) -> list[str]:
    return [row["id"] for row in page["results"]]


def test_agents_list_shows_each_active_agent_with_its_work_and_teams(tenant, tenant_client):
    alice = MembershipFactory(
        tenant=tenant,
        user__full_name="Alice A",
        role=Role.ADMIN,
        open_session_count=2,
        current_lead_count=5,
    )
    bob = MembershipFactory(tenant=tenant, user__full_name="Bob B", presence=Presence.AWAY)
    MembershipFactory(tenant=tenant, user__full_name="Carl Gone", is_active=False)
    sales, support = TeamFactory(tenant=tenant), TeamFactory(tenant=tenant)
    TeamMemberFactory(team=sales, membership=alice)
    TeamMemberFactory(team=support, membership=alice)

    page = tenant_client.get("/api/v1/agents").json()

    assert page["count"] == 2
    assert page["results"] == [
        {
            "id": str(alice.pk),
            "name": "Alice A",
            "email": alice.user.email,
            "role": "admin",
            "presence": "online",
            "openSessions": 2,
            "openLeads": 5,
            "teamIds": sorted([str(sales.pk), str(support.pk)]),
        },
        {
            "id": str(bob.pk),
            "name": "Bob B",
            "email": bob.user.email,
            "role": "member",
            "presence": "away",
            "openSessions": 0,
            "openLeads": 0,
            "teamIds": [],
        },
    ]


def test_agents_are_filtered_by_presence_and_team(tenant, tenant_client):
    team = TeamFactory(tenant=tenant)
    online_in_team = TeamMemberFactory(team=team).membership
    away_in_team = TeamMemberFactory(
        team=team, membership=MembershipFactory(tenant=tenant, presence=Presence.AWAY)
    ).membership
    MembershipFactory(tenant=tenant)  # online, no team

    assert set(_ids(tenant_client.get(f"/api/v1/agents?team_id={team.pk}").json())) == {
        str(online_in_team.pk),
        str(away_in_team.pk),
    }
    both = tenant_client.get(f"/api/v1/agents?team_id={team.pk}&presence=away").json()
    assert _ids(both) == [str(away_in_team.pk)]
    assert tenant_client.get("/api/v1/agents?presence=offline").json()["count"] == 0


@pytest.mark.parametrize(
    "query, field",
    [
        ("presence=busy", "presence"),
        ("team_id=nope", "team_id"),
        ("limit=0", "limit"),
    ],
)
def test_a_bad_filter_is_refused_naming_it(tenant_client, query, field):
    response = tenant_client.get(f"/api/v1/agents?{query}")

    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [field]


def test_a_team_of_another_tenant_or_none_at_all_is_not_found(tenant_client, other_tenant):
    theirs = TeamFactory(tenant=other_tenant)

    for team_id in (theirs.pk, uuid4()):
        response = tenant_client.get(f"/api/v1/agents?team_id={team_id}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "team_not_found"


def test_each_key_sees_only_its_own_tenant(tenant, tenant_client, owner, outsider, other_api_key):
    other = APIClient()
    other.credentials(HTTP_X_API_KEY=other_api_key[1])
    theirs = TeamFactory(tenant=outsider.tenant)
    ours = TeamFactory(tenant=tenant)

    assert _ids(tenant_client.get("/api/v1/agents").json()) == [str(owner.pk)]
    assert _ids(other.get("/api/v1/agents").json()) == [str(outsider.pk)]
    assert _ids(tenant_client.get("/api/v1/teams").json()) == [str(ours.pk)]
    assert _ids(other.get("/api/v1/teams").json()) == [str(theirs.pk)]
    assert tenant_client.get("/api/v1/agents").status_code == 200
    assert APIClient().get("/api/v1/agents").status_code == 401


def test_agents_are_paginated_like_the_leads_list(tenant, tenant_client):
    for n in range(5):
        MembershipFactory(tenant=tenant, user__full_name=f"Agent {n}")

    first = tenant_client.get("/api/v1/agents?limit=2").json()
    second = tenant_client.get(first["next"]).json()

    assert first["count"] == 5 and len(first["results"]) == 2
    assert [r["name"] for r in first["results"] + second["results"]] == [
        f"Agent {n}" for n in range(4)
    ]
    assert first["previous"] is None and "apiKey" not in first["next"]


def test_the_agents_list_costs_the_same_queries_for_one_or_many(
    tenant, tenant_client, django_assert_max_num_queries
):
    def build(n):
        team = TeamFactory(tenant=tenant)
        for _ in range(n):
            TeamMemberFactory(team=team)

    build(1)
    with django_assert_max_num_queries(8) as few:
        tenant_client.get("/api/v1/agents")
    build(40)
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = tenant_client.get("/api/v1/agents?limit=500").json()
    assert page["count"] == 41


def test_teams_list_shows_strategy_default_schedule_and_active_members(tenant, tenant_client):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    sales = TeamFactory(tenant=tenant, name="Sales", is_default=True)
    AssignmentConfigFactory(tenant=tenant, team=sales, strategy=Strategy.MANUAL)
    support = TeamFactory(tenant=tenant, name="Support")
    member = TeamMemberFactory(team=sales).membership
    gone = TeamMemberFactory(
        team=sales, membership=MembershipFactory(tenant=tenant, is_active=False)
    )
    schedule = TeamScheduleFactory(team=support, timezone="Europe/Berlin")
    # Mondays 09:00-17:00 Berlin time.
    TeamOpeningHours.objects.create(
        tenant=tenant,
        schedule=schedule,
        weekday=0,
        opens_at=datetime.time(9),
        closes_at=datetime.time(17),
    )

    # Monday 2026-11-23 10:00 UTC is 11:00 in Berlin: open.
    with time_machine.travel(datetime.datetime(2026, 11, 23, 10, tzinfo=datetime.UTC)):
        page = tenant_client.get("/api/v1/teams").json()
    with time_machine.travel(datetime.datetime(2026, 11, 23, 17, tzinfo=datetime.UTC)):
        closed = tenant_client.get("/api/v1/teams").json()

    assert page["results"] == [
        {
            "id": str(sales.pk),
            "name": "Sales",
            "strategy": "manual",
            "isDefault": True,
            "openNow": True,
            "memberIds": [str(member.pk)],
        },
        {
            "id": str(support.pk),
            "name": "Support",
            "strategy": "least_busy",
            "isDefault": False,
            "openNow": True,
            "memberIds": [],
        },
    ]
    assert [row["openNow"] for row in closed["results"]] == [True, False]
    assert str(gone.membership_id) not in str(page)


def test_teams_are_filtered_by_agent(tenant, tenant_client, outsider):
    sales, support = TeamFactory(tenant=tenant), TeamFactory(tenant=tenant)
    agent = TeamMemberFactory(team=sales).membership

    assert _ids(tenant_client.get(f"/api/v1/teams?agent_id={agent.pk}").json()) == [str(sales.pk)]
    assert tenant_client.get(f"/api/v1/teams?agent_id={outsider.pk}").status_code == 404
    bad = tenant_client.get("/api/v1/teams?agent_id=1")
    assert bad.status_code == 400 and list(bad.json()["error"]["fields"]) == ["agent_id"]
    assert support  # in the tenant, not in the filtered page


def test_the_teams_list_costs_the_same_queries_for_one_or_many(
    tenant, tenant_client, django_assert_max_num_queries
):
    def build(n):
        for _ in range(n):
            team = TeamFactory(tenant=tenant)
            AssignmentConfigFactory(tenant=tenant, team=team)
            TeamMemberFactory(team=team)
            schedule = TeamScheduleFactory(team=team)
            TeamOpeningHours.objects.create(
                tenant=tenant,
                schedule=schedule,
                weekday=1,
                opens_at=datetime.time(8),
                closes_at=datetime.time(0),
            )
            TeamHoliday.objects.create(tenant=tenant, schedule=schedule, date="2026-12-25")

    build(1)
    with django_assert_max_num_queries(10) as few:
        tenant_client.get("/api/v1/teams")
    build(30)
    with django_assert_max_num_queries(len(few.captured_queries)):
        page = tenant_client.get("/api/v1/teams?limit=500").json()
    assert page["count"] == 31


@pytest.mark.parametrize("hour", range(0, 24, 3))
@pytest.mark.parametrize("day", [21, 22, 23, 24, 25])  # Sat..Wed, with a holiday
def test_open_now_agrees_with_the_engines_schedule_rule(tenant, hour, day):
    team = TeamFactory(tenant=tenant)
    schedule = TeamScheduleFactory(team=team, timezone="America/New_York")
    for weekday in (0, 1, 2):
        TeamOpeningHours.objects.create(
            tenant=tenant,
            schedule=schedule,
            weekday=weekday,
            opens_at=datetime.time(8),
            closes_at=datetime.time(0),
        )
    TeamHoliday.objects.create(tenant=tenant, schedule=schedule, date="2026-11-24")
    at = datetime.datetime(2026, 11, day, hour, 30, tzinfo=datetime.UTC)

    [prefetched] = directory_teams(tenant=tenant)

    assert team_is_open_now(prefetched, at) == schedule_is_open(schedule, at)
