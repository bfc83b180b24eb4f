"""Open sessions nobody could take are routed again: periodically, and when an agent is back."""

from io import StringIO

import pytest
from django.core.management import call_command

from audit.models import ActivityLog
from core.actor import Actor
from inbox.models import InboxSession
from inbox.services import retry_unassigned_sessions
from teams.models import Role, Strategy
from teams.services import set_agent_presence
from tests.factories import AssignmentConfigFactory, MembershipFactory, TeamFactory

URL = "/api/v1/handover"
pytestmark = pytest.mark.django_db


def unassigned_handover(client, contact):
    body = client.post(URL, {"contactId": contact, "sendHandoverMessage": False}, format="json")
    assert body.json()["status"] == "unassigned"
    return body.json()["sessionId"]


def test_periodic_retry_assigns_oldest_first_once_an_agent_exists(tenant, tenant_client):
    oldest = unassigned_handover(tenant_client, "c1")
    newest = unassigned_handover(tenant_client, "c2")
    agent = MembershipFactory(tenant=tenant, capacity=1)

    summary = retry_unassigned_sessions()

    assert summary["checked"] == 2
    assert summary["assigned"] == 1
    sessions = {s.pk: s for s in InboxSession.objects.for_tenant(tenant)}
    assert str(sessions[_uuid(oldest)].assigned_agent_id) == str(agent.id)
    assert sessions[_uuid(newest)].assigned_agent_id is None
    assert sessions[_uuid(newest)].unassigned_reason == "all_at_capacity"
    retried = ActivityLog.objects.for_tenant(tenant).get(
        action="session.assigned", target_id=oldest
    )
    assert retried.data["trigger"] == "retry"
    assert retried.actor_label == "system"


def test_manual_sessions_are_skipped(tenant, tenant_client):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.MANUAL)
    MembershipFactory(tenant=tenant)
    session_id = unassigned_handover(tenant_client, "c1")

    summary = retry_unassigned_sessions()

    assert summary["checked"] == 0
    assert InboxSession.objects.for_tenant(tenant).get(pk=session_id).assigned_agent_id is None


def test_retry_does_not_touch_other_tenants_when_scoped(tenant, other_tenant, tenant_client):
    session_id = unassigned_handover(tenant_client, "c1")
    MembershipFactory(tenant=tenant)

    assert retry_unassigned_sessions(tenant_id=other_tenant.id)["checked"] == 0
    assert InboxSession.objects.for_tenant(tenant).get(pk=session_id).assigned_agent_id is None


def test_an_agent_becoming_available_routes_waiting_sessions(
    tenant, tenant_client, django_capture_on_commit_callbacks
):
    away = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence="away")
    session_id = unassigned_handover(tenant_client, "c1")

    with django_capture_on_commit_callbacks(execute=True):
        set_agent_presence(
            membership=away, presence="online", actor=Actor.system(), source="system"
        )

    session = InboxSession.objects.for_tenant(tenant).get(pk=session_id)
    assert session.assigned_agent_id == away.id


def test_run_periodic_jobs_once_runs_the_retry(tenant, tenant_client):
    session_id = unassigned_handover(tenant_client, "c1")
    MembershipFactory(tenant=tenant)
    out = StringIO()

    call_command("run_periodic_jobs", "--once", stdout=out)

    assert "inbox-retry-unassigned-sessions" in out.getvalue()
    assert InboxSession.objects.for_tenant(tenant).get(pk=session_id).assigned_agent_id


def _uuid(value):
    import uuid

    return uuid.UUID(value)


def test_sessions_nobody_can_take_do_not_block_the_ones_behind_them(tenant, tenant_client):
    empty_team = TeamFactory(tenant=tenant)
    stuck = [
        tenant_client.post(
            URL,
            {"contactId": f"stuck-{n}", "teamId": str(empty_team.id), "sendHandoverMessage": False},
            format="json",
        ).json()["sessionId"]
        for n in range(3)
    ]
    fixable = unassigned_handover(tenant_client, "fixable")
    MembershipFactory(tenant=tenant)

    retry_unassigned_sessions(limit=3)  # the three stuck ones are tried and stay stuck
    retry_unassigned_sessions(limit=3)

    sessions = InboxSession.objects.for_tenant(tenant)
    assert sessions.get(pk=fixable).assigned_agent_id is not None
    assert not sessions.filter(pk__in=stuck, assigned_agent__isnull=False).exists()
