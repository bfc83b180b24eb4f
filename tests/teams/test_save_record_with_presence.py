"""teams.services.save_record_with_presence: the admin's save of an agent or of a tenant
with its agents, where presence goes through the presence service and the rest through
the one door, in one transaction."""

import pytest

from audit.models import ActivityLog
from core.actor import Actor
from core.errors import DomainError
from teams.models import Membership, Presence, PresenceSource
from teams.services import RowChanges, save_record_with_presence
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def admin_actor(owner):
    return Actor.for_membership(owner, via="admin")


def actions(agent) -> list[str]:
    rows = ActivityLog.all_tenants.filter(target_id=str(agent.pk)).order_by("created_at")
    return [row.action for row in rows]


def test_a_new_agent_starts_with_the_presence_it_was_given_set_by_an_admin(tenant, owner):
    agent = Membership(tenant=tenant, user=UserFactory(), presence=Presence.AWAY)

    gone = save_record_with_presence(
        instance=agent, fields=["user", "presence"], actor=admin_actor(owner)
    )

    stored = Membership.objects.for_tenant(tenant).get(pk=agent.pk)
    assert (stored.presence, stored.presence_source) == (Presence.AWAY, PresenceSource.ADMIN)
    assert stored.presence_changed_at is not None
    assert gone == []


def test_presence_and_a_field_are_two_changes_each_recorded_and_offline_is_gone(tenant, owner):
    agent = MembershipFactory(tenant=tenant, presence=Presence.ONLINE)
    agent.presence, agent.capacity = Presence.OFFLINE, 4

    gone = save_record_with_presence(
        instance=agent, fields=["presence", "capacity"], actor=admin_actor(owner)
    )

    stored = Membership.objects.for_tenant(tenant).get(pk=agent.pk)
    assert (stored.presence, stored.presence_source, stored.capacity) == (
        Presence.OFFLINE,
        PresenceSource.ADMIN,
        4,
    )
    assert gone == [agent]
    assert sorted(actions(agent)) == ["membership.offline", "membership.updated"]


def test_agents_deactivated_or_set_offline_in_a_tenants_rows_are_gone(tenant, owner):
    leaving, resting, staying = (MembershipFactory(tenant=tenant) for _ in range(3))
    leaving.is_active = False
    resting.presence = Presence.OFFLINE
    staying.capacity = 2
    rows = [
        RowChanges(
            label="Agents",
            saved=[(leaving, ["is_active"]), (resting, ["presence"]), (staying, ["capacity"])],
        )
    ]

    gone = save_record_with_presence(
        instance=tenant, fields=[], actor=admin_actor(owner), rows=rows
    )

    assert {agent.pk for agent in gone} == {leaving.pk, resting.pk}
    assert Membership.objects.for_tenant(tenant).get(pk=resting.pk).presence == Presence.OFFLINE


def test_someone_who_may_not_change_the_tenant_changes_nothing_not_even_presence(tenant, teammate):
    agent = MembershipFactory(tenant=tenant, presence=Presence.ONLINE)
    agent.presence = Presence.OFFLINE

    with pytest.raises(DomainError):
        save_record_with_presence(
            instance=agent, fields=["presence"], actor=Actor.for_membership(teammate, via="admin")
        )

    assert Membership.objects.for_tenant(tenant).get(pk=agent.pk).presence == Presence.ONLINE
    assert actions(agent) == []
