"""Routing rules that each need a test of their own (teams.routing): the counter that
measures capacity per kind of work, least busy inside a role tier and a tenant, the
pick's options (`count`, `lock_agents`, `dry_run`, `only_if`), and the pool's cursor
made by its first pick. Called directly, as tests/teams/test_routing.py does."""

from contextlib import nullcontext

import pytest
from django.db import transaction

from teams.models import Membership, Role, RoundRobinCursor, Strategy
from teams.routing import PickRefused, advance_cursor, route
from tests.factories import AssignmentConfigFactory, MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db


def set_counters(agent, **counters):
    Membership.objects.for_tenant(agent.tenant_id).filter(pk=agent.pk).update(**counters)


def counters(agent):
    agent.refresh_from_db()
    return agent.open_session_count, agent.current_lead_count


def test_leads_fill_an_agent_by_open_leads_and_sessions_by_open_sessions(tenant):
    """Capacity is per kind of work: an agent full of chats still takes leads, and an
    agent full of leads still takes chats."""
    full_of_chats = MembershipFactory(tenant=tenant, capacity=1)
    full_of_leads = MembershipFactory(tenant=tenant, capacity=1)
    set_counters(full_of_chats, open_session_count=1)
    set_counters(full_of_leads, current_lead_count=1)

    leads = {route(tenant=tenant, team=None, work="leads").agent for _ in range(3)}
    sessions = {route(tenant=tenant, team=None, work="sessions").agent for _ in range(3)}

    assert leads == {full_of_chats}
    assert sessions == {full_of_leads}


def test_count_adds_the_work_to_the_counter_of_its_kind_only(tenant):
    agent = MembershipFactory(tenant=tenant)

    route(tenant=tenant, team=None, work="sessions", count=True)
    route(tenant=tenant, team=None, work="leads", count=True)
    route(tenant=tenant, team=None, work="leads", count=True)
    route(tenant=tenant, team=None, work="leads")  # not counted: the caller counts it

    assert counters(agent) == (1, 2)


def test_a_pick_without_locking_agents_neither_stamps_nor_counts_them(tenant):
    agent = MembershipFactory(tenant=tenant)

    decision = route(tenant=tenant, team=None, work="leads", lock_agents=False, count=True)

    assert decision.agent == agent
    agent.refresh_from_db()
    assert agent.last_assigned_at is None
    assert counters(agent) == (0, 0)


def test_a_pick_without_locking_agents_still_moves_the_round_robin(tenant):
    agents = sorted((MembershipFactory(tenant=tenant) for _ in range(2)), key=lambda a: str(a.pk))

    picks = [route(tenant=tenant, team=None, work="leads", lock_agents=False).agent for _ in "ab"]

    assert picks == agents


def test_a_dry_run_neither_counts_nor_makes_the_pools_cursor(tenant):
    agent = MembershipFactory(tenant=tenant)

    decision = route(tenant=tenant, team=None, work="sessions", dry_run=True, count=True)

    assert decision.agent == agent
    assert counters(agent) == (0, 0)
    assert not RoundRobinCursor.objects.for_tenant(tenant).exists()


def test_least_busy_tiers_pick_only_agents_with_the_tiers_role(tenant):
    """Least busy within the member tier: an idle admin does not jump the waterfall."""
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    member = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    idle_admin = MembershipFactory(tenant=tenant, role=Role.ADMIN)
    set_counters(member, open_session_count=5)

    decision = route(tenant=tenant, team=None, work="sessions")

    assert decision.agent == member
    assert decision.tier == "member"
    assert idle_admin.pk != decision.agent.pk


def test_least_busy_never_picks_an_idle_agent_of_another_tenant(tenant):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    ours = MembershipFactory(tenant=tenant)
    set_counters(ours, open_session_count=3)
    for _ in range(3):
        MembershipFactory(tenant=TenantFactory())  # idle, never assigned, other tenants

    picks = {route(tenant=tenant, team=None, work="sessions").agent for _ in range(3)}

    assert picks == {ours}


def test_round_robin_never_picks_an_agent_of_another_tenant(tenant):
    ours = MembershipFactory(tenant=tenant)
    for _ in range(3):
        MembershipFactory(tenant=TenantFactory())

    picks = {route(tenant=tenant, team=None, work="sessions").agent for _ in range(4)}

    assert picks == {ours}


