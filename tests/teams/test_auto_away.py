"""Presence that follows the agent pages: heartbeats keep it, silence makes it away,
logging out makes it offline. Presence set by an admin or the API never lapses."""

import datetime
from datetime import timedelta

import pytest
import time_machine

from audit.models import ActivityLog
from core.actor import Actor
from teams.models import Membership, Presence, PresenceSource
from teams.services import (
    go_offline_after_logout,
    mark_idle_agents_away,
    record_page_heartbeat,
    set_agent_presence,
)
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db

T0 = datetime.datetime(2026, 11, 23, 9, 0, tzinfo=datetime.UTC)


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        yield traveller


def set_by(agent, source, presence=Presence.ONLINE):
    return set_agent_presence(
        membership=agent,
        presence=presence,
        actor=Actor.for_membership(agent, via="agent_page")
        if source == PresenceSource.PAGE
        else Actor.system(),
        source=source,
    )


def reload(agent) -> Membership:
    return Membership.objects.for_tenant(agent.tenant_id).get(pk=agent.pk)


def test_a_heartbeat_writes_at_most_once_per_30_seconds(teammate, clock, django_assert_num_queries):
    assert record_page_heartbeat(membership=teammate)
    clock.move_to(T0 + timedelta(seconds=29))
    with django_assert_num_queries(0):
        assert not record_page_heartbeat(membership=teammate)
    stale = reload(teammate)
    clock.move_to(T0 + timedelta(seconds=30))
    assert record_page_heartbeat(membership=stale)
    assert not record_page_heartbeat(membership=reload(teammate))  # racing tab: no write

    assert reload(teammate).last_seen_at == T0 + timedelta(seconds=30)
    assert reload(teammate).presence == Presence.ONLINE


def test_silent_pages_make_the_agent_away_after_the_tenants_minutes(tenant, teammate, clock):
    set_by(teammate, PresenceSource.PAGE)
    clock.move_to(T0 + timedelta(minutes=10))
    assert mark_idle_agents_away() == 0  # exactly 10 minutes: not yet

    clock.move_to(T0 + timedelta(minutes=10, seconds=1))
    assert mark_idle_agents_away() == 1

    agent = reload(teammate)
    assert agent.presence == Presence.AWAY
    assert agent.presence_changed_at == T0 + timedelta(minutes=10, seconds=1)
    [row] = ActivityLog.objects.for_tenant(tenant).filter(action="membership.away")
    assert row.via == "job:mark_idle_agents_away"
    assert row.data["from"] == "online" and row.data["why"] == "auto_away"


def test_heartbeats_keep_the_agent_online(teammate, clock):
    set_by(teammate, PresenceSource.PAGE)
    for minute in range(1, 30):
        clock.move_to(T0 + timedelta(minutes=minute))
        record_page_heartbeat(membership=reload(teammate))
        mark_idle_agents_away()

    assert reload(teammate).presence == Presence.ONLINE


@pytest.mark.parametrize("source", [PresenceSource.ADMIN, PresenceSource.API])
def test_presence_set_by_an_admin_or_the_api_never_lapses(source, teammate, clock):
    set_by(teammate, PresenceSource.PAGE)
    set_by(teammate, source)  # the same status, now in their hands

    clock.move_to(T0 + timedelta(days=2))
    assert mark_idle_agents_away() == 0
    assert reload(teammate).presence == Presence.ONLINE


def test_each_tenant_has_its_own_minutes(clock):
    patient = MembershipFactory(tenant=TenantFactory(auto_away_minutes=60))
    strict = MembershipFactory(tenant=TenantFactory(auto_away_minutes=2))
    for agent in (patient, strict):
        set_by(agent, PresenceSource.PAGE)

    clock.move_to(T0 + timedelta(minutes=5))
    mark_idle_agents_away()

    assert (reload(patient).presence, reload(strict).presence) == (Presence.ONLINE, Presence.AWAY)


def test_marking_costs_the_same_statements_for_one_or_many(
    tenant, clock, django_assert_max_num_queries
):
    def idle_agents(n):
        for _ in range(n):
            set_by(MembershipFactory(tenant=tenant), PresenceSource.PAGE)

    idle_agents(1)
    clock.move_to(T0 + timedelta(minutes=11))
    with django_assert_max_num_queries(6) as one:
        assert mark_idle_agents_away() == 1
    clock.move_to(T0)
    idle_agents(40)
    clock.move_to(T0 + timedelta(minutes=11))
    with django_assert_max_num_queries(len(one.captured_queries)):
        assert mark_idle_agents_away() == 40


def test_logging_out_makes_page_presence_offline_in_every_tenant(teammate, clock):
    elsewhere = MembershipFactory(user=teammate.user)
    api_managed = MembershipFactory(user=teammate.user)
    set_by(teammate, PresenceSource.PAGE)
    set_by(elsewhere, PresenceSource.PAGE, presence=Presence.AWAY)
    set_by(api_managed, PresenceSource.API)

    changed = go_offline_after_logout(user=teammate.user)

    assert {agent.pk for agent in changed} == {teammate.pk, elsewhere.pk}
    assert reload(teammate).presence == Presence.OFFLINE
    assert reload(elsewhere).presence == Presence.OFFLINE
    assert reload(api_managed).presence == Presence.ONLINE
    row = ActivityLog.objects.for_tenant(teammate.tenant).get(action="membership.offline")
    assert (row.actor_label, row.via) == (teammate.user.email, "agent_page")
    assert go_offline_after_logout(user=teammate.user) == []
