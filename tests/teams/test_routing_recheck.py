"""The pick's re-check on the newest row version (teams.routing.picking): an agent that
another transaction changes after the pick statement's snapshot was taken (goes away,
is deactivated, fills up, gets busier) is not written as picked; the pick runs again
and finds the next agent. On PostgreSQL, with a real second transaction that holds the
agent's row until the pick waits for it."""

import threading
import time

import pytest
from django.db import connection, transaction
from django.utils import timezone

from teams.models import Membership, Presence, RoundRobinCursor, Strategy
from teams.routing import route
from tests.db_locks import lock_waits
from tests.factories import AssignmentConfigFactory, TeamFactory, TeamMemberFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _team_of_two(tenant, strategy=Strategy.ROUND_ROBIN, **membership):
    """A team of two agents (first: the lower id, whom the pick finds first) whose pool
    cursor exists already (so the pick's first statement is the one that races)."""
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=strategy)
    agents = [
        TeamMemberFactory(team=team, **{f"membership__{k}": v for k, v in membership.items()})
        for _ in range(2)
    ]
    first, second = sorted((m.membership for m in agents), key=lambda agent: str(agent.pk))
    for work in ("sessions", "leads"):
        RoundRobinCursor.objects.for_tenant(tenant).create(pool_key=f"{work}:team:{team.pk}")
    return team, first, second


def _pick_while_another_transaction_changes(tenant, team, agent, work="sessions", **change):
    """Route while another transaction holds `agent`'s row with `change` made: it commits
    once the pick waits for that row (the pick's snapshot still has the old values)."""
    changed, release = threading.Event(), threading.Event()

    def change_and_hold():
        try:
            with transaction.atomic():
                Membership.objects.for_tenant(tenant).filter(pk=agent.pk).update(**change)
                changed.set()
                release.wait(10)
        finally:
            connection.close()

    def release_when_the_pick_waits():
        try:
            deadline = time.monotonic() + 10
            while not lock_waits() and time.monotonic() < deadline:
                time.sleep(0.01)
            release.set()
        finally:
            connection.close()

    holder = threading.Thread(target=change_and_hold)
    holder.start()
    assert changed.wait(10)
    watcher = threading.Thread(target=release_when_the_pick_waits)
    watcher.start()
    try:
        decision = route(tenant=tenant, team=team, work=work, count=True)
    finally:
        release.set()
        watcher.join(10)
        holder.join(10)
    return decision


def _load(agent, counter="open_session_count"):
    agent.refresh_from_db()
    return getattr(agent, counter)


def test_an_agent_who_goes_away_while_being_picked_is_not_given_the_work(tenant):
    team, first, second = _team_of_two(tenant)

    decision = _pick_while_another_transaction_changes(tenant, team, first, presence=Presence.AWAY)

    assert decision.agent == second
    assert (_load(first), _load(second)) == (0, 1)


def test_an_agent_deactivated_while_being_picked_is_not_given_the_work(tenant):
    team, first, second = _team_of_two(tenant)

    decision = _pick_while_another_transaction_changes(tenant, team, first, is_active=False)

    assert decision.agent == second
    assert (_load(first), _load(second)) == (0, 1)


def test_an_agent_filled_up_while_being_picked_is_not_given_more_than_capacity(tenant):
    team, first, second = _team_of_two(tenant, capacity=1)

    decision = _pick_while_another_transaction_changes(tenant, team, first, open_session_count=1)

    assert decision.agent == second
    assert _load(first) == 1, "at capacity, not above it"


def test_a_lead_agent_filled_up_while_being_picked_is_not_given_more_leads(tenant):
    """Leads are measured by `current_lead_count` in the re-check as well."""
    team, first, second = _team_of_two(tenant, capacity=1)

    decision = _pick_while_another_transaction_changes(
        tenant, team, first, work="leads", current_lead_count=1
    )

    assert decision.agent == second
    assert _load(first, "current_lead_count") == 1


def test_least_busy_does_not_pick_an_agent_who_got_busier_meanwhile(tenant):
    """No capacity is reached: only the load moved. The agent is no longer the least busy
    one, so the pick runs again and takes the other."""
    team, first, second = _team_of_two(tenant, strategy=Strategy.LEAST_BUSY)

    decision = _pick_while_another_transaction_changes(tenant, team, first, open_session_count=3)

    assert decision.agent == second
    assert (_load(first), _load(second)) == (3, 1)


def test_least_busy_does_not_pick_an_agent_assigned_meanwhile(tenant):
    """Same load, but the agent was just given work elsewhere (stamped): the other one,
    never assigned, has waited longer."""
    team, first, second = _team_of_two(tenant, strategy=Strategy.LEAST_BUSY)

    decision = _pick_while_another_transaction_changes(
        tenant, team, first, last_assigned_at=timezone.now()
    )

    assert decision.agent == second
    assert _load(second) == 1
