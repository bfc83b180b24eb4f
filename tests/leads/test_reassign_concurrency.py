"""Races and query budgets for POST /api/v1/reassign-lead, with real threads.

The races need PostgreSQL (row locks); the budgets run on both databases. All of them
run outside a test transaction, like production: each request commits for real, and
the service's atomic block is a real transaction. Django 5.2 logs its BEGIN and COMMIT,
so the budgets count them, as a database would.
"""

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from rest_framework.test import APIClient

from audit.models import ActivityLog
from core.actor import Actor
from leads.models import OPEN_LEAD_STATUSES, Lead, LeadReassignment, Notification
from leads.services import create_lead, reconcile_lead_counts
from outbox.models import OutboundMessage
from teams.models import Membership
from tests.factories import MembershipFactory

URL = "/api/v1/reassign-lead"


def reassignment_emails(tenant) -> int:
    """Emails queued in the outbox for reassigned leads (nothing is sent in the request)."""
    return OutboundMessage.objects.for_tenant(tenant).filter(kind="lead.lead_reassigned").count()


def _lead(tenant, agent, n: int) -> Lead:
    return create_lead(
        tenant=tenant,
        actor=Actor.system(),
        name=f"Lead {n}",
        phone=f"+4915100{n:05d}",
        assigned_agent_id=agent.pk,
    )


def _post_in_thread(api_key: str, body: dict):
    client = APIClient()
    try:
        response = client.post(URL, body, format="json", HTTP_X_API_KEY=api_key)
        return response.status_code, response.json()
    finally:
        connection.close()


def _chain_is_unbroken(lead: Lead, original_agent_id, rows: list[LeadReassignment]) -> bool:
    """Each move starts where the previous one ended, and the last one is where it is."""
    holder = original_agent_id
    for row in rows:
        if row.from_agent_id != holder:
            return False
        holder = row.to_agent_id
    return holder == lead.assigned_agent_id


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_100_parallel_reassignments_keep_every_counter_and_history_true(tenant, owner, api_key):
    agents = [MembershipFactory(tenant=tenant) for _ in range(5)]
    leads = [_lead(tenant, agents[n % 5], n) for n in range(20)]
    original = {lead.pk: lead.assigned_agent_id for lead in leads}
    rng = random.Random(20261123)
    bodies = [
        {
            "lead_id": str(rng.choice(leads).pk),
            "to_agent_id": str(rng.choice(agents).pk),
            "reason": "manual",
            "notes": f"call {n}",
            "reassigned_by_id": str(owner.pk),
        }
        for n in range(100)
    ]
    emails_before = reassignment_emails(tenant)

    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(_post_in_thread, api_key[1], body) for body in bodies]
        results = [future.result(timeout=120) for future in futures]

    statuses = Counter(status for status, _ in results)
    assert set(statuses) <= {200, 409}, [body for status, body in results if status >= 500]
    assert {body["error"]["code"] for status, body in results if status == 409} <= {
        "already_assigned"
    }
    succeeded = [body for status, body in results if status == 200]
    assert len(succeeded) > 50, statuses

    # History rows equal successful calls, one row per call.
    rows = list(LeadReassignment.objects.for_tenant(tenant).order_by("created_at"))
    assert len(rows) == len(succeeded)
    assert sorted(row.notes for row in rows) == sorted(
        body["reassignment"]["notes"] for body in succeeded
    )
    assert {str(row.pk) for row in rows} == {body["reassignment"]["id"] for body in succeeded}

    # Every lead: count == its history, and the history is one unbroken chain of moves.
    for lead in Lead.objects.for_tenant(tenant):
        own = [row for row in rows if row.lead_id == lead.pk]
        assert lead.reassignment_count == len(own), lead
        assert _chain_is_unbroken(lead, original[lead.pk], own), lead
        if own:
            assert lead.previous_agent_id == own[-1].from_agent_id
        # Exactly one unread notice for the lead: the current assignee's.
        unread = Notification.all_tenants.filter(lead=lead, is_read=False)
        assert list(unread.values_list("recipient_id", flat=True)) == [lead.assigned_agent_id]

    # Every counter equals the true count of the agent's open leads.
    for agent in Membership.objects.for_tenant(tenant):
        open_leads = (
            Lead.objects.for_tenant(tenant)
            .filter(assigned_agent=agent, status__in=OPEN_LEAD_STATUSES)
            .count()
        )
        assert agent.current_lead_count == open_leads, agent
    assert sum(a.current_lead_count for a in Membership.objects.for_tenant(tenant)) == 20
    assert reconcile_lead_counts(tenant=tenant) == []

    reassigned = ActivityLog.objects.for_tenant(tenant).filter(action="lead.reassigned")
    assert reassigned.count() == len(succeeded)
    assert reassignment_emails(tenant) - emails_before == len(succeeded), (
        "one email per committed reassignment"
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_parallel_reassignments_of_one_lead_to_one_agent_move_it_once(tenant, owner, api_key):
    alice, bob = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
    lead = _lead(tenant, alice, 0)
    body = {
        "lead_id": str(lead.pk),
        "to_agent_id": str(bob.pk),
        "reason": "unclaimed",
        "reassigned_by_id": str(owner.pk),
    }

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda _: _post_in_thread(api_key[1], body), range(10)))

    assert Counter(status for status, _ in results) == {200: 1, 409: 9}
    assert {body["error"]["code"] for status, body in results if status == 409} == {
        "already_assigned"
    }
    lead.refresh_from_db()
    assert (lead.assigned_agent_id, lead.previous_agent_id) == (bob.pk, alice.pk)
    assert lead.reassignment_count == 1
    assert LeadReassignment.objects.for_tenant(tenant).count() == 1
    alice.refresh_from_db()
    bob.refresh_from_db()
    assert (alice.current_lead_count, bob.current_lead_count) == (0, 1)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_parallel_swaps_between_two_agents_do_not_deadlock(tenant, owner, api_key):
    """A→B and B→A at once lock the same two agents: the primary-key order keeps it safe."""
    alice, bob = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
    to_bob = [_lead(tenant, alice, n) for n in range(10)]
    to_alice = [_lead(tenant, bob, n) for n in range(10, 20)]
    bodies = [
        {
            "lead_id": str(lead.pk),
            "to_agent_id": str(target.pk),
            "reason": "manual",
            "reassigned_by_id": str(owner.pk),
        }
        for pair in zip(to_bob, to_alice, strict=True)
        for lead, target in zip(pair, (bob, alice), strict=True)
    ]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda body: _post_in_thread(api_key[1], body), bodies))

    assert Counter(status for status, _ in results) == {200: 20}
    alice.refresh_from_db()
    bob.refresh_from_db()
    assert (alice.current_lead_count, bob.current_lead_count) == (10, 10)
    assert reconcile_lead_counts(tenant=tenant) == []


