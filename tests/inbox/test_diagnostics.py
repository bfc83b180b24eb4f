"""The "session not assigned" checklist, run for you.

`manage.py diagnose_handover` and `GET /api/v1/diagnostics/handover` check what the
assignment depends on, with OK / PROBLEM / INFO, the fixes (Options A: tenant roles, B:
a default team, C: send a team), and a verdict: who the next handover would go to, found
without assigning anyone.
"""

import datetime
import json
import uuid
from io import StringIO

import pytest
import time_machine
from django.core.management import CommandError, call_command

from inbox.models import CrmIntegration, InboxSession
from teams.models import Role, Strategy, TeamOpeningHours
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    TeamScheduleFactory,
)

pytestmark = pytest.mark.django_db

URL = "/api/v1/diagnostics/handover"
OPTION_A = "Option A"
OPTION_B = "Option B"
OPTION_C = "Option C"


def diagnose(*args) -> str:
    out = StringIO()
    call_command("diagnose_handover", *args, stdout=out, no_color=True)
    return out.getvalue()


def diagnose_json(*args) -> dict:
    return json.loads(diagnose(*args, "--json"))


def check(report: dict, name: str) -> dict:
    found = [c for c in report["checks"] if c["check"] == name]
    assert len(found) == 1, f"expected one {name!r} check in {report['checks']}"
    return found[0]


