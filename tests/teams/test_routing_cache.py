"""The routing cache (teams.routing.config) drops a tenant's entries when an admin
changes what routing reads: every model whose change matters, deletes as well as
saves, and once more after COMMIT. Each test routes once first (the entry is cached),
then changes one thing and routes again at once, well within the cache's lifetime."""

import datetime
import threading

import pytest
import time_machine
from django.db import connection, transaction

from teams.models import Strategy, Team, TeamHoliday, TeamOpeningHours
from teams.routing import UnassignedReason, resolve_config, route
from teams.routing import config as routing_config
from teams.selectors import tenant_for_routing
from tests.factories import (
    AssignmentConfigFactory,
    MembershipFactory,
    TeamFactory,
    TeamMemberFactory,
    TeamScheduleFactory,
)

pytestmark = pytest.mark.django_db

MONDAY_10 = "2026-03-02T10:00:00Z"


def pick(tenant, team=None):
    with time_machine.travel(MONDAY_10, tick=False):
        return route(tenant=tenant, team=team, work="sessions")


@pytest.fixture
def scheduled_team(tenant):
    """A staffed team with a schedule that is open on Mondays 9-17 UTC."""
    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=team)
    schedule = TeamScheduleFactory(team=team, timezone="UTC")
    TeamOpeningHours.objects.create(
        tenant=tenant,
        schedule=schedule,
        weekday=0,
        opens_at=datetime.time(9),
        closes_at=datetime.time(17),
    )
    return team


def test_new_opening_hours_open_the_team_at_once(tenant):
    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=team)
    schedule = TeamScheduleFactory(team=team, timezone="UTC")  # no hours: closed
    assert pick(tenant, team).reason == UnassignedReason.TEAM_CLOSED

    TeamOpeningHours.objects.create(
        tenant=tenant,
        schedule=schedule,
        weekday=0,
        opens_at=datetime.time(9),
        closes_at=datetime.time(17),
    )

    assert pick(tenant, team).assigned


def test_removed_opening_hours_close_the_team_at_once(tenant, scheduled_team):
    assert pick(tenant, scheduled_team).assigned

    TeamOpeningHours.objects.for_tenant(tenant).get().delete()

    assert pick(tenant, scheduled_team).reason == UnassignedReason.TEAM_CLOSED


def test_a_holiday_added_today_closes_the_team_at_once(tenant, scheduled_team):
    assert pick(tenant, scheduled_team).assigned

    TeamHoliday.objects.create(
        tenant=tenant, schedule=scheduled_team.schedule, date=datetime.date(2026, 3, 2)
    )

    assert pick(tenant, scheduled_team).reason == UnassignedReason.TEAM_CLOSED


def test_a_schedule_switched_off_opens_the_team_at_once(tenant):
    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=team)
    schedule = TeamScheduleFactory(team=team, timezone="UTC")  # no hours: closed
    assert pick(tenant, team).reason == UnassignedReason.TEAM_CLOSED

    schedule.is_enabled = False
    schedule.save()

    assert pick(tenant, team).assigned


def test_a_deleted_team_config_falls_back_to_the_tenants_at_once(tenant):
    team = TeamFactory(tenant=tenant)
    TeamMemberFactory(team=team)
    AssignmentConfigFactory(tenant=tenant, strategy=Strategy.ROUND_ROBIN)
    own = AssignmentConfigFactory(tenant=tenant, team=team, strategy=Strategy.MANUAL)
    assert pick(tenant, team).reason == UnassignedReason.MANUAL_STRATEGY

    own.delete()

    assert pick(tenant, team).assigned


def test_a_new_default_team_is_the_fallback_at_once(tenant):
    team = TeamFactory(tenant=tenant)
    agent = TeamMemberFactory(team=team, membership__role="admin").membership
    AssignmentConfigFactory(tenant=tenant, settings={"waterfall": ["member"]})
    assert pick(tenant).reason == UnassignedReason.NO_AGENTS

    team.is_default = True
    team.save()

    decision = pick(tenant)
    assert decision.agent == agent
    assert decision.tier == "default_team"


def test_the_tenants_row_can_be_changed_by_a_caller_without_changing_the_cache(tenant):
    row = tenant_for_routing(tenant.pk)
    row.name = "changed by a caller"

    assert tenant_for_routing(tenant.pk).name == tenant.name


def test_a_clock_that_went_back_reads_the_rows_again(tenant, monkeypatch):
    MembershipFactory(tenant=tenant)
    config = AssignmentConfigFactory(tenant=tenant, strategy=Strategy.ROUND_ROBIN)
    clock = [1_000_000.0]
    monkeypatch.setattr(routing_config.time, "time", lambda: clock[0])
    assert resolve_config(tenant=tenant, team=None).strategy == Strategy.ROUND_ROBIN
    # Changed elsewhere (no signal here); then the clock is set back a minute.
    type(config).all_tenants.filter(pk=config.pk).update(strategy=Strategy.MANUAL)
    clock[0] -= 60

    assert resolve_config(tenant=tenant, team=None).strategy == Strategy.MANUAL


def test_another_tenants_default_team_is_never_the_fallback(tenant, other_tenant):
    theirs = TeamFactory(tenant=other_tenant, is_default=True)
    TeamMemberFactory(team=theirs)

    decision = pick(tenant)

    assert decision.agent is None
    assert decision.tiers[-1] == {"tier": "default_team", "agents": 0, "skipped": "no default team"}


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_entry_read_by_another_request_before_commit_is_dropped_at_commit(tenant):
    """While an admin's change is not committed yet, another request reads the old rows
    and caches them; the COMMIT drops that entry too, so the change shows at once."""
    MembershipFactory(tenant=tenant)
    config = AssignmentConfigFactory(tenant=tenant, strategy=Strategy.ROUND_ROBIN)
    seen = []

    def another_request():
        try:
            seen.append(resolve_config(tenant=tenant.pk, team=None).strategy)
        finally:
            connection.close()

    with transaction.atomic():
        config.strategy = Strategy.MANUAL
        config.save()
        reader = threading.Thread(target=another_request)
        reader.start()
        reader.join(10)
    assert seen == [Strategy.ROUND_ROBIN], "the other request read the old, committed rows"

    assert resolve_config(tenant=tenant, team=None).strategy == Strategy.MANUAL


def test_a_team_of_another_tenant_is_no_team_for_routing(tenant, other_tenant):
    from teams.selectors import team_for_routing

    theirs = TeamFactory(tenant=other_tenant)

    assert team_for_routing(tenant=tenant, team_id=theirs.pk) is None
    assert team_for_routing(tenant=tenant, team_id="not-a-uuid") is None
    assert Team.all_tenants.filter(pk=theirs.pk).exists()


def test_a_renamed_tenant_is_read_again_at_once(tenant):
    assert tenant_for_routing(tenant.pk).name == tenant.name  # cached now

    tenant.name = "Acme Renamed"
    tenant.save()

    assert tenant_for_routing(tenant.pk).name == "Acme Renamed"
