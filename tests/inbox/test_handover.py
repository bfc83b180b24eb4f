"""POST /api/v1/handover: every branch of the handover flow and of why a session stays
unassigned."""

import datetime
import logging

import pytest
import time_machine

from audit.models import ActivityLog
from inbox.models import InboxSession
from teams.models import Role, Strategy, TeamHoliday, TeamOpeningHours
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    TeamScheduleFactory,
)

URL = "/api/v1/handover"
pytestmark = pytest.mark.django_db


def post(client, body, **headers):
    return client.post(URL, body, format="json", **headers)


def handover(client, contact="+491511111111", **fields):
    response = post(client, {"contactId": contact, "sendHandoverMessage": False, **fields})
    assert response.status_code in (200, 201), response.content
    return response.json()


def unassigned_warnings(caplog):
    return [r.getMessage() for r in caplog.records if "left unassigned" in r.getMessage()]


# --- Step 3: assignment, with and without teamId ---------------------------------------


def test_team_id_routes_to_that_teams_members(tenant, tenant_client):
    MembershipFactory(tenant=tenant, role=Role.MEMBER)  # a tenant member outside the team
    team = TeamFactory(tenant=tenant)
    in_team = TeamMemberFactory(team=team).membership

    response = post(tenant_client, {"contactId": "c1", "teamId": str(team.id), "name": "Jane"})

    assert response.status_code == 201
    body = response.json()
    assert body["sessionCreated"] is True
    assert body["status"] == "assigned"
    assert body["assignedAgent"] == {
        "id": str(in_team.id),
        "name": in_team.user.full_name,
        "email": in_team.user.email,
    }
    assert body["teamId"] == str(team.id)
    assert body["strategy"] == "round_robin"
    assert body["unassignedReason"] is None
    assert body["confirmationMessage"] == "queued"
    session = InboxSession.objects.for_tenant(tenant).get(pk=body["sessionId"])
    assert session.contact_name == "Jane"
    assert session.last_assignment_attempt["tier"] == "team"


@pytest.mark.parametrize("role", [Role.MEMBER, Role.ADMIN, Role.SUPER_ADMIN])
def test_without_team_id_any_single_tenant_role_is_found(tenant, tenant_client, role):
    agent = MembershipFactory(tenant=tenant, role=role)

    body = handover(tenant_client)

    assert body["status"] == "assigned"
    assert body["assignedAgent"]["id"] == str(agent.id)
    session = InboxSession.objects.for_tenant(tenant).get(pk=body["sessionId"])
    assert session.last_assignment_attempt["tier"] == role
    tried = [t["tier"] for t in session.last_assignment_attempt["tiers"]]
    assert tried[0] == "team", "the team tier is tried first and skipped without teamId"


def test_waterfall_prefers_members_to_admins_to_super_admins(tenant, tenant_client):
    MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN)
    admin = MembershipFactory(tenant=tenant, role=Role.ADMIN)

    assert handover(tenant_client, contact="a")["assignedAgent"]["id"] == str(admin.id)

    member = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    assert handover(tenant_client, contact="b")["assignedAgent"]["id"] == str(member.id)


def test_default_team_is_the_fallback_when_no_tier_has_agents(tenant, tenant_client):
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["team", "super_admin"]})
    default_team = TeamFactory(tenant=tenant, is_default=True)
    fallback = TeamMemberFactory(team=default_team, membership__role=Role.MEMBER).membership

    body = handover(tenant_client)

    assert body["assignedAgent"]["id"] == str(fallback.id)
    assert body["teamId"] == str(default_team.id)
    session = InboxSession.objects.for_tenant(tenant).get(pk=body["sessionId"])
    assert session.last_assignment_attempt["tier"] == "default_team"


def test_nobody_leaves_the_session_unassigned_with_the_seed_log_line(tenant, tenant_client, caplog):
    caplog.set_level(logging.WARNING, logger="inbox.services")

    response = post(tenant_client, {"contactId": "lonely", "sendHandoverMessage": False})

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "unassigned"
    assert body["assignedAgent"] is None
    assert body["unassignedReason"] == "no_agents"
    assert unassigned_warnings(caplog) == [
        f"Handover session {body['sessionId']} left unassigned. Strategy=round_robin, "
        f"availableAgents=0 (tenantId={tenant.id}, teamId=none). Check: strategy is "
        '"manual", team has no members, or tenant has no member/admin/super_admin roles.'
    ]
    session = InboxSession.objects.for_tenant(tenant).get(pk=body["sessionId"])
    assert session.unassigned_reason == "no_agents"
    tiers = {t["tier"]: t["agents"] for t in session.last_assignment_attempt["tiers"]}
    assert tiers == {"team": 0, "member": 0, "admin": 0, "super_admin": 0, "default_team": 0}


