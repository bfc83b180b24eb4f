"""The assignment engine (teams.routing), called directly with a load the test controls.

Covers the assignment steps 1-7 (README, "Assignment"): which config applies, the
waterfall and its default-team fallback, who counts as available, how each strategy
picks, schedules, and the reason code when nobody is picked.
"""

import datetime

import pytest
import time_machine

from teams.models import (
    DEFAULT_WATERFALL,
    Membership,
    Role,
    Strategy,
    Team,
    TeamHoliday,
    TeamOpeningHours,
)
from teams.routing import UnassignedReason, resolve_config, route
from teams.routing.schedules import schedule_is_open
from teams.routing.strategies import STRATEGIES, get_strategy
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    TeamScheduleFactory,
)

pytestmark = pytest.mark.django_db


def load_of(mapping):
    """Give agents open sessions: the engine reads each agent's `open_session_count`."""
    for agent, count in mapping.items():
        Membership.objects.for_tenant(agent.tenant_id).filter(pk=agent.pk).update(
            open_session_count=count
        )


def pick(tenant, team=None, **kwargs):
    kwargs.setdefault("work", "sessions")
    return route(tenant=tenant, team=team, **kwargs)


def tried(decision):
    """The tiers record as (tier, agents found, eligible or why skipped). The pool an agent
    was picked from is not counted (that would cost as much as the pool is large):
    ("member", None, None)."""
    return [
        (t["tier"], t.get("agents"), t.get("skipped", t.get("eligible"))) for t in decision.tiers
    ]


def picked_id(decision):
    assert decision.agent is not None, f"nobody picked: {decision.reason}"
    return decision.agent.pk


def fresh(team):
    """The team as a new request would load it (no cached config or schedule)."""
    return Team.all_tenants.get(pk=team.pk)


# --- Step 1: which config applies ------------------------------------------------------


def test_without_any_config_the_default_is_round_robin_over_the_default_waterfall(tenant):
    config = resolve_config(tenant=tenant, team=None)

    assert config.source == "default"
    assert config.strategy == "round_robin"
    assert config.is_enabled is True
    assert config.waterfall == ["team", "member", "admin", "super_admin"]

    MembershipFactory(tenant=tenant)
    decision = pick(tenant)
    assert decision.strategy == "round_robin"
    assert decision.config_source == "default"
    assert decision.as_record()["config"] == "default"


def test_tenant_config_applies_without_a_team(tenant):
    AssignmentConfigFactory(
        tenant=tenant, strategy=Strategy.LEAST_BUSY, settings={"waterfall": ["admin"]}
    )

    config = resolve_config(tenant=tenant, team=None)

    assert (config.source, config.strategy, config.waterfall) == ("tenant", "least_busy", ["admin"])


def test_team_without_its_own_config_uses_the_tenant_config(tenant):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=team)

    config = resolve_config(tenant=tenant, team=fresh(team))
    decision = pick(tenant, fresh(team))

    assert (config.source, config.strategy) == ("tenant", "least_busy")
    assert (decision.config_source, decision.strategy) == ("tenant", "least_busy")
    assert decision.assigned


def test_team_config_beats_the_tenant_config(tenant):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.MANUAL)
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=Strategy.LEAST_BUSY)
    agent = TeamMemberFactory(team=team).membership

    config = resolve_config(tenant=tenant, team=fresh(team))
    decision = pick(tenant, fresh(team))

    assert (config.source, config.strategy) == ("team", "least_busy")
    assert decision.config_source == "team"
    assert picked_id(decision) == agent.pk
    # Without the team, the tenant's manual config still rules.
    MembershipFactory(tenant=tenant)
    assert pick(tenant).reason == UnassignedReason.MANUAL_STRATEGY


def test_another_tenants_config_is_never_used(tenant, other_tenant):
    AssignmentConfigFactory(tenant=other_tenant, strategy=Strategy.MANUAL)
    MembershipFactory(tenant=tenant)

    assert resolve_config(tenant=tenant, team=None).source == "default"
    assert pick(tenant).assigned


