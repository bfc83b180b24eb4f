"""Issue #10 for a lead the engine gives to another agent (the SLA sweep's automatic
reassignment, the admin's "Redistribute"): the pick locks nothing; the reassignment
(which locks both agents in primary-key order) is written first and the pool's
round-robin cursor is moved last, so the cursor is locked from that statement to COMMIT
alone. A cursor another pick moved in between undoes the reassignment and picks again,
so round robin stays exactly fair. On PostgreSQL, with real threads where it is about
concurrency."""

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from core.actor import Actor
from core.errors import Conflict
from leads import services as lead_services
from leads.models import (
    Lead,
    LeadReassignment,
    Notification,
    NotificationKind,
    ReassignmentReason,
)
from leads.services import create_lead, reassign_by_engine
from teams.models import Membership, Role, RoundRobinCursor
from tests.factories import MembershipFactory, TeamFactory, TeamMemberFactory
from tests.leads.factories import LeadFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

SYSTEM = Actor.system()


def team_of(tenant, size: int):
    team = TeamFactory(tenant=tenant, name="Takers")
    agents = [MembershipFactory(tenant=tenant, role=Role.MEMBER) for _ in range(size)]
    for agent in agents:
        TeamMemberFactory(tenant=tenant, team=team, membership=agent)
    # The pool has been used before (its first pick ever creates its cursor).
    RoundRobinCursor.objects.for_tenant(tenant).create(pool_key=f"leads:team:{team.pk}")
    return team, sorted(agents, key=lambda agent: agent.pk)


def held_lead(tenant, team, holder) -> Lead:
    lead = LeadFactory(tenant=tenant, team=team, assigned_agent=holder)
    Membership.objects.for_tenant(tenant).filter(pk=holder.pk).update(
        current_lead_count=Lead.all_tenants.filter(assigned_agent=holder).count()
    )
    return lead


def move(tenant, lead_id):
    """As the sweep and the redistribution do: lock the lead, then reassign it."""
    with transaction.atomic():
        lead = Lead.objects.for_tenant(tenant).select_for_update().get(pk=lead_id)
        return reassign_by_engine(
            tenant=tenant,
            lead=lead,
            reason=ReassignmentReason.MANUAL,
            actor=SYSTEM,
            reassigned_by=None,
            notes="moved",
        )


def cursor_agent(tenant, team):
    return (
        RoundRobinCursor.objects.for_tenant(tenant)
        .get(pool_key=f"leads:team:{team.pk}")
        .last_agent_id
    )


def before_the_first_try(monkeypatch, action, *, on_try: int = 1) -> list:
    """Before the first try's reassignment is written (or try number `on_try`'s),
    `action` runs on another connection (a thread of its own) and commits. The list
    holds the agent each try gave the lead to."""
    reassign = lead_services._reassign_lead
    calls = []

    def action_first(**kwargs):
        calls.append(kwargs["to_agent_id"])
        if len(calls) == on_try:

            def run():
                try:
                    action()
                finally:
                    connection.close()

            other = threading.Thread(target=run)
            other.start()
            other.join(timeout=10)
            assert not other.is_alive()
        return reassign(**kwargs)

    monkeypatch.setattr(lead_services, "_reassign_lead", action_first)
    return calls


def a_new_lead_before_the_first_try(monkeypatch, tenant, team) -> list:
    """`before_the_first_try`: a new lead of `team` is routed."""
    return before_the_first_try(
        monkeypatch,
        lambda: create_lead(tenant=tenant, actor=SYSTEM, name="New", team_id=team.pk),
    )


@pytest.mark.parametrize("first_pick_ever", [False, True])
def test_the_cursor_is_moved_by_the_last_statement_and_the_pick_locks_nothing(
    tenant, first_pick_ever
):
    """A team no lead was ever routed to has no cursor (`first_pick_ever`): the pick
    that reads none makes it, and the reassignment still moves it by the last
    statement."""
    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    team, agents = team_of(tenant, 3)
    if first_pick_ever:
        RoundRobinCursor.objects.for_tenant(tenant).all().delete()
    lead = held_lead(tenant, team, holder)

    with CaptureQueriesContext(connection) as captured:
        decision, result = move(tenant, lead.pk)

    statements = [q["sql"] for q in captured.captured_queries]
    moves = [n for n, sql in enumerate(statements) if "UPDATE teams_roundrobincursor AS c" in sql]
    assert len(moves) == 1, statements
    assert [sql.split(" ")[0] for sql in statements[moves[0] + 1 :]] == ["RELEASE", "COMMIT"]
    picks = [sql for sql in statements if "routing_lock" in sql]
    assert picks and not any("FOR UPDATE" in sql for sql in picks)
    assert result.lead.assigned_agent_id == decision.agent.pk == agents[0].pk
    cursor = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key=f"leads:team:{team.pk}")
    assert (cursor.last_agent_id, cursor.position) == (agents[0].pk, 1)
    assert LeadReassignment.all_tenants.filter(lead=lead).count() == 1
    # The next lead of the team goes on from there.
    new = create_lead(tenant=tenant, actor=SYSTEM, name="Next", team_id=team.pk)
    assert new.assigned_agent_id == agents[1].pk