def lines_of(text: str, name: str) -> list[str]:
    """The check's line and its `fix:` line, if any."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if f"] {name}: " in line:
            follow = lines[i + 1] if i + 1 < len(lines) else ""
            return [line, follow] if follow.strip().startswith("fix:") else [line]
    raise AssertionError(f"no {name!r} line in:\n{text}")


def complete_crm(tenant, **overrides):
    fields = {
        "name": "Main CRM",
        "is_active": True,
        "api_url": "https://crm.example.test",
        "api_key_encrypted": "x",
        "config": {"phoneNumberId": "1"},
    }
    fields.update(overrides)
    return CrmIntegration.objects.create(tenant=tenant, **fields)


def real_handover(client, contact, **fields):
    response = client.post(
        "/api/v1/handover",
        {"contactId": contact, "sendHandoverMessage": False, **fields},
        format="json",
    )
    assert response.status_code in (200, 201), response.content
    return response.json()


def add_weekday_hours(schedule, opens, closes):
    for weekday in range(5):
        TeamOpeningHours.objects.create(
            tenant=schedule.tenant,
            schedule=schedule,
            weekday=weekday,
            opens_at=opens,
            closes_at=closes,
        )


# --- A healthy tenant ------------------------------------------------------------------


@pytest.fixture
def healthy(tenant, api_key):
    agents = [MembershipFactory(tenant=tenant, role=Role.MEMBER) for _ in range(2)]
    complete_crm(tenant)
    return agents


def test_healthy_tenant_is_all_ok_and_names_the_agent_who_would_be_picked(tenant, api_key, healthy):
    text = diagnose("--tenant", tenant.slug)

    assert text.startswith(f"Handover checklist for Acme ({tenant.id})")
    assert "[PROBLEM]" not in text
    assert "problem(s) found" not in text
    assert f"[OK     ] api_keys: 1 active API key(s): {api_key[0].prefix}." in text
    assert (
        "[OK     ] tenant_agents: Active agents by role: member=2, admin=0, super_admin=0." in text
    )
    assert "[OK     ] assignment_config: Strategy round_robin (default config), enabled" in text
    assert "[OK     ] crm_integration: CRM integration 'Main CRM' is complete." in text

    verdict = diagnose_json("--tenant", tenant.slug)["verdict"]
    agent = next(a for a in healthy if str(a.id) == verdict["agent"]["id"])
    assert (
        f"Verdict: the next handover would go to {agent.user.full_name} <{agent.user.email}> "
        "(round_robin, tier member)." in text
    )


def test_diagnosis_does_not_advance_round_robin(tenant, tenant_client, healthy):
    predicted = diagnose_json("--tenant", str(tenant.id))["verdict"]["agent"]["id"]
    assert diagnose_json("--tenant", str(tenant.id))["verdict"]["agent"]["id"] == predicted
    assert tenant_client.get(URL).json()["verdict"]["agent"]["id"] == predicted

    first = real_handover(tenant_client, "c1")

    assert first["assignedAgent"]["id"] == predicted
    # Now the other agent is next, and the report says so.
    after = diagnose_json("--tenant", tenant.slug)["verdict"]["agent"]["id"]
    assert after != predicted
    assert real_handover(tenant_client, "c2")["assignedAgent"]["id"] == after


def test_diagnosis_stamps_no_agent(tenant, healthy):
    diagnose("--tenant", tenant.slug)

    for agent in healthy:
        agent.refresh_from_db()
        assert agent.last_assigned_at is None


def test_tenant_is_found_by_id_or_slug(tenant, healthy):
    by_slug = diagnose_json("--tenant", "acme")
    by_id = diagnose_json("--tenant", str(tenant.id))
    assert by_slug["tenantId"] == by_id["tenantId"] == str(tenant.id)
    assert by_slug["verdict"] == by_id["verdict"]


def test_json_output_has_the_report_shape(tenant, healthy):
    report = diagnose_json("--tenant", tenant.slug)

    assert report["tenantId"] == str(tenant.id)
    assert report["teamId"] is None
    assert report["problems"] == 0
    names = [c["check"] for c in report["checks"]]
    assert names == [
        "api_keys",
        "tenant_agents",
        "default_team",
        "assignment_config",
        "crm_integration",
    ]
    for item in report["checks"]:
        assert {"check", "status", "detail", "fix"} <= set(item)
        assert item["status"] in {"OK", "PROBLEM", "INFO"}
    assert check(report, "tenant_agents")["data"] == {
        "member": 2,
        "admin": 0,
        "super_admin": 0,
        "routed": 2,
    }
    assert report["verdict"]["wouldAssign"] is True
    assert report["verdict"]["tier"] == "member"
    assert report["verdict"]["fixes"] == []


# --- Nobody to assign: Options A, B and C ----------------------------------------------


def test_no_agents_and_no_default_team_points_to_options_a_and_b(tenant, api_key):
    text = diagnose("--tenant", tenant.slug)

    agents_line, agents_fix = lines_of(text, "tenant_agents")
    assert agents_line.startswith("[PROBLEM] tenant_agents: ")
    assert "member=0, admin=0, super_admin=0" in agents_line
    assert OPTION_A in agents_fix
    team_line, team_fix = lines_of(text, "default_team")
    assert team_line.startswith("[PROBLEM] default_team: No default team.")
    assert OPTION_B in team_fix
    assert "Verdict: the next handover would stay unassigned (no_agents)." in text
    assert "3 problem(s) found." in text  # and no CRM integration

    verdict = diagnose_json("--tenant", tenant.slug)["verdict"]
    assert verdict["wouldAssign"] is False
    assert verdict["agent"] is None
    assert verdict["reason"] == "no_agents"
    assert verdict["availableAgents"] == 0
    assert [fix.split(" - ")[0] for fix in verdict["fixes"]] == [OPTION_C, OPTION_A, OPTION_B]
    for fix in verdict["fixes"]:
        assert f"  - {fix}" in text


def test_no_api_key_is_a_problem(tenant):
    MembershipFactory(tenant=tenant)

    line, fix = lines_of(diagnose("--tenant", tenant.slug), "api_keys")

    assert line.startswith("[PROBLEM] api_keys: No active API key")
    assert "create_api_key" in fix


def test_default_team_with_members_is_who_the_next_handover_goes_to(tenant, api_key):
    # Tenant roles outside the waterfall find nobody, so the default team is the fallback.
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["team", "super_admin"]})
    default_team = TeamFactory(tenant=tenant, is_default=True, name="Support")
    member = TeamMemberFactory(team=default_team, membership__role=Role.MEMBER).membership

    report = diagnose_json("--tenant", tenant.slug)
    text = diagnose("--tenant", tenant.slug)

    default_check = check(report, "default_team")
    assert default_check["status"] == "OK"
    assert default_check["data"]["activeMembers"] == 1
    assert report["verdict"]["wouldAssign"] is True
    assert report["verdict"]["tier"] == "default_team"
    assert report["verdict"]["agent"]["id"] == str(member.id)
    assert "[OK     ] default_team: Default team 'Support': 1 active member(s)." in text
    assert f"<{member.user.email}> (round_robin, tier default_team)." in text


def test_empty_default_team_without_tenant_agents_is_a_problem(tenant, api_key):
    default_team = TeamFactory(tenant=tenant, is_default=True, name="Support")
    TeamMemberFactory(team=default_team, membership__is_active=False)

    line, fix = lines_of(diagnose("--tenant", tenant.slug), "default_team")

    assert line == "[PROBLEM] default_team: Default team 'Support' has no active members."
    assert OPTION_B in fix


def test_team_without_members_is_a_problem_that_points_to_option_c(tenant, api_key):
    MembershipFactory(tenant=tenant)
    team = TeamFactory(tenant=tenant, name="Sales")

    text = diagnose("--tenant", tenant.slug, "--team", str(team.id))
    report = diagnose_json("--tenant", tenant.slug, "--team", str(team.id))

    assert f"Team: Sales ({team.id})" in text
    line, fix = lines_of(text, "team")
    assert line.startswith("[PROBLEM] team: Team 'Sales' has no active members")
    assert OPTION_C in fix
    assert report["teamId"] == str(team.id)
    assert check(report, "team")["data"]["activeMembers"] == 0
    assert report["verdict"]["reason"] == "no_agents"
    assert report["verdict"]["wouldAssign"] is False
    assert any(OPTION_C in fix for fix in report["verdict"]["fixes"])
    assert "Verdict: the next handover would stay unassigned (no_agents)." in text


def test_team_with_members_would_assign_one_of_them(tenant, api_key):
    MembershipFactory(tenant=tenant)
    team = TeamFactory(tenant=tenant, name="Sales")
    in_team = TeamMemberFactory(team=team).membership
    TeamMemberFactory(team=team, membership__presence="away")

    report = diagnose_json("--tenant", tenant.slug, "--team", str(team.id))

    team_check = check(report, "team")
    assert team_check["status"] == "OK"
    assert (team_check["data"]["activeMembers"], team_check["data"]["available"]) == (2, 1)
    assert report["verdict"]["agent"]["id"] == str(in_team.id)
    assert report["verdict"]["tier"] == "team"


def test_everyone_away_or_full_is_an_availability_problem(tenant, tenant_client):
    busy = MembershipFactory(tenant=tenant, capacity=1)
    MembershipFactory(tenant=tenant, role=Role.ADMIN, presence="away")
    assert real_handover(tenant_client, "c1")["assignedAgent"]["id"] == str(busy.id)

    text = diagnose("--tenant", tenant.slug)
    report = diagnose_json("--tenant", tenant.slug)

    line, fix = lines_of(text, "availability")
    assert line == ("[PROBLEM] availability: Every available agent is at capacity (open sessions).")
    assert "Raise their capacity" in fix
    assert report["verdict"]["reason"] == "all_at_capacity"
    assert "would stay unassigned (all_at_capacity)" in text

    from core.actor import Actor
    from inbox.services import close_session

    for session in InboxSession.objects.for_tenant(tenant):
        close_session(tenant=tenant, session_id=session.pk, actor=Actor.system())
    freed = diagnose_json("--tenant", tenant.slug)
    assert [c["check"] for c in freed["checks"]].count("availability") == 0
    assert freed["verdict"]["agent"]["id"] == str(busy.id), "closed sessions free capacity"


def test_everyone_away_is_an_availability_problem_that_says_away(tenant, tenant_client):
    MembershipFactory(tenant=tenant, capacity=1, presence="away")
    MembershipFactory(tenant=tenant, role=Role.ADMIN, presence="away")
    body = real_handover(tenant_client, "c1")
    assert body["unassignedReason"] == "all_away"

    text = diagnose("--tenant", tenant.slug, "--session", body["sessionId"])
    report = diagnose_json("--tenant", tenant.slug)

    line, fix = lines_of(text, "availability")
    assert line == "[PROBLEM] availability: Agents exist but every one is away or offline."
    assert "Mark agents available" in fix
    assert "capacity" not in line + fix
    assert lines_of(text, "session")[0] == (
        "[PROBLEM] session: The session is unassigned: Every agent is away or offline."
    )
    assert report["verdict"]["reason"] == "all_away"
    assert "would stay unassigned (all_away)" in text


def test_waterfall_that_excludes_every_agents_role_is_reported_as_a_problem(tenant, api_key):
    complete_crm(tenant)
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["team", "super_admin"]})

    report = diagnose_json("--tenant", tenant.slug)

    assert report["verdict"]["reason"] == "no_agents"
    assert report["problems"] >= 1, "an unassigned verdict names at least one problem"
    agents = next(c for c in report["checks"] if c["check"] == "tenant_agents")
    assert agents["status"] == "PROBLEM"
    assert "leaves out member" in agents["detail"]


# --- Config: manual and disabled -------------------------------------------------------


def test_manual_strategy_is_a_problem(tenant, api_key):
    MembershipFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.MANUAL)

    text = diagnose("--tenant", tenant.slug)
    report = diagnose_json("--tenant", tenant.slug)

    line, fix = lines_of(text, "assignment_config")
    assert line.startswith("[PROBLEM] assignment_config: Strategy manual (tenant config)")
    assert "Manual never auto-assigns." in line
    assert "round_robin" in fix
    assert report["verdict"]["reason"] == "manual_strategy"
    assert "would stay unassigned (manual_strategy)" in text


def test_team_manual_strategy_is_a_problem_only_for_that_team(tenant, api_key):
    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=team)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=Strategy.MANUAL)

    with_team = diagnose_json("--tenant", tenant.slug, "--team", str(team.id))
    without = diagnose_json("--tenant", tenant.slug)

    assert check(with_team, "assignment_config")["status"] == "PROBLEM"
    assert check(with_team, "assignment_config")["data"]["source"] == "team"
    assert check(without, "assignment_config")["status"] == "OK"
    assert without["verdict"]["wouldAssign"] is True


def test_disabled_config_is_a_problem(tenant, api_key):
    MembershipFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, is_enabled=False)

    text = diagnose("--tenant", tenant.slug)

    line, fix = lines_of(text, "assignment_config")
    assert line.startswith("[PROBLEM] assignment_config: Strategy round_robin (tenant config)")
    assert "disabled" in line
    assert "Enable" in fix
    assert "would stay unassigned (assignment_disabled)" in text


# --- Team schedule ---------------------------------------------------------------------


@pytest.fixture
def office_hours_team(tenant, api_key):
    """Mon-Fri 09:00-17:00 in Berlin, one member."""
    team = TeamFactory(tenant=tenant, name="Office")
    TeamMemberFactory(team=team)
    schedule = TeamScheduleFactory(team=team, timezone="Europe/Berlin")
    add_weekday_hours(schedule, datetime.time(9), datetime.time(17))
    return team


def test_closed_team_schedule_is_a_problem(tenant, office_hours_team):
    # Monday 2026-03-02 18:00 UTC is 19:00 in Berlin: closed.
    with time_machine.travel("2026-03-02T18:00:00Z", tick=False):
        text = diagnose("--tenant", tenant.slug, "--team", str(office_hours_team.id))
        report = diagnose_json("--tenant", tenant.slug, "--team", str(office_hours_team.id))

    line, fix = lines_of(text, "team_schedule")
    assert line == "[PROBLEM] team_schedule: Schedule (Europe/Berlin) is closed now."
    assert "opening hours" in fix
    assert check(report, "team")["status"] == "OK"
    assert report["verdict"]["reason"] == "team_closed"
    assert "would stay unassigned (team_closed)" in text


def test_open_team_schedule_is_ok(tenant, office_hours_team):
    # Monday 2026-03-02 08:00 UTC is 09:00 in Berlin: open.
    with time_machine.travel("2026-03-02T08:00:00Z", tick=False):
        report = diagnose_json("--tenant", tenant.slug, "--team", str(office_hours_team.id))

    assert check(report, "team_schedule")["status"] == "OK"
    assert check(report, "team_schedule")["data"] == {"open": True, "timezone": "Europe/Berlin"}
    assert report["verdict"]["wouldAssign"] is True


# --- CRM integration (the confirmation message only) -----------------------------------


def test_missing_crm_integration_is_a_problem_but_assignment_still_works(tenant, api_key):
    MembershipFactory(tenant=tenant)

    text = diagnose("--tenant", tenant.slug)
    report = diagnose_json("--tenant", tenant.slug)

    line, _fix = lines_of(text, "crm_integration")
    assert line.startswith("[PROBLEM] crm_integration: No CRM integration")
    assert "Assignment does not depend on it" in line
    assert report["verdict"]["wouldAssign"] is True
    assert report["problems"] == 1


@pytest.mark.parametrize(
    ("overrides", "missing"),
    [
        ({"is_active": False}, "isActive"),
        ({"api_url": ""}, "apiUrl"),
        ({"api_key_encrypted": ""}, "apiKey"),
        ({"config": {}}, "config.phoneNumberId"),
        ({"config": {"phoneNumberId": ""}}, "config.phoneNumberId"),
    ],
)
def test_incomplete_crm_integration_names_what_is_missing(tenant, api_key, overrides, missing):
    MembershipFactory(tenant=tenant)
    complete_crm(tenant, **overrides)

    report = diagnose_json("--tenant", tenant.slug)
    text = diagnose("--tenant", tenant.slug)

    crm = check(report, "crm_integration")
    assert crm["status"] == "PROBLEM"
    assert crm["detail"].startswith(f"CRM integration 'Main CRM' lacks: {missing}. ")
    assert f"[PROBLEM] crm_integration: CRM integration 'Main CRM' lacks: {missing}." in text
    assert report["verdict"]["wouldAssign"] is True, "CRM never blocks assignment"


def test_crm_integration_lacking_several_parts_names_them_all(tenant, api_key):
    complete_crm(tenant, is_active=False, api_url="", api_key_encrypted="", config={})

    crm = check(diagnose_json("--tenant", tenant.slug), "crm_integration")

    assert "lacks: isActive, apiUrl, apiKey, config.phoneNumberId." in crm["detail"]


def test_an_active_complete_integration_wins_over_an_old_inactive_one(tenant, api_key):
    complete_crm(tenant)
    complete_crm(tenant, name="Old CRM", is_active=False)

    crm = check(diagnose_json("--tenant", tenant.slug), "crm_integration")

    assert crm["status"] == "OK"
    assert "'Main CRM'" in crm["detail"]


# --- --session -------------------------------------------------------------------------


def test_unassigned_session_shows_why(tenant, tenant_client):
    body = real_handover(tenant_client, "lonely")
    assert body["status"] == "unassigned"

    text = diagnose("--tenant", tenant.slug, "--session", body["sessionId"])
    report = diagnose_json("--tenant", tenant.slug, "--session", body["sessionId"])

    line = lines_of(text, "session")[0]
    assert line == (
        "[PROBLEM] session: The session is unassigned: "
        "No agents found (team, roles and default team are empty)."
    )
    data = check(report, "session")["data"]
    assert data["sessionId"] == body["sessionId"]
    assert data["unassignedReason"] == "no_agents"
    assert data["confirmation"] == {
        "status": "skipped",
        "skippedReason": "not_requested",
        "attempts": 0,
        "lastError": None,
    }
    assert data["assignedAgentId"] is None
    assert data["lastAttempt"]["outcome"] == "unassigned"


def test_session_of_a_closed_team_shows_the_team_checks(tenant, tenant_client, office_hours_team):
    with time_machine.travel("2026-03-02T18:00:00Z", tick=False):
        body = real_handover(tenant_client, "late", teamId=str(office_hours_team.id))
        report = diagnose_json("--tenant", tenant.slug, "--session", body["sessionId"])

    assert body["unassignedReason"] == "team_closed"
    assert report["teamId"] == str(office_hours_team.id), "the session's team is diagnosed"
    assert check(report, "team_schedule")["status"] == "PROBLEM"
    assert check(report, "session")["detail"] == (
        "The session is unassigned: Team is closed by its schedule."
    )


def test_assigned_session_is_ok(tenant, tenant_client):
    agent = MembershipFactory(tenant=tenant)
    body = real_handover(tenant_client, "c1")

    session = check(
        diagnose_json("--tenant", tenant.slug, "--session", body["sessionId"]), "session"
    )

    assert session["status"] == "OK"
    assert session["data"]["assignedAgentId"] == str(agent.id)


def test_session_never_routed_says_so(tenant, api_key):
    session = InboxSession.objects.create(tenant=tenant, contact_id="c1")

    line = lines_of(diagnose("--tenant", tenant.slug, "--session", str(session.id)), "session")[0]

    assert line == "[PROBLEM] session: The session is unassigned: not routed yet."


# --- Refusals --------------------------------------------------------------------------


def test_unknown_tenant_is_refused(db):
    with pytest.raises(CommandError, match="No tenant with id or slug 'nope'"):
        diagnose("--tenant", "nope")
    with pytest.raises(CommandError, match="No tenant"):
        diagnose("--tenant", str(uuid.uuid4()))


@pytest.mark.parametrize("value", [str(uuid.UUID(int=1)), "not-a-uuid"])
def test_unknown_or_malformed_team_is_refused(tenant, value):
    with pytest.raises(CommandError, match=f"No team '{value}' in tenant Acme"):
        diagnose("--tenant", tenant.slug, "--team", value)


@pytest.mark.parametrize("value", [str(uuid.UUID(int=1)), "not-a-uuid"])
def test_unknown_or_malformed_session_is_refused(tenant, value):
    with pytest.raises(CommandError, match=f"No session '{value}' in tenant Acme"):
        diagnose("--tenant", tenant.slug, "--session", value)


def test_another_tenants_team_or_session_is_refused(tenant, other_tenant):
    foreign_team = TeamFactory(tenant=other_tenant)
    TeamMemberFactory(team=foreign_team)
    foreign_session = InboxSession.objects.create(tenant=other_tenant, contact_id="c1")

    with pytest.raises(CommandError, match="No team"):
        diagnose("--tenant", tenant.slug, "--team", str(foreign_team.id))
    with pytest.raises(CommandError, match="No session"):
        diagnose("--tenant", tenant.slug, "--session", str(foreign_session.id))


# --- GET /api/v1/diagnostics/handover --------------------------------------------------


def test_api_returns_the_report_as_json(tenant, tenant_client, healthy):
    response = tenant_client.get(URL)

    assert response.status_code == 200
    body = response.json()
    assert {"tenantId", "teamId", "verdict", "problems", "checks"} <= set(body)
    assert body["tenantId"] == str(tenant.id)
    assert body["teamId"] is None
    assert body["problems"] == 0
    for item in body["checks"]:
        assert {"check", "status", "detail", "fix"} <= set(item)
    assert check(body, "tenant_agents")["status"] == "OK"
    assert body["verdict"]["wouldAssign"] is True
    assert body["verdict"]["agent"]["id"] in {str(a.id) for a in healthy}


def test_api_reports_problems_and_fixes(tenant, tenant_client):
    body = tenant_client.get(URL).json()

    assert body["problems"] == 3  # no agents, no default team, no CRM integration
    assert check(body, "tenant_agents")["status"] == "PROBLEM"
    assert OPTION_A in check(body, "tenant_agents")["fix"]
    assert OPTION_B in check(body, "default_team")["fix"]
    assert body["verdict"]["reason"] == "no_agents"


def test_api_with_team_id_checks_that_team(tenant, tenant_client):
    MembershipFactory(tenant=tenant)
    team = TeamFactory(tenant=tenant, name="Sales")

    response = tenant_client.get(URL, {"teamId": str(team.id)})

    assert response.status_code == 200
    body = response.json()
    assert body["teamId"] == str(team.id)
    assert check(body, "team")["status"] == "PROBLEM"
    assert OPTION_C in check(body, "team")["fix"]
    assert body["verdict"]["reason"] == "no_agents"


def test_api_another_tenants_team_is_404(tenant_client, other_tenant):
    foreign = TeamFactory(tenant=other_tenant)
    TeamMemberFactory(team=foreign)

    response = tenant_client.get(URL, {"teamId": str(foreign.id)})

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "team_not_found"
    assert "teamId" in error["fields"]


def test_api_unknown_team_is_404(tenant_client):
    response = tenant_client.get(URL, {"teamId": str(uuid.uuid4())})

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "team_not_found"


def test_api_malformed_team_id_is_400_naming_the_field(tenant_client):
    response = tenant_client.get(URL, {"teamId": "not-a-uuid"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "teamId" in error["fields"]
    assert "teamId" in error["message"]


def test_api_without_a_key_is_401(api_client, tenant):
    response = api_client.get(URL)

    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "api_key_missing"
    assert "X-API-Key" in error["message"]


def test_api_with_a_wrong_key_is_401(api_client, api_key):
    response = api_client.get(URL, HTTP_X_API_KEY=api_key[1][:-2] + "zz")

    assert response.status_code == 401


def test_api_key_in_the_query_string_works(api_client, tenant, api_key):
    response = api_client.get(URL, {"apiKey": api_key[1]})

    assert response.status_code == 200
    assert response.json()["tenantId"] == str(tenant.id)


def test_api_report_only_mentions_the_keys_own_tenant(
    tenant, tenant_client, api_key, other_tenant, other_api_key
):
    # The outsider tenant is fully staffed; ours has only its key.
    for role in (Role.MEMBER, Role.ADMIN, Role.ADMIN, Role.SUPER_ADMIN):
        MembershipFactory(tenant=other_tenant, role=role)
    foreign_default = TeamFactory(tenant=other_tenant, is_default=True, name="Globex support")
    TeamMemberFactory(team=foreign_default)
    complete_crm(other_tenant, name="Globex CRM")
    AssignmentConfigFactory(tenant=other_tenant, strategy=Strategy.LEAST_BUSY)

    response = tenant_client.get(URL)
    body = response.json()
    raw = response.content.decode()

    assert body["tenantId"] == str(tenant.id)
    assert check(body, "api_keys")["data"] == {"prefixes": [api_key[0].prefix]}
    assert check(body, "tenant_agents")["data"] == {
        "member": 0,
        "admin": 0,
        "super_admin": 0,
        "routed": 0,
    }
    assert check(body, "default_team")["status"] == "PROBLEM"
    assert check(body, "crm_integration")["detail"].startswith("No CRM integration")
    assert check(body, "assignment_config")["data"]["source"] == "default"
    assert body["verdict"]["reason"] == "no_agents"
    for foreign in (
        other_api_key[0].prefix,
        str(other_tenant.id),
        str(foreign_default.id),
        "Globex",
        "least_busy",
    ):
        assert foreign not in raw
