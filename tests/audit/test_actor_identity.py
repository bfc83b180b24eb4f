"""One actor identity: the person (or "system") and how they acted, in separate columns;
who may change a tenant's configuration and who may reassign, decided in the service."""

import importlib

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client

from audit.models import ActivityLog
from audit.services import record_activity
from core.actor import Actor
from core.errors import Forbidden
from leads.services import create_lead, reassign_lead
from teams.models import Role, Team
from teams.services import save_tenant_record
from tests.factories import MembershipFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def root():
    return UserFactory(email="root@example.test", is_staff=True, is_superuser=True)


@pytest.fixture
def lead(tenant, teammate):
    return create_lead(
        tenant=tenant,
        actor=Actor.system(),
        name="Alpha Lead",
        phone="+100",
        assigned_agent_id=teammate.pk,
    )


def test_a_superusers_reassignment_in_the_admin_is_recorded_as_that_person(
    root, tenant, lead, owner
):
    client = Client()
    client.force_login(root)

    response = client.post(
        "/admin/leads/lead/",
        {
            "action": "reassign_selected",
            ACTION_CHECKBOX_NAME: [str(lead.pk)],
            "to_agent": str(owner.pk),
            "reason": "manual",
            "apply": "Reassign",
        },
    )

    assert response.status_code == 302
    row = ActivityLog.objects.for_tenant(tenant).get(action="lead.reassigned")
    assert (row.actor_label, row.via, row.actor_user_id) == (root.email, "admin", root.pk)


def test_one_person_is_one_actor_however_they_act(tenant, owner, api_key):
    via_admin = Actor.for_admin(owner.user, membership=owner)
    via_key = Actor.for_api_key(api_key[0], on_behalf_of=owner)
    for actor in (via_admin, via_key, Actor.for_membership(owner, via="api")):
        record_activity(tenant=tenant, action="lead.closed", actor=actor)

    rows = ActivityLog.objects.for_tenant(tenant).filter(action="lead.closed")
    assert set(rows.values_list("actor_label", flat=True)) == {owner.user.email}
    assert set(rows.values_list("via", flat=True)) == {
        "admin",
        f"api_key:{api_key[0].prefix}",
        "api",
    }
    assert set(rows.values_list("actor_user", flat=True)) == {owner.user.pk}


def test_a_key_acting_on_nobodys_behalf_is_the_key_and_jobs_are_the_system(tenant, api_key):
    assert (Actor.for_api_key(api_key[0]).label, Actor.for_api_key(api_key[0]).via) == (
        "api_key",
        f"api_key:{api_key[0].prefix}",
    )
    job = Actor.for_job("check_sla")
    assert (job.label, job.via, job.person_user) == ("system", "job:check_sla", None)


@pytest.mark.parametrize("who", ["member", "admin_of_another_tenant", "key_alone"])
def test_only_a_superuser_or_the_tenants_admin_changes_its_configuration(
    who, tenant, teammate, outsider, api_key
):
    actor = {
        "member": Actor.for_admin(teammate.user, membership=teammate),
        "admin_of_another_tenant": Actor.for_admin(outsider.user),
        "key_alone": Actor.for_api_key(api_key[0]),
    }[who]
    team = Team(tenant=tenant, name="Sneaky")
    before = ActivityLog.all_tenants.count()

    with pytest.raises(Forbidden) as refused:
        save_tenant_record(instance=team, fields=["name"], actor=actor)

    assert refused.value.code == "not_tenant_admin"
    assert not Team.objects.for_tenant(tenant).filter(name="Sneaky").exists()
    assert ActivityLog.all_tenants.count() == before


@pytest.mark.parametrize("who", ["superuser", "tenant_admin", "command"])
def test_allowed_configuration_changes_record_old_and_new_by_name(who, tenant, owner, root):
    actor = {
        "superuser": Actor.for_admin(root),
        "tenant_admin": Actor.for_admin(owner.user, membership=owner),
        "command": Actor.for_command("seed_demo"),
    }[who]
    team = TeamFactory(tenant=tenant, name="Sales")
    team.name = "Inside sales"

    save_tenant_record(instance=team, fields=["name"], actor=actor)

    row = ActivityLog.objects.for_tenant(tenant).get(action="team.updated")
    assert row.data == {"changes": {"name": ["Sales", "Inside sales"]}}
    assert (row.actor_label, row.via) == (actor.label, actor.via)


def test_a_member_named_as_the_deciding_admin_cannot_reassign(tenant, lead, teammate, owner):
    with pytest.raises(Forbidden) as refused:
        reassign_lead(
            tenant=tenant,
            lead_id=lead.pk,
            to_agent_id=owner.pk,
            reason="manual",
            reassigned_by=teammate,
            actor=Actor.for_admin(teammate.user, membership=teammate),
        )
    assert refused.value.code == "not_an_admin"
    lead.refresh_from_db()
    assert lead.assigned_agent_id == teammate.pk


def test_a_person_without_a_deciding_admin_cannot_reassign(tenant, lead, owner):
    staff = UserFactory(is_staff=True)
    MembershipFactory(tenant=tenant, user=staff, role=Role.MEMBER)
    with pytest.raises(Forbidden):
        reassign_lead(
            tenant=tenant,
            lead_id=lead.pk,
            to_agent_id=owner.pk,
            reason="manual",
            reassigned_by=None,
            actor=Actor.for_admin(staff),
        )


def test_old_rows_are_split_into_person_and_via(tenant, owner, api_key):
    migration = importlib.import_module("audit.migrations.0003_actor_person_and_via")
    labels = {
        f"admin:{owner.user.email}": (owner.user.email, "admin", owner.user.pk),
        f"{owner.user.email} via api_key:wk_abc": (
            owner.user.email,
            "api_key:wk_abc",
            owner.user.pk,
        ),
        "api_key:wk_abc": ("api_key", "api_key:wk_abc", None),
        "cli:seed_demo": ("system", "command:seed_demo", None),
        "system": ("system", "", None),
    }
    for label in labels:
        ActivityLog.objects.create(tenant=tenant, action=f"old {label}", actor_label=label)

    from django.apps import apps

    migration.split_old_labels(apps, None)

    for label, expected in labels.items():
        row = ActivityLog.objects.for_tenant(tenant).get(action=f"old {label}")
        assert (row.actor_label, row.via, row.actor_user_id) == expected, label


@pytest.mark.django_db
def test_an_agents_claim_and_contact_say_where_the_agent_acted(tenant):
    agent = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    on_page, by_api = (
        create_lead(
            tenant=tenant, actor=Actor.system(), name=name, phone="+1", assigned_agent_id=agent.pk
        )
        for name in ("Page lead", "API lead")
    )
    client = Client()
    client.force_login(agent.user)

    client.post(f"/leads/{on_page.pk}/claim/")
    client.post(f"/leads/{on_page.pk}/contacted/")
    client.post(f"/api/v1/leads/{by_api.pk}/claim", content_type="application/json")
    client.post(f"/api/v1/leads/{by_api.pk}/contacted", content_type="application/json")

    rows = ActivityLog.objects.for_tenant(tenant).filter(
        action__in=["lead.claimed", "lead.contacted"]
    )
    seen = {(row.target_label, row.action, row.actor_label, row.via) for row in rows}
    email = agent.user.email
    assert seen == {
        ("Page lead", "lead.claimed", email, "agent_page"),
        ("Page lead", "lead.contacted", email, "agent_page"),
        ("API lead", "lead.claimed", email, "api"),
        ("API lead", "lead.contacted", email, "api"),
    }
