"""Reads for the directory API: the tenant's agents and teams, for external systems that
need their ids. Every function starts from the tenant the API key resolved, and costs
the same few queries for 1 row or a page of 500 (prefetches, no per-row reads)."""

import datetime
from zoneinfo import ZoneInfo

from django.db.models import Prefetch, QuerySet

from teams.models import (
    AssignmentConfig,
    Membership,
    Strategy,
    Team,
    TeamHoliday,
    TeamMember,
    TeamOpeningHours,
    TeamSchedule,
    Tenant,
)

MIDNIGHT = datetime.time(0, 0)


def directory_agents(*, tenant: Tenant, presence: str | None = None, team: Team | None = None):
    """Active agents (deactivated ones take no work and are left out), by name, each
    with `directory_team_ids`: the teams they are a member of."""
    agents = (
        Membership.objects.for_tenant(tenant)
        .filter(is_active=True, user__is_active=True)
        .select_related("user")
        .prefetch_related(
            Prefetch(
                "team_memberships",
                queryset=TeamMember.objects.for_tenant(tenant)
                .only("id", "team_id", "membership_id")
                .order_by("team_id"),
                to_attr="directory_team_members",
            )
        )
        .order_by("user__full_name", "user__email", "pk")
    )
    if presence:
        agents = agents.filter(presence=presence)
    if team is not None:
        agents = agents.filter(team_memberships__team=team)
    return agents


def directory_teams(*, tenant: Tenant, agent: Membership | None = None) -> QuerySet:
    """The tenant's teams by name, with their config, schedule (hours and holidays) and
    members prefetched; `team_is_open_now` and `team_member_ids` read only those."""
    schedules = TeamSchedule.objects.for_tenant(tenant).prefetch_related(
        Prefetch("hours", queryset=TeamOpeningHours.objects.for_tenant(tenant)),
        Prefetch("holidays", queryset=TeamHoliday.objects.for_tenant(tenant)),
    )
    teams = (
        Team.objects.for_tenant(tenant)
        .select_related("assignment_config")
        .prefetch_related(
            Prefetch("schedule", queryset=schedules),
            Prefetch(
                "members",
                queryset=TeamMember.objects.for_tenant(tenant)
                .filter(membership__is_active=True, membership__user__is_active=True)
                .only("id", "team_id", "membership_id")
                .order_by("membership_id"),
                to_attr="directory_members",
            ),
        )
        .order_by("name", "pk")
    )
    if agent is not None:
        teams = teams.filter(members__membership=agent)
    return teams


def tenant_strategy(tenant: Tenant) -> str:
    """The tenant-wide strategy, for teams without a config of their own (as the engine's
    `resolve_config` falls back)."""
    config = AssignmentConfig.objects.for_tenant(tenant).filter(team__isnull=True).first()
    return config.strategy if config is not None else Strategy.ROUND_ROBIN


def team_strategy(team: Team, fallback: str) -> str:
    config = getattr(team, "assignment_config", None)
    return config.strategy if config is not None else fallback


def team_member_ids(team: Team) -> list[str]:
    return [str(member.membership_id) for member in team.directory_members]


def agent_team_ids(agent: Membership) -> list[str]:
    return [str(member.team_id) for member in agent.directory_team_members]


def team_is_open_now(team: Team, now: datetime.datetime) -> bool:
    """Whether the team takes work at `now`: the rule of `teams.routing.schedules.
    schedule_is_open`, read from the prefetched hours and holidays (that function
    queries them per team). A team without a schedule, or with a disabled one, is open."""
    schedule = getattr(team, "schedule", None)
    if schedule is None or not schedule.is_enabled:
        return True
    local = now.astimezone(ZoneInfo(schedule.timezone))
    if any(holiday.date == local.date() for holiday in schedule.holidays.all()):
        return False
    time = local.time()
    return any(
        hours.weekday == local.weekday()
        and hours.opens_at <= time
        and (hours.closes_at == MIDNIGHT or time < hours.closes_at)
        for hours in schedule.hours.all()
    )