def test_team_without_members_is_unassigned_and_does_not_fall_back(tenant, tenant_client, caplog):
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    empty_team = TeamFactory(tenant=tenant)
    caplog.set_level(logging.WARNING, logger="inbox.services")

    body = handover(tenant_client, teamId=str(empty_team.id))

    assert body["status"] == "unassigned"
    assert body["unassignedReason"] == "no_agents"
    assert f"teamId={empty_team.id})" in unassigned_warnings(caplog)[0]


def test_manual_strategy_never_assigns(tenant, tenant_client, caplog):
    MembershipFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.MANUAL)
    caplog.set_level(logging.WARNING, logger="inbox.services")

    body = handover(tenant_client)

    assert body["status"] == "unassigned"
    assert body["strategy"] == "manual"
    assert body["unassignedReason"] == "manual_strategy"
    assert "Strategy=manual," in unassigned_warnings(caplog)[0]


def test_team_strategy_overrides_the_tenant_strategy(tenant, tenant_client):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.MANUAL)
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=Strategy.LEAST_BUSY)
    agent = TeamMemberFactory(team=team).membership

    body = handover(tenant_client, teamId=str(team.id))

    assert body["strategy"] == "least_busy"
    assert body["assignedAgent"]["id"] == str(agent.id)


def test_disabled_config_leaves_sessions_unassigned(tenant, tenant_client):
    MembershipFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, is_enabled=False)

    body = handover(tenant_client)

    assert body["unassignedReason"] == "assignment_disabled"


class TestTeamSchedule:
    """Mon-Fri 09:00-17:00 in New York; checked from UTC instants."""

    @pytest.fixture
    def scheduled_team(self, tenant):
        team = TeamFactory(tenant=tenant)
        TeamMemberFactory(team=team)
        schedule = TeamScheduleFactory(team=team, timezone="America/New_York")
        for weekday in range(5):
            TeamOpeningHours.objects.create(
                tenant=tenant,
                schedule=schedule,
                weekday=weekday,
                opens_at=datetime.time(9),
                closes_at=datetime.time(17),
            )
        TeamHoliday.objects.create(
            tenant=tenant, schedule=schedule, date=datetime.date(2026, 11, 26), name="Thanksgiving"
        )
        return team

    @pytest.mark.parametrize(
        ("utc_instant", "expected"),
        [
            # Monday 2026-11-23, New York is UTC-5 in November.
            ("2026-11-23T13:59:00Z", "unassigned"),  # 08:59 in New York
            ("2026-11-23T14:00:00Z", "assigned"),  # 09:00
            ("2026-11-23T21:59:00Z", "assigned"),  # 16:59
            ("2026-11-23T22:00:00Z", "unassigned"),  # 17:00
            # Saturday 2026-11-28 01:00 UTC is still Friday 20:00 in New York: closed.
            ("2026-11-28T01:00:00Z", "unassigned"),
            # Friday 2026-11-27 15:00 UTC is 10:00 Friday in New York: open.
            ("2026-11-27T15:00:00Z", "assigned"),
            # Thanksgiving Thursday at noon New York time: a holiday.
            ("2026-11-26T17:00:00Z", "unassigned"),
        ],
    )
    def test_closed_team_leaves_session_unassigned(
        self, tenant_client, scheduled_team, utc_instant, expected
    ):
        with time_machine.travel(utc_instant, tick=False):
            body = handover(tenant_client, teamId=str(scheduled_team.id))
        assert body["status"] == expected
        if expected == "unassigned":
            assert body["unassignedReason"] == "team_closed"

    def test_disabled_schedule_is_ignored(self, tenant_client, scheduled_team):
        scheduled_team.schedule.is_enabled = False
        scheduled_team.schedule.save()
        with time_machine.travel("2026-11-28T01:00:00Z", tick=False):
            assert handover(tenant_client, teamId=str(scheduled_team.id))["status"] == "assigned"


# --- Step 5: who counts as available ---------------------------------------------------


def test_agents_at_capacity_are_skipped_and_all_full_is_explained(tenant, tenant_client):
    busy = MembershipFactory(tenant=tenant, capacity=1)
    free = MembershipFactory(tenant=tenant, capacity=2)
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)

    picks = [handover(tenant_client, contact=f"c{i}")["assignedAgent"]["id"] for i in range(3)]
    assert sorted(picks) == sorted([str(busy.id), str(free.id), str(free.id)])

    body = handover(tenant_client, contact="c-overflow")
    assert body["status"] == "unassigned"
    assert body["unassignedReason"] == "all_at_capacity"


def test_unavailable_inactive_and_deactivated_people_are_never_picked(tenant, tenant_client):
    MembershipFactory(tenant=tenant, presence="away")
    MembershipFactory(tenant=tenant, is_active=False)
    MembershipFactory(tenant=tenant, user__is_active=False)
    active = MembershipFactory(tenant=tenant, role=Role.ADMIN)

    picks = {handover(tenant_client, contact=f"c{i}")["assignedAgent"]["id"] for i in range(4)}

    assert picks == {str(active.id)}


