"""Presence guards the auto-away and presence API tests do not reach: a deactivated
agent coming online wakes no waiting work, racing tabs and racing changes write once,
the auto-away job passes over an agent being changed and leaves deactivated tenants be."""

import datetime
import threading
from datetime import timedelta

import pytest
import time_machine
from django.db import transaction

from audit.models import ActivityLog
from core.actor import Actor
from core.errors import InvalidInput
from teams.models import Membership, Presence, PresenceSource
from teams.services import mark_idle_agents_away, record_page_heartbeat, set_agent_presence
from teams.signals import agent_became_available
from tests.db_locks import in_thread, lock_waits
from tests.e2e.processes import wait_until
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db

T0 = datetime.datetime(2026, 11, 23, 9, 0, tzinfo=datetime.UTC)


def _set(agent, presence, source=PresenceSource.API):
    return set_agent_presence(
        membership=agent, presence=presence, actor=Actor.system(), source=source
    )


def _reload(agent) -> Membership:
    return Membership.objects.for_tenant(agent.tenant_id).get(pk=agent.pk)


def test_an_unknown_presence_is_refused_naming_status(teammate):
    with pytest.raises(InvalidInput) as refused:
        _set(teammate, "busy")

    assert refused.value.field == "status"
    assert _reload(teammate).presence != "busy"


def test_a_deactivated_agent_coming_online_wakes_no_waiting_work(tenant):
    agent = MembershipFactory(tenant=tenant, is_active=False, presence=Presence.OFFLINE)
    heard = []

    def listener(sender, agent_id, **kwargs):
        heard.append(agent_id)

    agent_became_available.connect(listener)
    try:
        _set(agent, Presence.ONLINE)
    finally:
        agent_became_available.disconnect(listener)

    assert heard == []


def test_a_heartbeat_from_a_tab_that_read_the_agent_earlier_writes_nothing(teammate):
    with time_machine.travel(T0, tick=False):
        record_page_heartbeat(membership=teammate)
    other_tab = _reload(teammate)
    with time_machine.travel(T0 + timedelta(seconds=40), tick=False):
        assert record_page_heartbeat(membership=teammate)
        assert not record_page_heartbeat(membership=other_tab)

    assert _reload(teammate).last_seen_at == T0 + timedelta(seconds=40)


def test_a_deactivated_tenants_idle_agents_are_left_as_they_are():
    active, closed = TenantFactory(auto_away_minutes=10), TenantFactory(auto_away_minutes=10)
    with time_machine.travel(T0, tick=False):
        agents = [MembershipFactory(tenant=t) for t in (active, closed)]
        for agent in agents:
            _set(agent, Presence.ONLINE, source=PresenceSource.PAGE)
    closed.is_active = False
    closed.save(update_fields=["is_active"])

    with time_machine.travel(T0 + timedelta(minutes=11), tick=False):
        assert mark_idle_agents_away() == 1

    assert [_reload(a).presence for a in agents] == [Presence.AWAY, Presence.ONLINE]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_presence_changes_at_once_record_one_change(teammate):
    changed, release, errors = threading.Event(), threading.Event(), []

    def first_change():
        try:
            with transaction.atomic():
                _set(teammate, Presence.AWAY)
                changed.set()
                release.wait(10)
        finally:
            changed.set()

    first = in_thread(first_change, errors)
    changed.wait(10)
    second = in_thread(lambda: _set(teammate, Presence.AWAY), errors)
    try:
        wait_until(lambda: lock_waits() > 0, timeout=10, what="the second change waits")
    finally:
        release.set()
        first.join(10)
        second.join(10)

    assert errors == []
    rows = ActivityLog.objects.for_tenant(teammate.tenant).filter(action="membership.away")
    assert rows.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_auto_away_job_passes_over_an_agent_being_changed_instead_of_waiting(tenant):
    with time_machine.travel(T0, tick=False):
        busy, idle = MembershipFactory(tenant=tenant), MembershipFactory(tenant=tenant)
        for agent in (busy, idle):
            _set(agent, Presence.ONLINE, source=PresenceSource.PAGE)
    holding, release, errors = threading.Event(), threading.Event(), []

    def hold_the_agent():
        try:
            with transaction.atomic():
                Membership.all_tenants.select_for_update().get(pk=busy.pk)
                holding.set()
                release.wait(10)
        finally:
            holding.set()

    holder = in_thread(hold_the_agent, errors)
    holding.wait(10)
    marked = []

    def sweep():
        with time_machine.travel(T0 + timedelta(minutes=30), tick=False):
            marked.append(mark_idle_agents_away())

    sweeper = in_thread(sweep, errors)
    try:
        sweeper.join(5)
        assert not sweeper.is_alive(), "the job waited for an agent being changed"
    finally:
        release.set()
        holder.join(10)
        sweeper.join(10)

    assert errors == []
    assert marked == [1]
    assert (_reload(busy).presence, _reload(idle).presence) == (Presence.ONLINE, Presence.AWAY)