# --- query budget ----------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["unclaimed", "manual"])
@pytest.mark.django_db(transaction=True)
def test_one_reassignment_via_the_api_key_runs_at_most_15_sql_statements(
    tenant, owner, tenant_client, django_assert_max_num_queries, reason
):
    alice, bob = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
    warm_up, measured = _lead(tenant, alice, 1), _lead(tenant, alice, 2)

    def body(lead):
        return {
            "lead_id": str(lead.pk),
            "to_agent_id": str(bob.pk),
            "reason": reason,
            "notes": "budget",
            "reassigned_by_id": str(owner.pk),
        }

    assert tenant_client.post(URL, body(warm_up), format="json").status_code == 200

    with django_assert_max_num_queries(15):
        response = tenant_client.post(URL, body(measured), format="json")

    assert response.status_code == 200, response.content
    assert Lead.objects.for_tenant(tenant).get(pk=measured.pk).assigned_agent_id == bob.pk


@pytest.mark.django_db(transaction=True)
def test_one_reassignment_by_a_logged_in_admin_runs_at_most_16_sql_statements(
    tenant, owner, django_assert_max_num_queries
):
    """The webhook endpoints are read on every reassignment (never taken from a tenant
    row's flag that may be old)."""
    alice, bob = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
    warm_up, measured = _lead(tenant, alice, 1), _lead(tenant, alice, 2)
    client = APIClient()
    client.force_login(owner.user)

    def body(lead):
        return {"lead_id": str(lead.pk), "to_agent_id": str(bob.pk), "reason": "unclaimed"}

    assert client.post(URL, body(warm_up), format="json").status_code == 200

    with django_assert_max_num_queries(16):
        response = client.post(URL, body(measured), format="json")

    assert response.status_code == 200, response.content


@pytest.mark.django_db(transaction=True)
def test_the_budget_holds_for_a_lead_with_a_long_history_and_many_notices(
    tenant, owner, tenant_client, django_assert_max_num_queries
):
    agents = [MembershipFactory(tenant=tenant) for _ in range(3)]
    lead = _lead(tenant, agents[0], 1)

    def move(to):
        body = {
            "lead_id": str(lead.pk),
            "to_agent_id": str(to.pk),
            "reason": "manual",
            "reassigned_by_id": str(owner.pk),
        }
        return tenant_client.post(URL, body, format="json")

    for n in range(30):  # 0 → 1 → 2 → 0 ...: ends with agents[0], each leaving a notice
        assert move(agents[(n + 1) % 3]).status_code == 200
    assert Notification.all_tenants.filter(lead=lead).count() == 31

    with django_assert_max_num_queries(15):
        response = move(agents[1])

    assert response.status_code == 200
    assert Lead.objects.for_tenant(tenant).get(pk=lead.pk).reassignment_count == 31
