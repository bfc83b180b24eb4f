"""Issue #10 for lead intake: a routed lead is written by the pick statement itself (the
lead, its activity, the agent's notification and email, the webhook events; the counter
is the pick's), so the pool's lock is held for that statement and nothing after it.
On PostgreSQL, with real threads where it is about concurrency."""

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import DatabaseError, connection, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from audit.models import ActivityLog
from core.actor import Actor
from leads import services as lead_services
from leads.models import Lead, Notification, NotificationKind
from leads.serializers import LeadOutput
from leads.services import create_lead
from teams.models import Membership, Role, Strategy
from teams.routing import Cte
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

pytestmark = pytest.mark.postgres

LEADS = "/api/v1/leads"
SYSTEM = Actor.system()


def kinds_heard(endpoint) -> list[str]:
    return [body["type"] for body in bodies_heard(endpoint)]


def intake(tenant, **fields) -> Lead:
    return create_lead(
        tenant=tenant, actor=SYSTEM, name="Jane Roe", phone="+4915112345678", **fields
    )


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("webhooks", [False, True])
def test_a_routed_lead_holds_the_pools_lock_for_its_one_statement(tenant, webhooks):
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    if webhooks:
        endpoint_for(tenant)
    intake(tenant)  # the pool's cursor exists from now on

    with CaptureQueriesContext(connection) as captured:
        lead = intake(tenant)

    statements = [q["sql"] for q in captured.captured_queries]
    picks = [n for n, sql in enumerate(statements) if "routing_lock" in sql]
    assert picks == [len(statements) - 1], statements  # nothing after it, not even COMMIT
    # Before it only reads (the tenant's endpoints; routing config when its cache is cold).
    assert all(sql.startswith("SELECT") for sql in statements[:-1]), statements
    assert lead.assigned_agent is not None
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id == lead.assigned_agent_id


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("full_name", ['Zoë "Z" O\'Brien \\ 東京 </script> \u2028', ""])
def test_what_the_pick_writes_is_what_a_lead_routed_in_python_gets(tenant, full_name):
    """Everything about the picked agent is written in SQL: the lead, the activity, the
    notification and its email, the counters and the webhook events name that agent,
    and the events' lead is the stored lead as the API shows it."""
    agent = MembershipFactory(
        tenant=tenant,
        role=Role.MEMBER,
        user=UserFactory(full_name=full_name, email="zoe@example.com"),
    )
    endpoint = endpoint_for(tenant)
    tenant.claim_window_minutes = 17
    tenant.save()

    lead = intake(tenant, source="website")

    stored = Lead.all_tenants.select_related("assigned_agent__user").get(pk=lead.pk)
    assert stored.assigned_agent_id == agent.pk
    assert stored.unassigned_reason == ""
    assert stored.claim_deadline - stored.assigned_at == timedelta(minutes=17)
    assert (stored.claim_deadline, stored.created_at) == (lead.claim_deadline, lead.created_at)
    agent.refresh_from_db()
    assert agent.current_lead_count == 1
    assert abs(agent.last_assigned_at - stored.assigned_at) < timedelta(seconds=5)

    activity = ActivityLog.all_tenants.get(action="lead.created", target_id=str(lead.pk))
    assert activity.data == {
        "source": "website",
        "agent_id": str(agent.pk),
        "strategy": Strategy.ROUND_ROBIN,
        "tier": "member",
        "reason": None,
    }
    assert activity.actor_label == SYSTEM.label

    notification = Notification.all_tenants.get(lead=lead)
    assert notification.recipient_id == agent.pk
    assert notification.kind == NotificationKind.LEAD_ASSIGNED
    assert notification.title == "New lead for you: Jane Roe"
    assert "Please claim it by" in notification.body
    email = notification.email_message
    assert (email.channel, email.target) == ("email", "zoe@example.com")
    assert email.payload["notification_id"] == str(notification.pk)

    bodies = {body["type"]: body for body in bodies_heard(endpoint)}
    assert list(bodies) == [events.LEAD_CREATED, events.LEAD_ASSIGNED]
    expected = json.loads(json.dumps(LeadOutput(stored).data, default=str))
    for body in bodies.values():
        assert body["data"]["assigned_agent"] == {
            "id": str(agent.pk),
            "name": full_name or "zoe@example.com",
            "email": "zoe@example.com",
        }
        assert body["data"] == expected