def test_agents_of_another_tenant_are_never_picked(tenant, tenant_client, outsider):
    body = handover(tenant_client)
    assert body["status"] == "unassigned"


def test_another_tenants_team_is_404(tenant_client, other_tenant):
    foreign = TeamFactory(tenant=other_tenant)
    TeamMemberFactory(team=foreign)

    response = post(tenant_client, {"contactId": "c1", "teamId": str(foreign.id)})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "team_not_found"
    assert "teamId" in response.json()["error"]["fields"]
    assert not InboxSession.all_tenants.exists(), "nothing is half-written"


# --- Strategies ------------------------------------------------------------------------


def test_round_robin_cycles_through_the_team_in_a_fixed_order(tenant, tenant_client):
    team = TeamFactory(tenant=tenant)
    agents = [TeamMemberFactory(team=team).membership for _ in range(3)]

    picks = [
        handover(tenant_client, contact=f"c{i}", teamId=str(team.id))["assignedAgent"]["id"]
        for i in range(6)
    ]

    assert picks[:3] == picks[3:]
    assert set(picks) == {str(a.id) for a in agents}


def test_least_busy_prefers_fewest_open_sessions_then_longest_idle(tenant, tenant_client):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    first = MembershipFactory(tenant=tenant)
    second = MembershipFactory(tenant=tenant)

    a = handover(tenant_client, contact="a")["assignedAgent"]["id"]
    b = handover(tenant_client, contact="b")["assignedAgent"]["id"]
    assert {a, b} == {str(first.id), str(second.id)}, "one each: the busier one is skipped"

    c = handover(tenant_client, contact="c")["assignedAgent"]["id"]
    assert c == a, "equal load: the one idle longest (assigned first) goes next"


# --- Step 2: one open session per contact ----------------------------------------------


def test_open_session_is_reused_keeps_its_agent_and_updates_name_and_context(tenant, tenant_client):
    MembershipFactory(tenant=tenant)
    MembershipFactory(tenant=tenant)
    first = post(tenant_client, {"contactId": "c1", "name": "J", "sendHandoverMessage": False})
    again = post(
        tenant_client,
        {
            "contactId": "c1",
            "name": "Jane Doe",
            "context": {"topic": "billing"},
            "sendHandoverMessage": False,
        },
    )

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["sessionId"] == first.json()["sessionId"]
    assert again.json()["sessionCreated"] is False
    assert again.json()["assignedAgent"] == first.json()["assignedAgent"]
    session = InboxSession.objects.for_tenant(tenant).get()
    assert (session.contact_name, session.context) == ("Jane Doe", {"topic": "billing"})


def test_same_contact_on_another_channel_gets_its_own_session(tenant, tenant_client):
    one = handover(tenant_client, contact="c1", channel="whatsapp")
    two = handover(tenant_client, contact="c1", channel="webchat")
    assert one["sessionId"] != two["sessionId"]


def test_reused_unassigned_session_is_routed_again(tenant, tenant_client):
    first = handover(tenant_client, contact="c1")
    assert first["status"] == "unassigned"
    agent = MembershipFactory(tenant=tenant)

    again = handover(tenant_client, contact="c1")

    assert again["sessionId"] == first["sessionId"]
    assert again["status"] == "assigned"
    assert again["assignedAgent"]["id"] == str(agent.id)


# --- Confirmation message flag ---------------------------------------------------------


def test_send_handover_message_false_skips_the_confirmation(tenant, tenant_client):
    body = handover(tenant_client)
    assert body["confirmationMessage"] == "skipped"
    session = InboxSession.objects.for_tenant(tenant).get()
    assert session.confirmation_status == "skipped"


def test_custom_handover_message_is_stored_for_sending(tenant, tenant_client, deliver_outbox):
    response = post(tenant_client, {"contactId": "c1", "handoverMessage": "One moment please"})
    assert response.json()["confirmationMessage"] == "queued"
    session = InboxSession.objects.for_tenant(tenant).get()
    assert session.confirmation_message.payload["text"] == "One moment please"
    assert session.confirmation_status == "pending"
    deliver_outbox()
    session.refresh_from_db()
    # No CRM integration: the message fails, the session and its status stay visible.
    assert session.confirmation_status == "failed"


# --- Audit -----------------------------------------------------------------------------


