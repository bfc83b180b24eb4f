"""The agent pages' rules that only the pages' own reads and writes enforce: an agent
who left a tenant (membership deactivated) no longer sees, counts or marks its notices,
sets its presence or sees its leads; marking a notice read twice keeps the moment it
was first read."""

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from leads.models import Notification, NotificationKind
from teams.models import Membership, Role
from tests.factories import MembershipFactory
from tests.leads.factories import LeadFactory
from workspace.services import mark_notice_read

pytestmark = pytest.mark.django_db


def login(membership) -> Client:
    client = Client()
    client.force_login(membership.user)
    return client


def lead_notice(membership, title="Lead assigned") -> Notification:
    return Notification.objects.for_tenant(membership.tenant_id).create(
        recipient=membership, kind=NotificationKind.LEAD_ASSIGNED, title=title
    )


@pytest.fixture
def agent(tenant):
    return MembershipFactory(tenant=tenant, role=Role.MEMBER, user__full_name="Ana Agent")


@pytest.fixture
def left(other_tenant, agent):
    """The same person's agent in a tenant they have left."""
    return MembershipFactory(tenant=other_tenant, user=agent.user, is_active=False)


def test_a_tenant_the_agent_left_shows_no_notices_and_counts_none(agent, left):
    lead_notice(agent, "Still mine")
    lead_notice(left, "From the tenant I left")
    client = login(agent)

    html = client.get("/notifications/").content.decode()

    assert "Still mine" in html
    assert "From the tenant I left" not in html
    assert 'aria-label="1 unread"' in html
    badge = client.get("/notifications/unread/").content.decode()
    assert "1" in badge and "2" not in badge


def test_a_notice_of_a_tenant_the_agent_left_cannot_be_marked_read(agent, left):
    old = lead_notice(left, "From the tenant I left")
    client = login(agent)

    assert client.post(f"/notifications/lead/{old.pk}/read/").status_code == 404
    client.post("/notifications/read-all/")

    old.refresh_from_db()
    assert not old.is_read and old.read_at is None


def test_marking_a_read_notice_again_keeps_when_it_was_first_read(agent):
    notice = lead_notice(agent)
    first = timezone.now() - timedelta(hours=2)
    mark_notice_read(user=agent.user, kind="lead", notice_id=notice.pk, now=first)

    mark_notice_read(user=agent.user, kind="lead", notice_id=notice.pk)

    notice.refresh_from_db()
    assert notice.is_read and notice.read_at == first


def test_the_presence_switch_leaves_a_tenant_the_agent_left_alone(agent, left):
    before = Membership.all_tenants.values_list("presence", flat=True).get(pk=left.pk)

    login(agent).post("/presence/", {"status": "away"})

    assert Membership.all_tenants.values_list("presence", flat=True).get(pk=agent.pk) == "away"
    assert Membership.all_tenants.values_list("presence", flat=True).get(pk=left.pk) == before


def test_my_leads_hides_the_leads_of_a_tenant_the_agent_left(agent, left):
    LeadFactory(assigned_agent=agent, name="Lead I still hold")
    LeadFactory(assigned_agent=left, name="Lead of the tenant I left")

    html = login(agent).get("/leads/").content.decode()

    assert "Lead I still hold" in html
    assert "Lead of the tenant I left" not in html
