"""Refusals of the lead services themselves, whoever calls them.

The API and the admin check who may act before they call a service; the services check
again (`_authorize_reassignment`, the filters of `route_unassigned_lead` and
`retry_unassigned_leads`, `create_lead`'s agent), because jobs, the redistribution page
and commands call them directly. Each test here names a rule that only the service
enforces for such a caller.
"""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from core.actor import Actor
from core.errors import Conflict, Forbidden, NotFound
from leads import redistribution, services
from leads.models import Lead, LeadReassignment, LeadStatus, ReassignmentReason
from leads.redistribution import redistribute_leads
from leads.services import (
    CLAIM_STAGE,
    _auto_reassign,
    _Breach,
    create_lead,
    reassign_lead,
    retry_unassigned_leads,
    route_unassigned_lead,
)
from teams.models import Membership, Presence, Role
from teams.services import create_api_key
from tests.factories import AssignmentConfigFactory, MembershipFactory, UserFactory
from tests.leads.factories import LeadFactory

pytestmark = pytest.mark.django_db

JOB = Actor.for_job("retry_unassigned_leads")


def lead_row(lead) -> dict:
    return Lead.all_tenants.filter(pk=lead.pk).values().get()


def counter(agent) -> int:
    return Membership.all_tenants.values_list("current_lead_count", flat=True).get(pk=agent.pk)


def waiting_lead(tenant) -> Lead:
    """A lead nobody could take when it came in (every agent away)."""
    lead = create_lead(tenant=tenant, actor=Actor.system(), name="Jane Roe", phone="+4915100000")
    assert lead.assigned_agent_id is None
    return lead


def back_online(agent) -> None:
    Membership.all_tenants.filter(pk=agent.pk).update(presence=Presence.ONLINE)


# --- who may reassign: the service's own check ------------------------------------------


def _deciders(tenant, other_tenant):
    """Callers that must be refused: (actor, reassigned_by)."""
    member = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    gone_admin = MembershipFactory(tenant=tenant, role=Role.ADMIN, is_active=False)
    foreign_admin = MembershipFactory(tenant=other_tenant, role=Role.ADMIN)
    key, _ = create_api_key(tenant=tenant, name="CRM", actor=Actor.system())
    gone_superuser = UserFactory(is_superuser=True, is_staff=True, is_active=False)
    return {
        "a member": (Actor.for_membership(member), member),
        "a deactivated admin": (Actor.for_membership(gone_admin), gone_admin),
        "another tenant's admin": (Actor.for_membership(foreign_admin), foreign_admin),
        "an API key on nobody's behalf": (Actor.for_api_key(key), None),
        "a deactivated superuser": (Actor.for_admin(gone_superuser), None),
    }


@pytest.mark.parametrize(
    "who",
    [
        "a member",
        "a deactivated admin",
        "another tenant's admin",
        "an API key on nobody's behalf",
        "a deactivated superuser",
    ],
)
def test_the_reassign_service_refuses_anyone_but_an_active_admin_the_system_or_a_superuser(
    tenant, other_tenant, teammate, who
):
    bob = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    lead = create_lead(
        tenant=tenant,
        actor=Actor.system(),
        name="Jane Roe",
        phone="+4915100000",
        assigned_agent_id=teammate.pk,
    )
    actor, reassigned_by = _deciders(tenant, other_tenant)[who]
    before = lead_row(lead)

    with pytest.raises(Forbidden) as refused:
        reassign_lead(
            tenant=tenant,
            lead_id=lead.pk,
            to_agent_id=bob.pk,
            reason="manual",
            actor=actor,
            reassigned_by=reassigned_by,
        )

    assert (refused.value.code, refused.value.field) == ("not_an_admin", "reassigned_by_id")
    assert lead_row(lead) == before
    assert not LeadReassignment.all_tenants.exists()
    assert (counter(teammate), counter(bob)) == (1, 0)


# --- intake: the named agent ------------------------------------------------------------


def test_a_lead_is_not_given_to_an_agent_whose_user_was_deactivated(tenant):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, user__is_active=False)

    with pytest.raises(NotFound) as refused:
        create_lead(
            tenant=tenant,
            actor=Actor.system(),
            name="Jane Roe",
            phone="+4915100000",
            assigned_agent_id=agent.pk,
        )

    assert (refused.value.code, refused.value.field) == ("agent_not_found", "assigned_agent_id")
    assert not Lead.all_tenants.exists()
    assert counter(agent) == 0


# --- the retry of waiting leads ---------------------------------------------------------


def test_the_retry_leaves_a_lead_that_got_an_agent_in_the_meantime(tenant):
    """Listed as waiting, then given to someone (an admin, another retry) before the
    retry locked it: it must not be routed a second time."""
    first = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    second = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    lead = waiting_lead(tenant)
    Lead.all_tenants.filter(pk=lead.pk).update(assigned_agent=first)
    back_online(second)
    before = lead_row(lead)

    assert route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB) is None

    assert lead_row(lead) == before
    assert counter(second) == 0