def test_activity_log_records_creation_and_assignment(tenant, tenant_client, api_key):
    agent = MembershipFactory(tenant=tenant)
    body = handover(tenant_client)

    rows = ActivityLog.objects.for_tenant(tenant).filter(target_id=body["sessionId"])
    by_action = {row.action: row for row in rows}
    assert {"session.created", "session.assigned"} <= set(by_action)
    assigned = by_action["session.assigned"]
    assert assigned.data["agent_id"] == str(agent.id)
    assert assigned.data["strategy"] == "round_robin"
    assert assigned.data["tier"] == "member"
    assert (assigned.actor_label, assigned.via) == ("api_key", f"api_key:{api_key[0].prefix}")


def test_activity_log_records_why_a_session_stayed_unassigned(tenant, tenant_client):
    body = handover(tenant_client)
    row = ActivityLog.objects.for_tenant(tenant).get(action="session.unassigned")
    assert row.target_id == body["sessionId"]
    assert row.data["reason"] == "no_agents"


# --- Validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "contactId"),
        ({"contactId": ""}, "contactId"),
        ({"contactId": 12345}, "contactId"),
        ({"contactId": "x" * 129}, "contactId"),
        ({"contactId": "c", "channel": "pigeon"}, "channel"),
        ({"contactId": "c", "context": ["not", "an", "object"]}, "context"),
        ({"contactId": "c", "context": {"blob": "x" * (16 * 1024)}}, "context"),
        ({"contactId": "c", "teamId": "not-a-uuid"}, "teamId"),
        ({"contactId": "c", "sendHandoverMessage": "perhaps"}, "sendHandoverMessage"),
        ({"contactId": "c", "name": {"first": "J"}}, "name"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(tenant_client, body, field):
    response = post(tenant_client, body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["fields"]
    assert field in error["message"]
    assert not InboxSession.all_tenants.exists()


def test_body_over_64_kb_is_refused_with_413(tenant_client):
    response = post(tenant_client, {"contactId": "c", "name": "n", "pad": "x" * (65 * 1024)})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_malformed_json_is_a_400(tenant_client):
    response = tenant_client.post(URL, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_the_api_key_can_come_from_the_query_string(api_key, api_client, tenant):
    MembershipFactory(tenant=tenant)
    response = api_client.post(
        f"{URL}?apiKey={api_key[1]}",
        {"contactId": "c1", "sendHandoverMessage": False},
        format="json",
    )
    assert response.status_code == 201


def test_missing_or_revoked_key_is_401(api_client, tenant_client, api_key):
    from core.actor import Actor
    from teams.services import revoke_api_key

    assert post(api_client, {"contactId": "c"}).status_code == 401
    revoke_api_key(api_key=api_key[0], actor=Actor.system())
    assert post(tenant_client, {"contactId": "c"}).status_code == 401
    assert not InboxSession.all_tenants.exists()


def test_hostile_bodies_get_json_errors_not_500s(tenant_client):
    deep = tenant_client.post(URL, "[" * 30000 + "]" * 30000, content_type="application/json")
    nul_value = post(tenant_client, {"contactId": "c", "context": {"note": "a\x00b"}})
    nul_key = post(tenant_client, {"contactId": "c", "context": {"a\x00": 1}})
    nul_contact = post(tenant_client, {"contactId": "c\x00"})
    # A lone surrogate is valid JSON (an escape) but not storable text.
    surrogate_value, surrogate_key = (
        tenant_client.post(URL, body, content_type="application/json")
        for body in (
            '{"contactId": "c", "context": {"k": "a\\udfffb"}}',
            '{"contactId": "c", "context": {"list": [{"\\ud800": 1}]}}',
        )
    )

    assert deep.status_code == 400 and deep.json()["error"]["code"] == "invalid_json"
    assert nul_value.status_code == 400 and "context" in nul_value.json()["error"]["fields"]
    assert nul_key.status_code == 400 and "context" in nul_key.json()["error"]["fields"]
    assert nul_contact.status_code == 400 and "contactId" in nul_contact.json()["error"]["fields"]
    for response in (surrogate_value, surrogate_key):
        assert response.status_code == 400, response.content
        assert "surrogate" in response.json()["error"]["fields"]["context"][0]
    assert not InboxSession.all_tenants.exists()


def test_unknown_api_paths_answer_json_404(tenant_client):
    response = tenant_client.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    bad_id = tenant_client.get("/api/v1/leads/not-a-uuid")
    assert bad_id.status_code == 404 and bad_id["Content-Type"] == "application/json"


def test_the_audit_names_the_session_by_contact_and_channel_label(tenant, tenant_client):
    MembershipFactory(tenant=tenant)
    handover(tenant_client, contact="+4915199", name="", channel="webchat")
    handover(tenant_client, contact="+4915100", name="Ann", channel="sms")
    labels = set(
        ActivityLog.objects.for_tenant(tenant)
        .filter(action="session.created")
        .values_list("target_label", flat=True)
    )
    assert labels == {"+4915199 (Web chat)", "Ann (SMS)"}