def test_empty_or_malformed_waterfall_falls_back_to_the_default_waterfall(tenant):
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": []})
    assert resolve_config(tenant=tenant, team=None).waterfall == DEFAULT_WATERFALL


# --- Step 4: candidates from the waterfall ---------------------------------------------


def test_default_waterfall_prefers_members_and_records_the_tiers_it_tried(tenant):
    MembershipFactory(tenant=tenant, role=Role.ADMIN)
    members = [MembershipFactory(tenant=tenant, role=Role.MEMBER) for _ in range(2)]

    decision = pick(tenant)

    assert picked_id(decision) in {m.pk for m in members}
    assert decision.tier == "member"
    assert decision.team is None
    assert tried(decision) == [("team", 0, "no teamId"), ("member", None, None)]


def test_tiers_without_active_agents_are_passed_over(tenant):
    MembershipFactory(tenant=tenant, role=Role.MEMBER, is_active=False)
    MembershipFactory(tenant=tenant, role=Role.MEMBER, user__is_active=False)
    super_admin = MembershipFactory(tenant=tenant, role=Role.SUPER_ADMIN)

    decision = pick(tenant)

    assert picked_id(decision) == super_admin.pk
    assert decision.tier == "super_admin"
    assert tried(decision) == [
        ("team", 0, "no teamId"),
        ("member", 0, None),
        ("admin", 0, None),
        ("super_admin", None, None),
    ]


def test_custom_waterfall_order_picks_admins_before_members(tenant):
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["admin", "member"]})
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    admin = MembershipFactory(tenant=tenant, role=Role.ADMIN)

    decisions = [pick(tenant) for _ in range(3)]

    assert {picked_id(d) for d in decisions} == {admin.pk}
    assert decisions[0].tier == "admin"
    assert tried(decisions[0]) == [("admin", None, None)], "no team tier when it is omitted"


def test_waterfall_that_omits_a_role_never_picks_people_with_that_role(tenant):
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["team", "super_admin"]})
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    MembershipFactory(tenant=tenant, role=Role.ADMIN)

    decision = pick(tenant)

    assert decision.agent is None
    assert decision.reason == UnassignedReason.NO_AGENTS
    assert tried(decision) == [
        ("team", 0, "no teamId"),
        ("super_admin", 0, None),
        ("default_team", 0, "no default team"),
    ]


def test_default_team_is_the_fallback_when_no_tier_has_agents(tenant):
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["admin"]})
    MembershipFactory(tenant=tenant, role=Role.MEMBER, is_active=False)
    default_team = TeamFactory(tenant=tenant, is_default=True)
    fallback = TeamMemberFactory(team=default_team, membership__role=Role.MEMBER).membership
    TeamMemberFactory(team=default_team, membership__is_active=False)

    decision = pick(tenant)

    assert picked_id(decision) == fallback.pk
    assert decision.tier == "default_team"
    assert decision.team == default_team
    assert tried(decision) == [("admin", 0, None), ("default_team", None, None)]
    assert decision.tiers[-1]["teamId"] == str(default_team.pk)
    record = decision.as_record()
    assert (record["tier"], record["teamId"], record["outcome"]) == (
        "default_team",
        str(default_team.pk),
        "assigned",
    )


def test_default_team_is_the_fallback_when_every_tier_is_away(tenant):
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["member"]})
    MembershipFactory(tenant=tenant, role=Role.MEMBER, presence="away")
    default_team = TeamFactory(tenant=tenant, is_default=True)
    admin = TeamMemberFactory(team=default_team, membership__role=Role.ADMIN).membership

    decision = pick(tenant)

    assert picked_id(decision) == admin.pk
    assert tried(decision) == [("member", 1, 0), ("default_team", None, None)]


