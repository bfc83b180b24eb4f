"""The audit log page: people once, how they acted apart, details by name with links."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from audit.models import ActivityLog
from core.actor import Actor
from inbox.models import CrmIntegration
from leads.services import create_lead, reassign_lead
from teams.models import TeamRole
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory

pytestmark = pytest.mark.django_db
LIST_URL = reverse("admin:audit_activitylog_changelist")


def login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def cells(page: str, column: str) -> list[str]:
    return re.findall(rf'<td class="field-{column}[^"]*">(.*?)</td>', page, re.S)


@pytest.fixture
def reassigned(tenant, owner, api_key):
    alice = MembershipFactory(tenant=tenant, user__full_name="Alice Agent")
    bob = MembershipFactory(tenant=tenant, user__full_name="Bob Agent")
    lead = create_lead(
        tenant=tenant, actor=Actor.system(), name="Alpha Lead", assigned_agent_id=alice.pk
    )
    reassign_lead(
        tenant=tenant,
        lead_id=lead.pk,
        to_agent_id=bob.pk,
        reason="manual",
        reassigned_by=owner,
        actor=Actor.for_api_key(api_key[0], on_behalf_of=owner),
    )
    return {"alice": alice, "bob": bob, "lead": lead}


def test_details_name_agents_and_link_to_them_instead_of_showing_ids(owner, reassigned):
    page = login(owner.user).get(LIST_URL, {"action__exact": "lead.reassigned"}).text

    [details] = cells(page, "summary")
    bob = reassigned["bob"]
    assert str(bob.pk) not in re.sub(r'href="[^"]*"', "", details), "no raw ids in the text"
    bob_url = reverse("admin:teams_membership_change", args=[bob.pk])
    assert f'<a href="{bob_url}">Bob Agent</a>' in details
    assert "reason: manual" in details


def test_each_person_is_listed_once_and_how_they_acted_is_its_own_column(
    tenant, owner, api_key, reassigned
):
    client = login(owner.user)
    team = TeamFactory(tenant=tenant, name="Sales")
    response = client.post(
        reverse("admin:teams_team_change", args=[team.pk]),
        {
            "name": "Inside sales",
            "description": "",
            "members-TOTAL_FORMS": "0",
            "members-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302

    page = client.get(LIST_URL).text

    person_choices = re.findall(r'href="\?person=([^"&]+)"', page)
    assert person_choices.count(owner.user.email.replace("@", "%40")) == 1
    vias = [re.sub("<[^>]+>", "", cell) for cell in cells(page, "via")]
    assert "admin" in vias and f"api_key:{api_key[0].prefix}" in vias

    by_key = client.get(LIST_URL, {"via": "api_key"}).text
    assert cells(by_key, "action") == ["lead.reassigned"]
    by_owner = client.get(LIST_URL, {"person": owner.user.email}).text
    assert sorted(cells(by_owner, "action")) == ["lead.reassigned", "team.updated"]


def test_a_team_edit_reads_as_old_to_new_with_its_members_by_name(tenant, owner):
    team = TeamFactory(tenant=tenant, name="Sales")
    ann = MembershipFactory(tenant=tenant, user__full_name="Ann Example")
    client = login(owner.user)

    response = client.post(
        reverse("admin:teams_team_change", args=[team.pk]),
        {
            "name": "Sales",
            "description": "Inbound",
            "members-TOTAL_FORMS": "1",
            "members-INITIAL_FORMS": "0",
            "members-0-membership": str(ann.pk),
        },
    )

    assert response.status_code == 302
    row = ActivityLog.objects.for_tenant(tenant).get(action="team.updated")
    assert row.data["changes"] == {"description": ["", "Inbound"]}
    [added] = row.data["rows"]
    assert (added["rows"], added["op"], added["row"]) == (
        "team members",
        "added",
        "Ann Example in Sales",
    )
    details = cells(client.get(LIST_URL).text, "summary")[0]
    assert "description: — → Inbound" in details
    assert "team members: added Ann Example in Sales" in details


def test_a_related_choice_is_recorded_by_name(tenant, owner):
    member = TeamMemberFactory(team=TeamFactory(tenant=tenant, name="Sales"))
    TeamRole.objects.create(tenant=tenant, name="Closer")
    role = TeamRole.objects.for_tenant(tenant).get(name="Closer")
    client = login(owner.user)

    client.post(
        reverse("admin:teams_teammember_change", args=[member.pk]),
        {
            "team": str(member.team_id),
            "membership": str(member.membership_id),
            "role": str(role.pk),
        },
    )

    row = ActivityLog.objects.for_tenant(tenant).get(action="team_member.updated")
    assert row.data["changes"] == {"role": [None, "Closer"]}


def test_a_crm_key_is_recorded_as_changed_never_by_value(tenant, owner):
    crm = CrmIntegration.objects.create(tenant=tenant, name="Acme CRM")
    client = login(owner.user)

    response = client.post(
        reverse("admin:inbox_crmintegration_change", args=[crm.pk]),
        {
            "name": "Acme CRM",
            "is_active": "on",
            "api_url": "",
            "config": "{}",
            "api_key": "crm-secret-value-123",
        },
    )

    assert response.status_code == 302
    row = ActivityLog.objects.for_tenant(tenant).get(action="crm_integration.updated")
    assert row.data["changes"]["api_key_encrypted"] == [None, "(new value)"]
    crm.refresh_from_db()
    assert crm.api_key_encrypted and "crm-secret-value-123" not in str(row.data)
    assert crm.api_key_encrypted not in str(row.data)


def test_an_entrys_page_shows_the_person_how_and_the_details_by_name(owner, reassigned):
    row = ActivityLog.objects.for_tenant(owner.tenant).get(action="lead.reassigned")

    page = login(owner.user).get(reverse("admin:audit_activitylog_change", args=[row.pk])).text

    assert owner.user.email in page and f"api_key:{row.via.split(':', 1)[1]}" in page
    assert "Bob Agent</a>" in page