@pytest.mark.parametrize("status", [LeadStatus.CLAIMED, LeadStatus.CLOSED])
def test_the_retry_leaves_a_lead_that_is_no_longer_new(tenant, status):
    """Closed (or moved on) while it waited: nobody is given it."""
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    lead = waiting_lead(tenant)
    Lead.all_tenants.filter(pk=lead.pk).update(status=status)
    back_online(agent)
    before = lead_row(lead)

    assert route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB) is None

    assert lead_row(lead) == before
    assert counter(agent) == 0


def test_the_retry_of_one_tenant_does_not_route_another_tenants_lead(tenant, other_tenant):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    foreign = MembershipFactory(tenant=other_tenant, role=Role.MEMBER, presence=Presence.AWAY)
    lead = waiting_lead(other_tenant)
    back_online(agent)
    back_online(foreign)

    assert route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB) is None
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id is None


def test_the_retry_for_a_tenant_whose_agent_came_back_touches_only_that_tenant(
    tenant, other_tenant
):
    ours = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    theirs = MembershipFactory(tenant=other_tenant, role=Role.MEMBER, presence=Presence.AWAY)
    our_lead, their_lead = waiting_lead(tenant), waiting_lead(other_tenant)
    back_online(ours)
    back_online(theirs)

    summary = retry_unassigned_leads(tenant_id=tenant.pk)

    assert summary == {"checked": 1, "assigned": 1}
    assert Lead.all_tenants.get(pk=our_lead.pk).assigned_agent_id == ours.pk
    assert Lead.all_tenants.get(pk=their_lead.pk).assigned_agent_id is None


def test_the_retry_does_not_try_leads_waiting_for_an_admin_to_assign_them(tenant):
    """A tenant on the manual strategy assigns by hand: the periodic retry skips them."""
    AssignmentConfigFactory(tenant=tenant, team=None, strategy="manual")
    MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.ONLINE)
    lead = waiting_lead(tenant)
    assert lead.unassigned_reason == "manual_strategy"
    before = lead_row(lead)

    assert retry_unassigned_leads(tenant_id=tenant.pk) == {"checked": 0, "assigned": 0}
    assert lead_row(lead) == before


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_waiting_lead_another_retry_holds_is_skipped_not_routed_twice(tenant):
    """Two retries at once (the minute's job and "an agent is back"): the one that finds
    the lead locked leaves it to the other, it neither waits nor routes it again."""
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    lead = waiting_lead(tenant)
    back_online(agent)
    locked, release = threading.Event(), threading.Event()

    def hold_the_lead():
        try:
            with transaction.atomic():
                Lead.all_tenants.select_for_update().get(pk=lead.pk)
                locked.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_lead)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        routed = route_unassigned_lead(tenant=tenant, lead_id=lead.pk, actor=JOB)
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(10)

    assert routed is None
    assert waited < 5
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id is None
    assert counter(agent) == 0


# --- automatic reassignment after a breach: someone acted in between ---------------------


@pytest.fixture
def auto_reassign(tenant):
    tenant.auto_reassign_on_breach = True
    tenant.save(update_fields=["auto_reassign_on_breach"])
    return tenant


def test_auto_reassign_leaves_a_breached_lead_an_admin_gave_to_someone_else_in_between(
    auto_reassign, tenant, owner, teammate
):
    """The sweep recorded the breach against Alice; before its automatic move, an admin
    handed the lead to Bob (manual: the timers, breach included, stay). Bob keeps it."""
    bob = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    MembershipFactory(tenant=tenant, role=Role.MEMBER)  # someone the engine could pick
    lead = create_lead(
        tenant=tenant,
        actor=Actor.system(),
        name="Jane Roe",
        phone="+4915100000",
        assigned_agent_id=teammate.pk,
    )
    Lead.all_tenants.filter(pk=lead.pk).update(claim_sla_breached_at=lead.claim_deadline)
    breach = _Breach(
        lead_id=lead.pk, tenant=tenant, agent_id=teammate.pk, deadline=lead.claim_deadline
    )
    reassign_lead(
        tenant=tenant,
        lead_id=lead.pk,
        to_agent_id=bob.pk,
        reason="manual",
        actor=Actor.for_membership(owner),
        reassigned_by=owner,
    )
    before = lead_row(lead)

    assert _auto_reassign(breach, CLAIM_STAGE) is False

    assert lead_row(lead) == before
    assert LeadReassignment.all_tenants.filter(lead=lead).count() == 1
    assert counter(bob) == 1