def test_default_team_is_not_used_while_a_tier_has_agents(tenant):
    member = MembershipFactory(tenant=tenant, role=Role.MEMBER)
    default_team = TeamFactory(tenant=tenant, is_default=True)
    TeamMemberFactory(team=default_team, membership__role=Role.ADMIN)

    decisions = [pick(tenant) for _ in range(3)]

    assert {picked_id(d) for d in decisions} == {member.pk}
    assert decisions[0].tier == "member"
    assert "default_team" not in [t["tier"] for t in decisions[0].tiers]


def test_empty_default_team_leaves_it_unassigned_with_no_agents(tenant):
    default_team = TeamFactory(tenant=tenant, is_default=True)

    decision = pick(tenant)

    assert decision.reason == UnassignedReason.NO_AGENTS
    assert decision.tier is None
    assert tried(decision)[-1] == ("default_team", 0, None)
    assert decision.tiers[-1]["teamId"] == str(default_team.pk)
    assert decision.as_record()["outcome"] == "unassigned"


def test_with_a_team_only_its_members_are_candidates_and_there_is_no_fallback(tenant):
    MembershipFactory(tenant=tenant, role=Role.MEMBER)
    default_team = TeamFactory(tenant=tenant, is_default=True)
    TeamMemberFactory(team=default_team)
    team = TeamFactory(tenant=tenant)
    in_team = TeamMemberFactory(team=team).membership

    picks = {picked_id(pick(tenant, fresh(team))) for _ in range(3)}
    assert picks == {in_team.pk}

    empty = TeamFactory(tenant=tenant)
    decision = pick(tenant, fresh(empty))
    assert decision.reason == UnassignedReason.NO_AGENTS
    assert tried(decision) == [("team", 0, None)], "no waterfall, no default team"


def test_agents_of_another_tenant_are_never_candidates(tenant, outsider):
    other_default = TeamFactory(tenant=outsider.tenant, is_default=True)
    TeamMemberFactory(team=other_default, membership=outsider)

    decision = pick(tenant)

    assert decision.agent is None
    assert decision.reason == UnassignedReason.NO_AGENTS
    assert all(t["agents"] == 0 for t in decision.tiers)


# --- Step 5: exclusions, availability and capacity -------------------------------------


def test_excluded_agents_are_never_picked(tenant):
    agents = [MembershipFactory(tenant=tenant) for _ in range(3)]
    keep = agents[1]
    excluded = [agents[0].pk, str(agents[2].pk)]  # ids as UUIDs or strings

    picks = {picked_id(pick(tenant, exclude_agent_ids=excluded)) for _ in range(4)}

    assert picks == {keep.pk}


def test_excluding_every_candidate_leaves_it_unassigned(tenant):
    agent = MembershipFactory(tenant=tenant)

    decision = pick(tenant, exclude_agent_ids=[agent.pk])

    assert decision.agent is None
    assert decision.reason == UnassignedReason.NO_AGENTS


def test_agent_at_capacity_is_skipped_by_the_load_passed_in(tenant):
    full = MembershipFactory(tenant=tenant, capacity=2)
    free = MembershipFactory(tenant=tenant, capacity=2)
    load_of({full: 2, free: 0})

    decisions = [pick(tenant) for _ in range(3)]

    assert {picked_id(d) for d in decisions} == {free.pk}


def test_agent_without_capacity_is_never_skipped_however_busy(tenant):
    unlimited = MembershipFactory(tenant=tenant, capacity=None)
    full = MembershipFactory(tenant=tenant, capacity=1)
    load_of({unlimited: 10_000, full: 1})

    assert {picked_id(pick(tenant)) for _ in range(3)} == {unlimited.pk}


def test_everyone_at_capacity_or_away_is_all_at_capacity(tenant):
    """Some away, the available ones full: capacity is what stops the work."""
    full = MembershipFactory(tenant=tenant, capacity=1)
    MembershipFactory(tenant=tenant, presence="away")

    load_of({full: 1})
    decision = pick(tenant)

    assert decision.agent is None
    assert decision.reason == UnassignedReason.ALL_AT_CAPACITY
    assert decision.available_agents == 0
    assert tried(decision) == [
        ("team", 0, "no teamId"),
        ("member", 2, 0),
        ("admin", 0, None),
        ("super_admin", 0, None),
        ("default_team", 0, "no default team"),
    ]
    assert decision.tiers[1]["available"] == 1