def test_a_cursor_moved_in_between_undoes_the_reassignment_and_picks_again(tenant, monkeypatch):
    """Another connection routes a new lead of the team after this pick read the cursor:
    this reassignment is undone and goes to the agent after the new lead's."""
    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    team, agents = team_of(tenant, 3)
    lead = held_lead(tenant, team, holder)
    calls = a_new_lead_before_the_first_try(monkeypatch, tenant, team)

    _decision, result = move(tenant, lead.pk)

    assert calls == [agents[0].pk, agents[1].pk]  # the new lead took agents[0]
    assert result.lead.assigned_agent_id == agents[1].pk
    assert cursor_agent(tenant, team) == agents[1].pk
    assert LeadReassignment.all_tenants.filter(lead=lead).count() == 1  # the undone one is gone
    counts = dict(Membership.objects.for_tenant(tenant).values_list("pk", "current_lead_count"))
    assert (counts[holder.pk], counts[agents[0].pk], counts[agents[1].pk]) == (0, 1, 1)


def test_when_the_cursor_keeps_moving_the_pick_locks_it_at_last(tenant, monkeypatch):
    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    team, agents = team_of(tenant, 3)
    lead = held_lead(tenant, team, holder)
    monkeypatch.setattr(lead_services, "advance_cursor", lambda **kwargs: False)

    with CaptureQueriesContext(connection) as captured:
        _decision, result = move(tenant, lead.pk)

    locking = [q["sql"] for q in captured.captured_queries if "routing_lock" in q["sql"]]
    assert len(locking) == lead_services.CURSOR_TRIES + 1
    assert "FOR UPDATE" in locking[-1]
    assert result.lead.assigned_agent_id == agents[0].pk
    assert LeadReassignment.all_tenants.filter(lead=lead).count() == 1
    assert cursor_agent(tenant, team) == agents[0].pk


def test_nobody_to_take_it_leaves_the_lead_and_the_cursor_alone(tenant):
    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    team, agents = team_of(tenant, 1)
    Membership.objects.for_tenant(tenant).filter(pk=agents[0].pk).update(presence="away")
    lead = held_lead(tenant, team, holder)

    decision, result = move(tenant, lead.pk)

    assert (decision.agent, result) == (None, None)
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id == holder.pk
    assert (
        not RoundRobinCursor.objects.for_tenant(tenant)
        .filter(pool_key=f"leads:team:{team.pk}", last_agent_id__isnull=False)
        .exists()
    )


@pytest.mark.parametrize(
    "what_happens", ["another team's lead fills it", "it goes away", "it is deactivated"]
)
def test_an_agent_that_lost_its_room_before_the_write_is_not_given_the_lead(
    tenant, monkeypatch, what_happens
):
    """The pick chose an agent of two teams (room for one lead) without locking it; a
    pick of the other team fills it, or it goes away or is deactivated, before the
    reassignment locks its row. The cursor did not move: only the locked row tells. The
    reassignment is undone and goes to the next agent."""
    from teams.models import Presence

    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    team, (first, second) = team_of(tenant, 2)
    other_team = TeamFactory(tenant=tenant, name="Other")
    TeamMemberFactory(tenant=tenant, team=other_team, membership=first)
    Membership.objects.for_tenant(tenant).filter(pk=first.pk).update(capacity=1)
    lead = held_lead(tenant, team, holder)
    changes = {
        "it goes away": {"presence": Presence.AWAY},
        "it is deactivated": {"is_active": False},
    }
    if what_happens in changes:
        agents = Membership.objects.for_tenant(tenant).filter(pk=first.pk)
        calls = before_the_first_try(monkeypatch, lambda: agents.update(**changes[what_happens]))
    else:
        calls = a_new_lead_before_the_first_try(monkeypatch, tenant, other_team)

    _decision, result = move(tenant, lead.pk)

    assert calls == [first.pk, second.pk]
    assert result.lead.assigned_agent_id == second.pk
    assert cursor_agent(tenant, team) == second.pk
    assert LeadReassignment.all_tenants.filter(lead=lead).count() == 1
    counts = dict(Membership.objects.for_tenant(tenant).values_list("pk", "current_lead_count"))
    expected_first = 1 if what_happens == "another team's lead fills it" else 0
    assert (counts[first.pk], counts[second.pk], counts[holder.pk]) == (expected_first, 1, 0)
    # Told to the agent who got it, and to nobody else.
    told = Notification.all_tenants.filter(lead=lead, kind=NotificationKind.LEAD_REASSIGNED)
    assert list(told.values_list("recipient_id", flat=True)) == [second.pk]


