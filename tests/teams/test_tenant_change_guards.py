"""Who may change a tenant's configuration (`authorize_tenant_change`), beyond the
cases in tests/audit/test_actor_identity.py: people whose rights were taken away, and
new tenants."""

import datetime
from datetime import timedelta

import pytest
import time_machine

from audit.models import ActivityLog
from core.actor import Actor
from core.errors import Forbidden, InvalidInput
from teams.models import ApiKey, Role, Team, TeamMember, Tenant
from teams.services import (
    add_team_member,
    create_api_key,
    delete_tenant_record,
    revoke_api_key,
    save_tenant_record,
    touch_api_key,
)
from tests.factories import MembershipFactory, TeamFactory, UserFactory

pytestmark = pytest.mark.django_db

T0 = datetime.datetime(2026, 11, 23, 9, 0, tzinfo=datetime.UTC)


def _refused(actor, tenant) -> bool:
    try:
        save_tenant_record(
            instance=Team(tenant=tenant, name="Sneaky"), fields=["name"], actor=actor
        )
    except Forbidden as refused:
        assert refused.code == "not_tenant_admin"
        return not Team.objects.for_tenant(tenant).filter(name="Sneaky").exists()
    return False


def test_a_deactivated_superuser_changes_no_configuration(tenant):
    root = UserFactory(is_staff=True, is_superuser=True, is_active=False)

    assert _refused(Actor.for_admin(root), tenant)


def test_an_admin_whose_membership_was_deactivated_changes_no_configuration(tenant):
    former = MembershipFactory(tenant=tenant, role=Role.ADMIN, is_active=False)

    assert _refused(Actor.for_admin(former.user, membership=former), tenant)


def test_a_deactivated_user_with_an_admin_membership_changes_no_configuration(tenant):
    admin = MembershipFactory(tenant=tenant, role=Role.ADMIN, user__is_active=False)

    assert _refused(Actor.for_admin(admin.user, membership=admin), tenant)


def test_only_a_superuser_or_the_system_creates_a_tenant(tenant, owner):
    new = Tenant(name="Initech", slug="initech")

    with pytest.raises(Forbidden):
        save_tenant_record(instance=new, fields=["name", "slug"], actor=Actor.for_admin(owner.user))

    assert not Tenant.objects.filter(slug="initech").exists()


# --- API keys ---------------------------------------------------------------------------


def test_a_member_who_is_not_an_admin_cannot_create_an_api_key(tenant, teammate):
    with pytest.raises(Forbidden):
        create_api_key(
            tenant=tenant, name="Mine", actor=Actor.for_admin(teammate.user, membership=teammate)
        )

    assert not ApiKey.objects.for_tenant(tenant).exists()


def test_another_tenants_admin_cannot_revoke_our_api_key(tenant, api_key, outsider):
    with pytest.raises(Forbidden):
        revoke_api_key(api_key=api_key[0], actor=Actor.for_admin(outsider.user))

    assert ApiKey.objects.for_tenant(tenant).get().is_active is True


def test_revoking_a_revoked_key_again_keeps_when_it_was_revoked(tenant, api_key):
    first = revoke_api_key(api_key=api_key[0], actor=Actor.system())

    again = revoke_api_key(api_key=api_key[0], actor=Actor.system())

    assert again.revoked_at == first.revoked_at
    assert ActivityLog.objects.for_tenant(tenant).filter(action="api_key.revoked").count() == 1


def test_two_requests_racing_past_the_check_write_last_used_at_once(api_key):
    key = api_key[0]
    stale = ApiKey.objects.for_tenant(key.tenant_id).get(pk=key.pk)  # read by another request
    with time_machine.travel(T0, tick=False):
        touch_api_key(api_key=key, resolution_seconds=300)
    with time_machine.travel(T0 + timedelta(seconds=10), tick=False):
        touch_api_key(api_key=stale, resolution_seconds=300)

    assert ApiKey.objects.for_tenant(key.tenant_id).get(pk=key.pk).last_used_at == T0


# --- rows that name another tenant's rows -----------------------------------------------


def test_a_team_cannot_get_another_tenants_agent_as_a_member(tenant, owner, outsider):
    team = TeamFactory(tenant=tenant)

    with pytest.raises(InvalidInput) as refused:
        save_tenant_record(
            instance=TeamMember(tenant=tenant, team=team, membership=outsider),
            fields=["team", "membership"],
            actor=Actor.for_admin(owner.user, membership=owner),
        )

    assert (refused.value.code, refused.value.field) == ("other_tenant", "membership")
    assert not TeamMember.objects.for_tenant(tenant).exists()


def test_add_team_member_refuses_an_agent_of_another_tenant(tenant, outsider):
    team = TeamFactory(tenant=tenant)

    with pytest.raises(ValueError):
        add_team_member(team=team, membership=outsider, actor=Actor.system())

    assert not TeamMember.objects.for_tenant(tenant).exists()


# --- deleting ---------------------------------------------------------------------------


def test_a_tenant_is_never_deleted_even_by_the_system(tenant):
    with pytest.raises(Forbidden) as refused:
        delete_tenant_record(instance=tenant, actor=Actor.system())

    assert refused.value.code == "tenant_not_deletable"
    assert Tenant.objects.filter(pk=tenant.pk).exists()


def test_a_member_who_is_not_an_admin_cannot_delete_a_team(tenant, teammate):
    team = TeamFactory(tenant=tenant)

    with pytest.raises(Forbidden):
        delete_tenant_record(
            instance=team, actor=Actor.for_admin(teammate.user, membership=teammate)
        )

    assert Team.objects.for_tenant(tenant).filter(pk=team.pk).exists()