def test_everyone_available_at_capacity_is_all_at_capacity(tenant):
    first = MembershipFactory(tenant=tenant, capacity=1)
    second = MembershipFactory(tenant=tenant, role=Role.ADMIN, capacity=2)

    load_of({first: 1, second: 2})
    decision = pick(tenant)

    assert decision.agent is None
    assert decision.reason == UnassignedReason.ALL_AT_CAPACITY
    assert decision.as_record()["reason"] == "all_at_capacity"


def test_everyone_away_is_all_away_not_all_at_capacity(tenant):
    MembershipFactory(tenant=tenant, presence="away", capacity=5)
    MembershipFactory(tenant=tenant, role=Role.ADMIN, presence="away")

    decision = pick(tenant)

    assert decision.agent is None
    assert decision.reason == UnassignedReason.ALL_AWAY
    assert decision.as_record()["reason"] == "all_away"
    assert [(t["tier"], t.get("available")) for t in decision.tiers] == [
        ("team", None),
        ("member", 0),
        ("admin", 0),
        ("super_admin", None),
        ("default_team", None),
    ]


def test_a_team_whose_members_are_all_away_is_all_away(tenant):
    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=team, membership__presence="away")
    TeamMemberFactory(team=team, membership__presence="away", membership__capacity=1)

    decision = pick(tenant, team=fresh(team))

    assert decision.reason == UnassignedReason.ALL_AWAY


def test_away_in_one_tier_and_full_in_another_is_all_at_capacity(tenant):
    MembershipFactory(tenant=tenant, role=Role.MEMBER, presence="away")
    full_admin = MembershipFactory(tenant=tenant, role=Role.ADMIN, capacity=1)

    load_of({full_admin: 1})
    decision = pick(tenant)

    assert decision.reason == UnassignedReason.ALL_AT_CAPACITY


def test_tier_where_everyone_is_away_or_full_falls_through_to_the_next(tenant):
    MembershipFactory(tenant=tenant, role=Role.MEMBER, presence="away")
    full = MembershipFactory(tenant=tenant, role=Role.MEMBER, capacity=1)
    admin = MembershipFactory(tenant=tenant, role=Role.ADMIN, capacity=1)

    load_of({full: 1})
    decision = pick(tenant)

    assert picked_id(decision) == admin.pk
    assert decision.tier == "admin"
    assert tried(decision) == [("team", 0, "no teamId"), ("member", 2, 0), ("admin", None, None)]


def test_unavailable_agent_is_skipped(tenant):
    MembershipFactory(tenant=tenant, presence="away")
    present = MembershipFactory(tenant=tenant)

    assert {picked_id(pick(tenant)) for _ in range(3)} == {present.pk}


# --- Step 6: round robin ---------------------------------------------------------------


def test_round_robin_cycles_through_every_agent_in_a_fixed_order(tenant):
    agents = [MembershipFactory(tenant=tenant) for _ in range(3)]

    picks = [picked_id(pick(tenant)) for _ in range(6)]

    assert set(picks[:3]) == {a.pk for a in agents}
    assert picks[3:] == picks[:3]


def test_dry_run_does_not_advance_the_cursor_nor_stamp_the_agent(tenant):
    MembershipFactory(tenant=tenant)
    MembershipFactory(tenant=tenant)

    first_dry = pick(tenant, dry_run=True)
    second_dry = pick(tenant, dry_run=True)
    real = pick(tenant)
    next_real = pick(tenant)

    assert picked_id(first_dry) == picked_id(second_dry) == picked_id(real)
    assert picked_id(next_real) != picked_id(real)
    assert Membership.objects.for_tenant(tenant).get(pk=picked_id(first_dry)).last_assigned_at
    # The dry runs themselves stamped nobody: only the two real picks did.
    stamped = Membership.objects.for_tenant(tenant).filter(last_assigned_at__isnull=False)
    assert stamped.count() == 2