def test_the_first_pick_of_a_pool_makes_its_cursor_and_wraps_round_from_there(tenant):
    agents = sorted((MembershipFactory(tenant=tenant) for _ in range(2)), key=lambda a: str(a.pk))

    picks = [route(tenant=tenant, team=None, work="sessions").agent for _ in range(3)]

    assert picks == [agents[0], agents[1], agents[0]]
    cursor = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key="sessions:tier:member")
    assert (cursor.last_agent_id, cursor.position) == (agents[0].pk, 3)


@pytest.mark.postgres
def test_a_pool_whose_first_pick_found_nobody_in_a_transaction_keeps_its_cursor(tenant):
    """The pick's savepoint is rolled back (nobody found), the cursor its first pick made
    is made again: the pool's next picks queue on it."""
    MembershipFactory(tenant=tenant, presence="away")

    with transaction.atomic():
        decision = route(tenant=tenant, team=None, work="sessions")

    assert decision.agent is None
    keys = set(RoundRobinCursor.objects.for_tenant(tenant).values_list("pool_key", flat=True))
    assert "sessions:tier:member" in keys


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_transaction", [False, True], ids=["alone", "in-a-transaction"])
def test_a_pick_whose_condition_does_not_hold_is_refused_and_writes_nothing(tenant, in_transaction):
    """Alone, the pick statement commits by itself: whatever it wrote would stay."""
    agent = MembershipFactory(tenant=tenant)
    route(tenant=tenant, team=None, work="sessions")  # the pool's cursor exists
    before = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key="sessions:tier:member")
    agent.refresh_from_db()
    stamped = agent.last_assigned_at

    with pytest.raises(PickRefused), transaction.atomic() if in_transaction else nullcontext():
        route(tenant=tenant, team=None, work="sessions", count=True, only_if=("%s = 1", [2]))

    after = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key="sessions:tier:member")
    assert after.position == before.position
    agent.refresh_from_db()
    assert agent.last_assigned_at == stamped
    assert counters(agent) == (0, 0)


@pytest.mark.postgres
def test_a_pick_whose_condition_holds_goes_ahead(tenant):
    agent = MembershipFactory(tenant=tenant)

    decision = route(tenant=tenant, team=None, work="sessions", count=True, only_if=("%s = 1", [1]))

    assert decision.agent == agent
    assert counters(agent) == (1, 0)


def test_a_dry_run_between_real_picks_does_not_move_the_rotation(tenant):
    agents = sorted((MembershipFactory(tenant=tenant) for _ in range(3)), key=lambda a: str(a.pk))
    assert route(tenant=tenant, team=None, work="sessions").agent == agents[0]

    dry = [route(tenant=tenant, team=None, work="sessions", dry_run=True).agent for _ in "ab"]
    real = route(tenant=tenant, team=None, work="sessions").agent

    assert dry == [agents[1], agents[1]]
    assert real == agents[1]
    cursor = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key="sessions:tier:member")
    assert cursor.position == 2


@pytest.mark.postgres
def test_a_deferred_pick_in_a_pools_first_use_moves_its_new_cursor_last(tenant):
    """`cursor_last`: the pick locks nothing and the caller moves the cursor as its last
    statement; in a pool never used before, the pick made the cursor to move."""
    agent = MembershipFactory(tenant=tenant)

    with transaction.atomic():
        decision = route(
            tenant=tenant, team=None, work="leads", lock_agents=False, cursor_last=True
        )
        assert decision.agent == agent
        assert advance_cursor(tenant=tenant, decision=decision)

    cursor = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key="leads:tier:member")
    assert (cursor.last_agent_id, cursor.position) == (agent.pk, 1)


@pytest.mark.postgres
def test_a_deferred_pick_whose_cursor_moved_meanwhile_is_told_to_route_again(tenant):
    MembershipFactory(tenant=tenant)
    MembershipFactory(tenant=tenant)
    route(tenant=tenant, team=None, work="leads")  # the pool's cursor exists

    deferred = route(tenant=tenant, team=None, work="leads", lock_agents=False, cursor_last=True)
    route(tenant=tenant, team=None, work="leads")  # another pick moves the cursor

    assert not advance_cursor(tenant=tenant, decision=deferred)
