"""Issue #10 for a waiting lead routed again (the periodic retry, an agent back online):
on PostgreSQL every write about the lead that got an agent (the lead, its activity, the
agent's notification and email, the webhook event; the counter is the pick's) is
attached to the pick, the transaction's last statement, so the pool's lock is held from
it to COMMIT alone. With real threads where it is about concurrency."""

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from audit.models import ActivityLog
from core.actor import Actor
from leads.models import Lead, Notification, NotificationKind
from leads.serializers import LeadOutput
from leads.services import create_lead, retry_unassigned_leads, route_unassigned_lead
from teams.models import Membership, Presence, Role, Strategy
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    UserFactory,
)
from tests.webhooks.endpoint_races import (
    add_an_endpoint_after_every_read,
    add_an_endpoint_after_the_first_read,
    bodies_heard,
    endpoint_for,
)
from webhooks import events

SYSTEM = Actor.system()
JOB = Actor.for_job("retry_unassigned_leads")


def waiting_lead(tenant, team=None) -> Lead:
    """A lead nobody could take when it came in."""
    lead = create_lead(
        tenant=tenant,
        actor=SYSTEM,
        name="Jane Roe",
        phone="+4915112345678",
        team_id=team.pk if team else None,
    )
    assert lead.assigned_agent_id is None
    return lead


def back_online(agent) -> None:
    Membership.objects.for_tenant(agent.tenant_id).filter(pk=agent.pk).update(
        presence=Presence.ONLINE
    )


def test_a_waiting_lead_gets_the_agent_who_came_back(db, tenant):
    """On every database: the lead, the counter, the activity and the notification."""
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    lead = waiting_lead(tenant)
    back_online(agent)

    routed = route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB)

    stored = Lead.all_tenants.get(pk=lead.pk)
    assert routed.assigned_agent_id == stored.assigned_agent_id == agent.pk
    assert stored.claim_deadline == routed.claim_deadline
    agent.refresh_from_db()
    assert agent.current_lead_count == 1
    assert Notification.all_tenants.get(lead=lead).recipient_id == agent.pk
    activity = ActivityLog.all_tenants.get(action="lead.assigned", target_id=str(lead.pk))
    assert activity.data == {"agent_id": str(agent.pk), "strategy": Strategy.ROUND_ROBIN}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("webhooks", [False, True])