def test_dry_run_stamps_nobody(tenant):
    agent = MembershipFactory(tenant=tenant)

    decision = pick(tenant, dry_run=True)

    assert picked_id(decision) == agent.pk
    agent.refresh_from_db()
    assert agent.last_assigned_at is None
    assert decision.agent.last_assigned_at is None


def test_real_pick_stamps_last_assigned_at(tenant):
    agent = MembershipFactory(tenant=tenant)
    moment = datetime.datetime(2026, 3, 2, 10, 30, tzinfo=datetime.UTC)

    with time_machine.travel(moment, tick=False):
        decision = pick(tenant)

    agent.refresh_from_db()
    assert agent.last_assigned_at == moment
    assert decision.agent.last_assigned_at == moment


def test_round_robin_pools_are_separate_per_team(tenant):
    team_a, team_b = TeamFactory(tenant=tenant), TeamFactory(tenant=tenant)
    for _ in range(2):
        TeamMemberFactory(team=team_a)
        TeamMemberFactory(team=team_b)

    first_b = picked_id(pick(tenant, fresh(team_b), dry_run=True))
    a_picks = [picked_id(pick(tenant, fresh(team_a))) for _ in range(3)]

    assert a_picks[0] != a_picks[1], "team A advanced"
    assert picked_id(pick(tenant, fresh(team_b))) == first_b, "team B did not move"


def test_round_robin_pools_are_separate_per_tier(tenant):
    for _ in range(2):
        MembershipFactory(tenant=tenant, role=Role.MEMBER)
        MembershipFactory(tenant=tenant, role=Role.ADMIN)
    config = AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["admin"]})
    first_admin = picked_id(pick(tenant, dry_run=True))

    config.settings = {"waterfall": ["member"]}
    config.save()
    assert pick(tenant).tier == "member"
    assert pick(tenant).tier == "member"
    assert pick(tenant).tier == "member"

    config.settings = {"waterfall": ["admin"]}
    config.save()
    decision = pick(tenant)
    assert decision.tier == "admin"
    assert picked_id(decision) == first_admin, "three member picks did not move the admin pool"


def test_round_robin_pools_are_separate_per_tenant(tenant, other_tenant):
    MembershipFactory(tenant=tenant)
    MembershipFactory(tenant=tenant)
    MembershipFactory(tenant=other_tenant)
    MembershipFactory(tenant=other_tenant)
    first = picked_id(pick(tenant, dry_run=True))

    for _ in range(3):
        pick(other_tenant)

    assert picked_id(pick(tenant)) == first


# --- Step 6: least busy ----------------------------------------------------------------


def test_least_busy_picks_the_fewest_open_items(tenant):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    busy = MembershipFactory(tenant=tenant)
    idle = MembershipFactory(tenant=tenant)

    load_of({busy: 3, idle: 1})
    decision = pick(tenant)

    assert picked_id(decision) == idle.pk
    assert decision.strategy == "least_busy"


def test_least_busy_counts_an_agent_missing_from_the_load_as_zero(tenant):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    busy = MembershipFactory(tenant=tenant)
    unlisted = MembershipFactory(tenant=tenant)

    load_of({busy: 1})
    assert picked_id(pick(tenant)) == unlisted.pk


def test_least_busy_tie_goes_to_never_assigned_then_longest_idle_then_id(tenant):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    agents = [MembershipFactory(tenant=tenant) for _ in range(3)]
    recent, earlier, never = agents
    base = datetime.datetime(2020, 1, 6, 9, 0, tzinfo=datetime.UTC)
    Membership.objects.for_tenant(tenant).filter(pk=recent.pk).update(
        last_assigned_at=base + datetime.timedelta(minutes=5)
    )
    Membership.objects.for_tenant(tenant).filter(pk=earlier.pk).update(last_assigned_at=base)
    load_of({a: 1 for a in agents})

    assert picked_id(pick(tenant)) == never.pk
    # `never` is now the most recently assigned: `earlier` has waited longest.
    assert picked_id(pick(tenant)) == earlier.pk
    assert picked_id(pick(tenant)) == recent.pk