@pytest.mark.django_db(transaction=True)
def test_with_nobody_online_the_lead_waits_unassigned_and_nothing_is_written_twice(
    tenant, monkeypatch
):
    """The pick that found nobody wrote nothing; the transaction that writes the lead
    takes its decision rather than running the engine again."""
    MembershipFactory(tenant=tenant, role=Role.MEMBER, presence="offline")
    routings = []
    engine = lead_services.route

    def counted(**kwargs):
        routings.append(kwargs["tenant"])
        return engine(**kwargs)

    monkeypatch.setattr(lead_services, "route", counted)

    lead = intake(tenant)

    assert len(routings) == 1

    assert Lead.all_tenants.filter(tenant=tenant).count() == 1
    stored = Lead.all_tenants.get(pk=lead.pk)
    assert (stored.assigned_agent_id, stored.unassigned_reason) == (None, "all_away")
    assert ActivityLog.all_tenants.filter(action="lead.created").count() == 1
    assert not Notification.all_tenants.exists()


@pytest.mark.django_db(transaction=True)
def test_an_endpoint_added_between_the_read_and_the_pick_hears_the_lead(tenant, monkeypatch):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    added = add_an_endpoint_after_the_first_read(
        monkeypatch, events, lambda url: endpoint_for(tenant, url=url)
    )
    lead = intake(tenant)

    assert lead.assigned_agent_id == agent.pk
    assert kinds_heard(added[0]) == [events.LEAD_CREATED, events.LEAD_ASSIGNED]
    agent.refresh_from_db()
    assert agent.current_lead_count == 1  # counted once: the refused pick wrote nothing


@pytest.mark.django_db(transaction=True)
def test_endpoints_that_keep_changing_still_hear_the_lead(tenant, monkeypatch):
    """An endpoint added after every read: after ENDPOINT_READS refused picks the lead
    is routed in a transaction that writes the events after it."""
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    added = add_an_endpoint_after_every_read(
        monkeypatch, events, lambda url: endpoint_for(tenant, url=url)
    )
    lead = intake(tenant)

    assert lead.assigned_agent_id == agent.pk
    assert len(added) == events.ENDPOINT_READS
    for endpoint in added:
        assert kinds_heard(endpoint) == [events.LEAD_CREATED, events.LEAD_ASSIGNED]
    agent.refresh_from_db()
    assert agent.current_lead_count == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("strategy", [Strategy.ROUND_ROBIN, Strategy.LEAST_BUSY])
def test_sixteen_clients_spread_leads_evenly_and_every_counter_is_right(tenant, api_key, strategy):
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=strategy)
    agents = [MembershipFactory(tenant=tenant, role=Role.MEMBER) for _ in range(5)]
    for agent in agents:
        TeamMemberFactory(tenant=tenant, team=team, membership=agent)

    def post(n: int) -> int:
        client = APIClient()
        client.credentials(HTTP_X_API_KEY=api_key[1])
        try:
            body = {"name": f"Lead {n}", "phone": f"+49151{n:07d}", "team_id": str(team.pk)}
            return client.post(LEADS, body, format="json").status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(post, range(80)))

    assert statuses == [201] * 80
    per_agent = Counter(
        Lead.all_tenants.filter(tenant=tenant).values_list("assigned_agent_id", flat=True)
    )
    assert sorted(per_agent.values()) == [16] * 5
    for agent in Membership.objects.for_tenant(tenant).filter(pk__in=[a.pk for a in agents]):
        assert agent.current_lead_count == per_agent[agent.pk]
    assert Notification.all_tenants.filter(lead__tenant=tenant).count() == 80


@pytest.mark.django_db(transaction=True)
def test_a_failed_pick_inside_a_callers_transaction_leaves_it_usable(tenant, monkeypatch):
    """Called inside a transaction, the pick runs in a savepoint: its error reaches the
    caller, whose transaction goes on (without it PostgreSQL refuses every statement
    until the rollback)."""
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    writes = lead_services._lead_ctes

    def and_one_that_fails(*args, **kwargs):
        row, ctes = writes(*args, **kwargs)
        fails = "UPDATE teams_tenant SET name = name WHERE id = %s AND 1 / (random() * 0)::int = 1"
        return row, [*ctes, Cte("fails", fails, [tenant.pk])]

    monkeypatch.setattr(lead_services, "_lead_ctes", and_one_that_fails)
    with transaction.atomic():
        with pytest.raises(DatabaseError):
            intake(tenant)
        assert Lead.all_tenants.filter(tenant=tenant).count() == 0
