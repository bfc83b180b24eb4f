"""`reconcile_lead_counts`: agent counters against the open leads they hold."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from core.actor import Actor
from leads.models import Lead, LeadStatus, ReassignmentReason
from leads.services import (
    claim_lead,
    create_lead,
    mark_lead_contacted,
    reassign_lead,
    reconcile_lead_counts,
)
from teams.models import Membership, Role
from tests.factories import MembershipFactory


@pytest.fixture
def alice(tenant):
    return MembershipFactory(tenant=tenant, role=Role.MEMBER, user__email="alice@acme.test")


@pytest.fixture
def bob(tenant):
    return MembershipFactory(tenant=tenant, role=Role.MEMBER, user__email="bob@acme.test")


def new_lead(tenant, agent=None, name="Lead"):
    return create_lead(
        tenant=tenant,
        actor=Actor.system(),
        name=name,
        assigned_agent_id=agent.pk if agent else None,
    )


def stored_count(agent) -> int:
    return Membership.all_tenants.values_list("current_lead_count", flat=True).get(pk=agent.pk)


def set_count(agent, value: int) -> None:
    """Drift on purpose: what a bug or a hand edit in the database would leave."""
    Membership.all_tenants.filter(pk=agent.pk).update(current_lead_count=value)


def reconcile(*args) -> str:
    out = StringIO()
    call_command("reconcile_lead_counts", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_normal_operations_leave_no_drift(tenant, owner, alice, bob):
    first = new_lead(tenant, alice, "First")
    second = new_lead(tenant, alice, "Second")
    new_lead(tenant, name="Routed")  # the engine picks someone
    claim_lead(tenant=tenant, lead_id=second.pk, agent=alice)
    mark_lead_contacted(tenant=tenant, lead_id=second.pk, agent=alice)
    reassign_lead(
        tenant=tenant,
        lead_id=first.pk,
        to_agent_id=bob.pk,
        reason=ReassignmentReason.MANUAL,
        actor=Actor.for_membership(owner),
        reassigned_by=owner,
    )
    assert (stored_count(alice), stored_count(bob)) != (0, 0)

    assert reconcile_lead_counts() == []
    text = reconcile()
    assert "No drift" in text
    assert "stored" not in text


@pytest.mark.django_db
def test_drift_is_reported_and_left_alone_without_fix(tenant, alice, bob):
    new_lead(tenant, alice)
    new_lead(tenant, alice)
    set_count(alice, 7)

    text = reconcile()

    assert "alice@acme.test (tenant acme): stored 7, actual 2" in text
    assert "bob@acme.test" not in text
    assert "1 lead counter out of step" in text
    assert "--fix" in text
    assert stored_count(alice) == 7, "reported, not changed"
    [drift] = reconcile_lead_counts()
    assert (drift.agent, drift.stored, drift.actual) == (alice, 7, 2)


@pytest.mark.django_db
def test_fix_repairs_the_counters(tenant, alice, bob):
    new_lead(tenant, alice)
    set_count(alice, 0)
    set_count(bob, 3)

    text = reconcile("--fix")

    assert "alice@acme.test (tenant acme): stored 0, actual 1 -> repaired" in text
    assert "bob@acme.test (tenant acme): stored 3, actual 0 -> repaired" in text
    assert "Repaired 2 lead counters" in text
    assert (stored_count(alice), stored_count(bob)) == (1, 0)
    assert "No drift" in reconcile()


@pytest.mark.django_db
def test_closed_leads_do_not_count(tenant, alice):
    lead = new_lead(tenant, alice)
    Lead.objects.for_tenant(tenant).filter(pk=lead.pk).update(status=LeadStatus.CLOSED)

    assert "stored 1, actual 0" in reconcile("--fix")
    assert stored_count(alice) == 0


@pytest.mark.django_db
def test_tenant_option_limits_the_scope(tenant, alice, other_tenant):
    olga = MembershipFactory(tenant=other_tenant, user__email="olga@globex.test")
    new_lead(tenant, alice)
    new_lead(other_tenant, olga)
    set_count(alice, 5)
    set_count(olga, 5)

    text = reconcile("--tenant", "acme")
    assert "alice@acme.test" in text
    assert "olga@globex.test" not in text
    assert "tenant acme" in text

    text = reconcile("--fix", "--tenant", str(other_tenant.pk))
    assert "olga@globex.test (tenant globex): stored 5, actual 1 -> repaired" in text
    assert "alice@acme.test" not in text
    assert (stored_count(olga), stored_count(alice)) == (1, 5), "only the tenant asked for"

    with pytest.raises(CommandError, match="no-such-tenant"):
        reconcile("--tenant", "no-such-tenant")