def test_agents_that_keep_losing_their_room_end_in_a_conflict_with_nothing_written(
    tenant, monkeypatch
):
    """Every pick's agent lost its room by the time its row was locked: CURSOR_TRIES
    picks that lock nothing, then ROOM_TRIES that lock the cursor; the caller's
    transaction goes on with nothing of it left (the cursor where it was)."""
    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    team, _agents = team_of(tenant, 2)
    lead = held_lead(tenant, team, holder)
    monkeypatch.setattr(lead_services, "_has_room", lambda agent: False)
    pool_key = f"leads:team:{team.pk}"
    cursor_before = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key=pool_key)

    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        locked = Lead.objects.for_tenant(tenant).select_for_update().get(pk=lead.pk)
        with pytest.raises(Conflict) as refused:
            reassign_by_engine(
                tenant=tenant,
                lead=locked,
                reason=ReassignmentReason.MANUAL,
                actor=SYSTEM,
                reassigned_by=None,
            )
        # Still in the caller's transaction: what the tries wrote is gone already.
        cursor = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key=pool_key)
        assert (cursor.last_agent_id, cursor.position) == (
            cursor_before.last_agent_id,
            cursor_before.position,
        )
        assert Lead.objects.for_tenant(tenant).get(pk=lead.pk).assigned_agent_id == holder.pk
        assert not LeadReassignment.all_tenants.filter(lead=lead).exists()
        counts = dict(Membership.objects.for_tenant(tenant).values_list("pk", "current_lead_count"))
        assert [counts[agent.pk] for agent in _agents] == [0, 0]

    assert refused.value.code == "agents_kept_filling"
    picks = [q["sql"] for q in captured.captured_queries if "routing_lock" in q["sql"]]
    tries = lead_services.CURSOR_TRIES + lead_services.ROOM_TRIES
    assert len(picks) == tries
    assert ["FOR UPDATE" in sql for sql in picks] == [False] * lead_services.CURSOR_TRIES + [
        True
    ] * lead_services.ROOM_TRIES


def test_an_agent_filled_while_the_pick_waits_for_the_cursor_is_picked_again_under_it(
    tenant, monkeypatch
):
    """Once the pick locks the cursor, an agent that lost its room is picked again
    without letting the cursor go: no pick of this pool can come in between."""
    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    team, (first, second) = team_of(tenant, 2)
    lead = held_lead(tenant, team, holder)
    monkeypatch.setattr(lead_services, "advance_cursor", lambda **kwargs: False)
    seen = []

    def full_the_first_time(agent):
        seen.append(agent.pk)
        return len(seen) > lead_services.CURSOR_TRIES + 1

    monkeypatch.setattr(lead_services, "_has_room", full_the_first_time)

    with CaptureQueriesContext(connection) as captured:
        _decision, result = move(tenant, lead.pk)

    statements = [q["sql"] for q in captured.captured_queries]
    locking = [
        n for n, sql in enumerate(statements) if "routing_lock" in sql and "FOR UPDATE" in sql
    ]
    assert len(locking) == 2
    # The cursor's lock is not given back between the two: the one rollback between
    # them goes to a savepoint made after the first (the undone reassignment's own).
    between = statements[locking[0] : locking[1]]
    rollbacks = [sql.split()[-1] for sql in between if sql.startswith("ROLLBACK TO SAVEPOINT")]
    made_after = [sql.split()[-1] for sql in between if sql.startswith("SAVEPOINT")]
    assert len(rollbacks) == 1 and rollbacks[0] in made_after, between
    assert result.lead.assigned_agent_id == second.pk  # the cursor moved past `first`
    assert LeadReassignment.all_tenants.filter(lead=lead).count() == 1
    counts = dict(Membership.objects.for_tenant(tenant).values_list("pk", "current_lead_count"))
    assert (counts[holder.pk], counts[first.pk], counts[second.pk]) == (0, 0, 1)