def test_least_busy_full_tie_goes_to_the_lowest_id(tenant):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    agents = [MembershipFactory(tenant=tenant) for _ in range(3)]
    lowest = min(agents, key=lambda a: str(a.pk))

    assert picked_id(pick(tenant, dry_run=True)) == lowest.pk


def test_least_busy_load_beats_idleness(tenant):
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.LEAST_BUSY)
    never_assigned = MembershipFactory(tenant=tenant)
    just_assigned = MembershipFactory(tenant=tenant)
    Membership.objects.for_tenant(tenant).filter(pk=just_assigned.pk).update(
        last_assigned_at=datetime.datetime(2020, 1, 6, tzinfo=datetime.UTC)
    )

    load_of({never_assigned: 2, just_assigned: 0})

    assert picked_id(pick(tenant)) == just_assigned.pk


# --- The strategy registry -------------------------------------------------------------


def test_strategy_registry_has_one_class_per_strategy(tenant):
    assert set(STRATEGIES) == {"round_robin", "least_busy", "manual"} == set(Strategy.values)
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name
        assert get_strategy(name) is strategy


def test_only_manual_never_picks(tenant):
    assert {name for name, strategy in STRATEGIES.items() if not strategy.picks} == {"manual"}


# --- Step 2 and 7: why nobody was picked -----------------------------------------------


def test_disabled_config_is_assignment_disabled(tenant):
    agent = MembershipFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, is_enabled=False)

    decision = pick(tenant)

    assert decision.agent is None
    assert decision.reason == "assignment_disabled"
    agent.refresh_from_db()
    assert agent.last_assigned_at is None


def test_disabled_team_config_is_assignment_disabled_for_that_team(tenant):
    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=team)
    AssignmentConfigFactory(tenant=tenant, team=team, is_enabled=False)

    decision = pick(tenant, fresh(team))

    assert decision.reason == "assignment_disabled"
    assert decision.config_source == "team"
    assert pick(tenant).assigned, "the tenant default still assigns without the team"


def test_manual_strategy_is_manual_strategy(tenant):
    MembershipFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.MANUAL)

    decision = pick(tenant)

    assert decision.agent is None
    assert (decision.strategy, decision.reason) == ("manual", "manual_strategy")


def test_nobody_anywhere_is_no_agents(tenant):
    decision = pick(tenant)

    assert decision.agent is None
    assert decision.reason == "no_agents"
    assert decision.available_agents == 0
    assert decision.as_record()["reason"] == "no_agents"


def test_all_reason_codes_are_known(tenant):
    assert set(UnassignedReason.values) == {
        "assignment_disabled",
        "manual_strategy",
        "team_closed",
        "no_agents",
        "all_away",
        "all_at_capacity",
        "not_accepted",
    }


# --- Step 3: team schedules ------------------------------------------------------------


def add_hours(schedule, weekdays, opens, closes):
    for weekday in weekdays:
        TeamOpeningHours.objects.create(
            tenant=schedule.tenant,
            schedule=schedule,
            weekday=weekday,
            opens_at=opens,
            closes_at=closes,
        )


@pytest.fixture
def staffed_team(tenant):
    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=team)
    return team


def routed_at(tenant, team, instant):
    with time_machine.travel(instant, tick=False):
        return pick(tenant, fresh(team))