def test_auto_reassign_of_a_lead_deleted_in_between_does_nothing(auto_reassign, tenant, teammate):
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    lead = create_lead(
        tenant=tenant,
        actor=Actor.system(),
        name="Jane Roe",
        phone="+4915100000",
        assigned_agent_id=teammate.pk,
    )
    breach = _Breach(
        lead_id=lead.pk, tenant=tenant, agent_id=teammate.pk, deadline=lead.claim_deadline
    )
    Lead.all_tenants.filter(pk=lead.pk).delete()

    assert _auto_reassign(breach, CLAIM_STAGE) is False
    assert not LeadReassignment.all_tenants.exists()


def test_a_breached_lead_that_cannot_be_moved_does_not_stop_the_sweep(
    auto_reassign, tenant, owner, teammate, monkeypatch, caplog
):
    """Its transaction rolls back and is logged; the next breached lead still moves."""
    tenant.contact_window_minutes = 120  # the moved lead's new window runs on
    tenant.save(update_fields=["contact_window_minutes"])
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    leads = [
        create_lead(
            tenant=tenant,
            actor=Actor.system(),
            name=name,
            phone="+4915100000",
            assigned_agent_id=teammate.pk,
        )
        for name in ("Broken", "Fine")
    ]
    real = services.reassign_by_engine

    def refuse_the_broken_one(*, tenant, lead, **reassignment):
        if lead.name == "Broken":
            raise Conflict(code="something_odd", message="Cannot move this one.")
        return real(tenant=tenant, lead=lead, **reassignment)

    monkeypatch.setattr(services, "reassign_by_engine", refuse_the_broken_one)

    with caplog.at_level("ERROR", logger="leads.services"):
        counts = services.sweep_sla_breaches(now=timezone.now() + timedelta(minutes=30))

    assert counts == {"claim": 2, "contact": 0}
    broken, fine = (Lead.all_tenants.get(pk=lead.pk) for lead in leads)
    assert broken.assigned_agent_id == teammate.pk and broken.claim_sla_breached_at is not None
    assert fine.assigned_agent_id != teammate.pk
    assert "Automatic reassignment of lead" in caplog.text


# --- the redistribution page's service ------------------------------------------------


def lead_of(agent) -> Lead:
    """An open lead given to `agent`, counted on them as intake counts it."""
    lead = LeadFactory(assigned_agent=agent)
    Membership.all_tenants.filter(pk=agent.pk).update(
        current_lead_count=F("current_lead_count") + 1
    )
    return lead


def test_redistributing_an_agent_of_another_tenant_is_refused_and_moves_nothing(
    tenant, owner, outsider
):
    MembershipFactory(tenant=outsider.tenant)  # who could take the lead
    lead = lead_of(outsider)
    before = lead_row(lead)

    with pytest.raises(ValueError, match="another tenant"):
        redistribute_leads(
            tenant=tenant, agent=outsider, actor=Actor.for_membership(owner), reassigned_by=owner
        )

    assert lead_row(lead) == before


def test_a_member_cannot_redistribute_a_colleagues_leads_and_none_moves(tenant, teammate):
    """Refused as a whole, up front: not a page of leads that each "stayed"."""
    leaving = MembershipFactory(tenant=tenant, role=Role.MEMBER, presence=Presence.AWAY)
    MembershipFactory(tenant=tenant)  # who could take the lead
    lead = lead_of(leaving)
    before = lead_row(lead)

    with pytest.raises(Forbidden):
        redistribute_leads(
            tenant=tenant,
            agent=leaving,
            actor=Actor.for_membership(teammate),
            reassigned_by=teammate,
        )

    assert lead_row(lead) == before
    assert LeadReassignment.all_tenants.filter(lead=lead).count() == 0


def test_a_lead_reassigned_after_the_redistribution_read_the_list_stays_with_its_new_agent(
    tenant, owner, monkeypatch
):
    """The page read the leaving agent's leads; before it moved this one, another admin
    gave it to someone: it is counted as gone, not taken from them."""
    leaving = MembershipFactory(tenant=tenant, presence=Presence.AWAY)
    colleague = MembershipFactory(tenant=tenant)
    new_holder = MembershipFactory(tenant=tenant, presence=Presence.AWAY)
    lead = lead_of(leaving)
    admin = Actor.for_membership(owner)
    move = redistribution._move_lead

    def reassigned_by_someone_first(**kwargs):
        reassign_lead(
            tenant=tenant,
            lead_id=lead.pk,
            to_agent_id=new_holder.pk,
            reason=ReassignmentReason.MANUAL,
            actor=admin,
            reassigned_by=owner,
        )
        return move(**kwargs)

    monkeypatch.setattr(redistribution, "_move_lead", reassigned_by_someone_first)

    result = redistribute_leads(tenant=tenant, agent=leaving, actor=admin, reassigned_by=owner)

    assert (result.gone, result.moved, result.stayed) == (1, [], [])
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id == new_holder.pk
    assert (counter(leaving), counter(new_holder), counter(colleague)) == (0, 1, 0)
    assert LeadReassignment.all_tenants.filter(lead=lead).count() == 1