def test_nobody_left_under_the_cursors_lock_leaves_the_cursor_as_it_was(tenant, monkeypatch):
    """The pick that locks the cursor chose the team's one agent, which went away before
    its row was locked; picked again, nobody is left. The cursor's move to that agent
    and its lock are undone, as a pick that finds nobody leaves them."""
    from teams.models import Presence

    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    team, (only,) = team_of(tenant, 1)
    lead = held_lead(tenant, team, holder)
    monkeypatch.setattr(lead_services, "advance_cursor", lambda **kwargs: False)
    agents = Membership.objects.for_tenant(tenant).filter(pk=only.pk)
    calls = before_the_first_try(
        monkeypatch,
        lambda: agents.update(presence=Presence.AWAY),
        on_try=lead_services.CURSOR_TRIES + 1,
    )
    pool_key = f"leads:team:{team.pk}"
    before = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key=pool_key)

    decision, result = move(tenant, lead.pk)

    assert calls == [only.pk] * (lead_services.CURSOR_TRIES + 1)
    assert (decision.agent, result) == (None, None)
    cursor = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key=pool_key)
    assert (cursor.last_agent_id, cursor.position) == (before.last_agent_id, before.position)
    assert Lead.all_tenants.get(pk=lead.pk).assigned_agent_id == holder.pk
    assert not LeadReassignment.all_tenants.filter(lead=lead).exists()


def test_a_lead_without_a_team_goes_down_the_role_waterfall(tenant):
    """No team: the tenant's waterfall's pools (members first), the holder left out."""
    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    members = sorted(
        (MembershipFactory(tenant=tenant, role=Role.MEMBER) for _ in range(2)),
        key=lambda agent: agent.pk,
    )
    lead = held_lead(tenant, None, holder)
    RoundRobinCursor.objects.for_tenant(tenant).create(
        pool_key="leads:tier:member", last_agent_id=members[0].pk, position=4
    )

    with CaptureQueriesContext(connection) as captured:
        decision, result = move(tenant, lead.pk)

    picks = [q["sql"] for q in captured.captured_queries if "routing_lock" in q["sql"]]
    assert len(picks) == 1 and "FOR UPDATE" not in picks[0]  # moved at the first try
    assert (decision.tier, decision.team) == ("member", None)
    assert result.lead.assigned_agent_id == members[1].pk  # after the cursor's agent
    assert result.lead.team_id is None
    cursor = RoundRobinCursor.objects.for_tenant(tenant).get(pool_key="leads:tier:member")
    assert (cursor.last_agent_id, cursor.position) == (members[1].pk, 5)
    counts = dict(Membership.objects.for_tenant(tenant).values_list("pk", "current_lead_count"))
    assert (counts[holder.pk], counts[members[0].pk], counts[members[1].pk]) == (0, 0, 1)


def test_sixteen_moves_and_new_leads_at_once_stay_exactly_fair(tenant):
    holders = [MembershipFactory(tenant=tenant, role=Role.MEMBER) for _ in range(4)]
    team, agents = team_of(tenant, 5)
    leads = [held_lead(tenant, team, holders[n % 4]) for n in range(40)]

    def work(n: int):
        try:
            if n < 40:
                return move(tenant, leads[n].pk)[0].agent.pk
            return create_lead(
                tenant=tenant, actor=SYSTEM, name=f"N{n}", team_id=team.pk
            ).assigned_agent_id
        finally:
            connection.close()

    with ThreadPoolExecutor(16) as pool:
        given = list(pool.map(work, range(60)))

    per_agent = Counter(given)
    assert sorted(per_agent[agent.pk] for agent in agents) == [12] * 5
    counts = dict(Membership.objects.for_tenant(tenant).values_list("pk", "current_lead_count"))
    assert [counts[holder.pk] for holder in holders] == [0] * 4
    assert [counts[agent.pk] for agent in agents] == [12] * 5
    assert LeadReassignment.all_tenants.filter(lead__in=leads).count() == 40


def test_a_pick_in_between_that_chose_the_same_agent_is_caught(tenant, monkeypatch):
    """Least busy: the reassignment reads an empty agent with room for one lead; before
    it moves the cursor, a new lead of the team takes that agent (the cursor stays on
    the same agent, one pick further). The reassignment is undone and goes to the other
    agent: the first one is not given two leads against a capacity of one."""
    from teams.models import AssignmentConfig, Strategy

    holder = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    team, (first, second) = team_of(tenant, 2)
    AssignmentConfig.objects.for_tenant(tenant).create(team=team, strategy=Strategy.LEAST_BUSY)
    Membership.objects.for_tenant(tenant).filter(pk=first.pk).update(capacity=1)
    Membership.objects.for_tenant(tenant).filter(pk=second.pk).update(current_lead_count=1)
    RoundRobinCursor.objects.for_tenant(tenant).filter(pool_key=f"leads:team:{team.pk}").update(
        last_agent_id=first.pk
    )
    lead = held_lead(tenant, team, holder)
    calls = a_new_lead_before_the_first_try(monkeypatch, tenant, team)

    _decision, result = move(tenant, lead.pk)

    assert calls == [first.pk, second.pk]
    assert result.lead.assigned_agent_id == second.pk
    counts = dict(Membership.objects.for_tenant(tenant).values_list("pk", "current_lead_count"))
    assert counts[first.pk] == 1  # its capacity
    assert counts[second.pk] == 2