@pytest.mark.parametrize(
    ("instant", "is_open"),
    [
        ("2026-03-02T08:59:59Z", False),  # Monday, a second before opening
        ("2026-03-02T09:00:00Z", True),  # opening time is inside the interval
        ("2026-03-02T16:59:59Z", True),
        ("2026-03-02T17:00:00Z", False),  # closing time is outside: [opens, closes)
    ],
)
def test_opening_interval_is_closed_open(tenant, staffed_team, instant, is_open):
    schedule = TeamScheduleFactory(team=staffed_team, timezone="UTC")
    add_hours(schedule, [0], datetime.time(9), datetime.time(17))

    decision = routed_at(tenant, staffed_team, instant)

    assert decision.assigned is is_open
    if not is_open:
        assert decision.reason == "team_closed"
        assert tried(decision) == [("team", 0, "team closed")]


@pytest.mark.parametrize(
    ("instant", "is_open"),
    [
        ("2026-03-02T17:59:59Z", False),  # Monday before the evening shift
        ("2026-03-02T18:00:00Z", True),
        ("2026-03-02T23:59:59Z", True),  # closes_at 00:00 means until midnight
        ("2026-03-03T00:00:00Z", False),  # Tuesday has no hours
    ],
)
def test_closing_at_midnight_means_open_until_the_end_of_the_day(
    tenant, staffed_team, instant, is_open
):
    schedule = TeamScheduleFactory(team=staffed_team, timezone="UTC")
    add_hours(schedule, [0], datetime.time(18), datetime.time(0))

    assert routed_at(tenant, staffed_team, instant).assigned is is_open


@pytest.mark.parametrize(
    ("instant", "is_open"),
    [
        ("2026-05-03T14:59:59Z", True),  # 23:59:59 on 3 May in Tokyo
        ("2026-05-03T15:00:00Z", False),  # 00:00 on 4 May in Tokyo: the holiday starts
        ("2026-05-04T14:59:59Z", False),  # still 4 May in Tokyo, though 4 May ends in UTC
        ("2026-05-04T15:00:00Z", True),  # 5 May in Tokyo
    ],
)
def test_holidays_are_dates_in_the_schedules_time_zone(tenant, staffed_team, instant, is_open):
    schedule = TeamScheduleFactory(team=staffed_team, timezone="Asia/Tokyo")
    add_hours(schedule, range(7), datetime.time(0), datetime.time(0))  # open round the clock
    TeamHoliday.objects.create(
        tenant=tenant, schedule=schedule, date=datetime.date(2026, 5, 4), name="Greenery Day"
    )

    decision = routed_at(tenant, staffed_team, instant)

    assert decision.assigned is is_open
    assert decision.reason == (None if is_open else "team_closed")


@pytest.mark.parametrize(
    "instant", ["2026-03-02T00:00:00Z", "2026-03-04T12:00:00Z", "2026-03-08T23:59:59Z"]
)
def test_enabled_schedule_without_hours_is_always_closed(tenant, staffed_team, instant):
    TeamScheduleFactory(team=staffed_team)

    decision = routed_at(tenant, staffed_team, instant)

    assert decision.reason == "team_closed"


def test_disabled_schedule_is_always_open(tenant, staffed_team):
    TeamScheduleFactory(team=staffed_team, is_enabled=False)

    assert routed_at(tenant, staffed_team, "2026-03-08T03:00:00Z").assigned


@pytest.mark.parametrize(
    ("instant", "is_open"),
    [
        # July: New York is on daylight time (UTC-4), so 09:00 there is 13:00 UTC.
        ("2026-07-15T12:59:59Z", False),
        ("2026-07-15T13:00:00Z", True),
        ("2026-07-15T20:59:59Z", True),
        ("2026-07-15T21:00:00Z", False),
        # December: standard time (UTC-5), so 09:00 there is 14:00 UTC.
        ("2026-12-16T13:00:00Z", False),
        ("2026-12-16T13:59:59Z", False),
        ("2026-12-16T14:00:00Z", True),
        ("2026-12-16T21:59:59Z", True),
        ("2026-12-16T22:00:00Z", False),
    ],
)
def test_opening_hours_follow_daylight_saving_time(tenant, staffed_team, instant, is_open):
    schedule = TeamScheduleFactory(team=staffed_team, timezone="America/New_York")
    add_hours(schedule, range(5), datetime.time(9), datetime.time(17))

    assert routed_at(tenant, staffed_team, instant).assigned is is_open