def test_the_pick_is_the_last_statement_before_commit(tenant, webhooks):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    if webhooks:
        endpoint_for(tenant)
    lead = waiting_lead(tenant)  # the pools' cursors exist from now on
    back_online(agent)

    with CaptureQueriesContext(connection) as captured:
        route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB)

    statements = [q["sql"] for q in captured.captured_queries]
    picks = [n for n, sql in enumerate(statements) if "routing_lock" in sql]
    assert picks == [len(statements) - 2], statements
    assert statements[-1] == "COMMIT"
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id == agent.pk


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("full_name", ['Zoë "Z" O\'Brien \\ 東京 </script> \u2028', ""])
def test_what_the_pick_writes_is_what_a_lead_routed_in_python_gets(tenant, full_name):
    agent = MembershipFactory(
        tenant=tenant,
        role=Role.MEMBER,
        presence=Presence.AWAY,
        user=UserFactory(full_name=full_name, email="zoe@example.com"),
    )
    endpoint = endpoint_for(tenant)
    tenant.claim_window_minutes = 17
    tenant.save()
    lead = waiting_lead(tenant)
    before = Lead.all_tenants.get(pk=lead.pk)
    back_online(agent)

    routed = route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB)

    stored = Lead.all_tenants.select_related("assigned_agent__user").get(pk=lead.pk)
    assert stored.assigned_agent_id == agent.pk
    assert stored.unassigned_reason == ""
    assert stored.claim_deadline - stored.assigned_at == timedelta(minutes=17)
    assert stored.updated_at > before.updated_at  # to the back of the retries
    assert (routed.claim_deadline, routed.updated_at) == (stored.claim_deadline, stored.updated_at)
    agent.refresh_from_db()
    assert agent.current_lead_count == 1
    assert abs(agent.last_assigned_at - stored.assigned_at) < timedelta(seconds=5)

    activity = ActivityLog.all_tenants.get(action="lead.assigned", target_id=str(lead.pk))
    assert activity.data == {"agent_id": str(agent.pk), "strategy": Strategy.ROUND_ROBIN}
    assert activity.actor_label == JOB.label

    notification = Notification.all_tenants.get(lead=lead)
    assert notification.recipient_id == agent.pk
    assert notification.kind == NotificationKind.LEAD_ASSIGNED
    assert "Please claim it by" in notification.body
    email = notification.email_message
    assert (email.channel, email.target) == ("email", "zoe@example.com")

    (body,) = bodies_heard(endpoint, events.LEAD_ASSIGNED)
    expected = json.loads(json.dumps(LeadOutput(stored).data, default=str))
    assert body["data"]["assigned_agent"] == {
        "id": str(agent.pk),
        "name": full_name or "zoe@example.com",
        "email": "zoe@example.com",
    }
    assert body["data"] == expected


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_with_nobody_back_the_lead_waits_and_goes_to_the_back_of_the_retries(tenant):
    MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.OFFLINE)
    endpoint = endpoint_for(tenant)
    lead = waiting_lead(tenant)
    before = Lead.all_tenants.get(pk=lead.pk)

    route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB)

    stored = Lead.all_tenants.get(pk=lead.pk)
    assert (stored.assigned_agent_id, stored.unassigned_reason) == (None, "all_away")
    assert stored.updated_at > before.updated_at
    assert not Notification.all_tenants.exists()
    assert not ActivityLog.all_tenants.filter(action="lead.assigned").exists()
    assert bodies_heard(endpoint, events.LEAD_ASSIGNED) == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_endpoint_added_between_the_read_and_the_pick_hears_the_lead(tenant, monkeypatch):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    lead = waiting_lead(tenant)
    back_online(agent)
    added = add_an_endpoint_after_the_first_read(
        monkeypatch, events, lambda url: endpoint_for(tenant, url=url)
    )

    route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB)

    assert len(bodies_heard(added[0], events.LEAD_ASSIGNED)) == 1
    agent.refresh_from_db()
    assert agent.current_lead_count == 1  # counted once: the refused pick wrote nothing


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_endpoints_that_keep_changing_still_hear_the_lead(tenant, monkeypatch):
    """After ENDPOINT_READS refused picks the lead is routed in Python, the events
    written after the pick."""
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    lead = waiting_lead(tenant)
    back_online(agent)
    added = add_an_endpoint_after_every_read(
        monkeypatch, events, lambda url: endpoint_for(tenant, url=url)
    )

    route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB)

    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id == agent.pk
    assert len(added) == events.ENDPOINT_READS
    for endpoint in added:
        assert len(bodies_heard(endpoint, events.LEAD_ASSIGNED)) == 1
    agent.refresh_from_db()
    assert agent.current_lead_count == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("strategy", [Strategy.ROUND_ROBIN, Strategy.LEAST_BUSY])
def test_sixteen_workers_route_waiting_leads_evenly_and_every_counter_is_right(tenant, strategy):
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=strategy)
    agents = [
        MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY) for _ in range(5)
    ]
    for agent in agents:
        TeamMemberFactory(tenant=tenant, team=team, membership=agent)
    leads = [waiting_lead(tenant, team) for _ in range(80)]
    for agent in agents:
        back_online(agent)

    def retry(lead_id) -> bool:
        try:
            lead = route_unassigned_lead(tenant=tenant, lead_id=lead_id, actor=JOB)
            return lead is not None and lead.assigned_agent_id is not None
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        routed = list(pool.map(retry, [lead.pk for lead in leads]))

    assert routed == [True] * 80
    per_agent = Counter(
        Lead.all_tenants.filter(tenant=tenant).values_list("assigned_agent_id", flat=True)
    )
    assert sorted(per_agent.values()) == [16] * 5
    for agent in Membership.objects.for_tenant(tenant).filter(pk__in=[a.pk for a in agents]):
        assert agent.current_lead_count == per_agent[agent.pk]
    assert Notification.all_tenants.filter(lead__tenant=tenant).count() == 80


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_retry_job_routes_each_waiting_lead_once(tenant):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    leads = [waiting_lead(tenant) for _ in range(3)]
    back_online(agent)

    summary = retry_unassigned_leads(tenant_id=tenant.pk)

    assert summary["assigned"] == 3
    assert set(
        Lead.all_tenants.filter(pk__in=[lead.pk for lead in leads]).values_list(
            "assigned_agent_id", flat=True
        )
    ) == {agent.pk}
    agent.refresh_from_db()
    assert agent.current_lead_count == 3