def test_schedule_is_open_reads_the_instant_in_the_schedules_time_zone(tenant, staffed_team):
    schedule = TeamScheduleFactory(team=staffed_team, timezone="America/New_York")
    add_hours(schedule, range(5), datetime.time(9), datetime.time(17))
    tokyo = datetime.timezone(datetime.timedelta(hours=9))

    # Wednesday 2026-07-15 13:00 UTC, expressed as 22:00 in UTC+9: 09:00 in New York.
    assert schedule_is_open(schedule, datetime.datetime(2026, 7, 15, 22, 0, tzinfo=tokyo))
    assert not schedule_is_open(schedule, datetime.datetime(2026, 7, 15, 21, 59, tzinfo=tokyo))


def test_closed_schedule_does_not_advance_the_round_robin(tenant, staffed_team):
    TeamMemberFactory(team=staffed_team)
    schedule = TeamScheduleFactory(team=staffed_team, timezone="UTC")
    add_hours(schedule, [0], datetime.time(9), datetime.time(17))
    with time_machine.travel("2026-03-02T10:00:00Z", tick=False):
        expected = picked_id(pick(tenant, fresh(staffed_team), dry_run=True))
    assert routed_at(tenant, staffed_team, "2026-03-02T18:00:00Z").reason == "team_closed"
    assert picked_id(routed_at(tenant, staffed_team, "2026-03-02T10:00:00Z")) == expected


def test_each_kind_of_work_has_its_own_rotation(tenant):
    team = TeamFactory(tenant=tenant)
    agents = sorted(
        (TeamMemberFactory(team=team).membership for _ in range(2)), key=lambda a: str(a.pk)
    )

    sessions = [pick(tenant, team, work="sessions").agent for _ in range(2)]
    leads = [pick(tenant, team, work="leads").agent for _ in range(2)]

    assert sessions == agents, "sessions alternate between the two agents"
    assert leads == agents, "and so do leads, whatever sessions did"


@pytest.mark.parametrize(
    ("scan_max", "walk_max"),
    [(500, 1000), (0, 1000), (0, 3)],
    ids=["members-sorted", "load-index-walked", "walk-gave-up-members-sorted"],
)
def test_least_busy_in_a_team_picks_the_same_agents_whichever_way_it_reads_them(
    tenant, monkeypatch, scan_max, walk_max
):
    """A small team's members are sorted, a big team walks the tenant's load index, and
    gives up on it for a sort of its members when the walk meets only outsiders: the
    same order (load, never assigned first, longest idle, id), members only, every way,
    with less busy agents outside the team in the tenant."""
    from teams.routing import picking

    monkeypatch.setattr(picking, "MEMBER_SCAN_MAX", scan_max)
    monkeypatch.setattr(picking, "LOAD_WALK_MAX", walk_max)
    team = TeamFactory(tenant=tenant)
    AssignmentConfigFactory(tenant=tenant, team=team, strategy=Strategy.LEAST_BUSY)
    members = [TeamMemberFactory(team=team).membership for _ in range(4)]
    outsiders = [MembershipFactory(tenant=tenant) for _ in range(6)]
    load_of({members[0]: 2, members[1]: 1, members[2]: 1, members[3]: 3})
    load_of({outsider: 0 for outsider in outsiders})
    tied = sorted(members[1:3], key=lambda agent: str(agent.pk))

    picks = [picked_id(pick(tenant, team=team)) for _ in range(4)]

    # The two members with the least load (outsiders have less, and are not the team's):
    # both never assigned, the lowest id first; then the longest idle of them, in turn.
    assert picks == [tied[0].pk, tied[1].pk, tied[0].pk, tied[1].pk]
