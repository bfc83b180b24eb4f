"""What routing reads besides the agents, cached in the process for a few seconds.

A handover reads the team's (or tenant's) AssignmentConfig, the team's schedule with its
hours and holidays, and the tenant's default team. Admins change these rarely and every
handover reads them, so each process keeps them for `CACHE_SECONDS`:

* Lifetime: `ROUTING_CONFIG_CACHE_SECONDS` (default 5 s). A change made in another
  process shows up here within that time.
* A save or delete of a tenant, team, assignment config, schedule, opening hours or
  holiday drops that tenant's entries in this process at once and again after commit
  (so a reader that filled the entry from before the commit cannot keep it).
* Per process and in memory, not Redis: a hit costs a dict lookup, and there is no
  cache server that could hang a request.

The agents themselves (presence, capacity, counters, team membership) are never cached:
the pick reads them in SQL.
"""

import datetime
import threading
import time
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from teams.models import (
    DEFAULT_WATERFALL,
    AssignmentConfig,
    Strategy,
    Team,
    TeamHoliday,
    TeamMember,
    TeamOpeningHours,
    TeamSchedule,
    Tenant,
)

CACHE_SECONDS = getattr(settings, "ROUTING_CONFIG_CACHE_SECONDS", 5.0)
MIDNIGHT = datetime.time(0, 0)


@dataclass(frozen=True)
class ResolvedConfig:
    strategy: str
    is_enabled: bool
    waterfall: list[str]
    source: str  # "team", "tenant" or "default"


DEFAULT_CONFIG = ResolvedConfig(Strategy.ROUND_ROBIN, True, list(DEFAULT_WATERFALL), "default")


@dataclass(frozen=True)
class ScheduleSnapshot:
    is_enabled: bool
    timezone: str
    hours: dict  # weekday -> ((opens_at, closes_at), ...)
    holidays: frozenset

    def is_open(self, at: datetime.datetime) -> bool:
        """Weekly hours in the schedule's time zone, minus holidays (dates in that time
        zone). A disabled schedule is always open."""
        if not self.is_enabled:
            return True
        local = at.astimezone(ZoneInfo(self.timezone))
        if local.date() in self.holidays:
            return False
        now = local.time()
        return any(
            opens <= now and (closes == MIDNIGHT or now < closes)
            for opens, closes in self.hours.get(local.weekday(), ())
        )


@dataclass(frozen=True)
class TeamSnapshot:
    id: object
    tenant_id: object
    name: str
    is_default: bool
    config: ResolvedConfig | None  # the team's own, if it has one
    schedule: ScheduleSnapshot | None

    def as_team(self) -> Team:
        """A fresh Team instance (callers may set attributes on it)."""
        # Only these columns are loaded; any other is read from the row on access.
        return Team.from_db(
            "default",
            ["id", "tenant_id", "name", "is_default"],
            [self.id, self.tenant_id, self.name, self.is_default],
        )


@dataclass(frozen=True)
class TenantSnapshot:
    config: ResolvedConfig
    default_team: TeamSnapshot | None


def _config_of(config: AssignmentConfig | None, source: str) -> ResolvedConfig | None:
    if config is None:
        return None
    return ResolvedConfig(config.strategy, config.is_enabled, config.waterfall, source)


def schedule_snapshot(schedule: TeamSchedule) -> ScheduleSnapshot:
    hours: dict = {}
    for row in schedule.hours.all():
        hours.setdefault(row.weekday, []).append((row.opens_at, row.closes_at))
    return ScheduleSnapshot(
        is_enabled=schedule.is_enabled,
        timezone=schedule.timezone,
        hours={day: tuple(spans) for day, spans in hours.items()},
        holidays=frozenset(schedule.holidays.values_list("date", flat=True)),
    )


def _team_snapshot(team: Team) -> TeamSnapshot:
    schedule = getattr(team, "schedule", None)
    return TeamSnapshot(
        id=team.pk,
        tenant_id=team.tenant_id,
        name=team.name,
        is_default=team.is_default,
        config=_config_of(getattr(team, "assignment_config", None), "team"),
        schedule=schedule_snapshot(schedule) if schedule is not None else None,
    )


# tenant id -> {key -> (stored at, value)}. Whole dicts are replaced, never mutated in
# place by readers, so threads of one process share it without a lock on the read path.
_entries: dict = {}
_lock = threading.Lock()
_MISSING = object()


def _fresh(stored, now) -> bool:
    # A clock that went back counts as expired too.
    return stored is not None and 0 <= now - stored[0] < CACHE_SECONDS


def _cached(tenant_id, key, load):
    """`load()`'s value, remembered for CACHE_SECONDS; None (no such row) is not
    remembered, so ids made up by a caller cannot fill the cache."""
    now = time.time()
    stored = _entries.get(tenant_id, {}).get(key)
    if _fresh(stored, now):
        return stored[1]
    value = load()
    if value is None:
        return value
    with _lock:
        # Expired entries go when the tenant's dict is rebuilt: it holds at most what
        # was used within the lifetime.
        entries = {k: v for k, v in _entries.get(tenant_id, {}).items() if _fresh(v, now)}
        entries[key] = (now, value)
        _entries[tenant_id] = entries
    return value


def forget(tenant_id) -> None:
    """Drop everything cached about one tenant in this process."""
    with _lock:
        _entries.pop(tenant_id, None)


def forget_all() -> None:
    with _lock:
        _entries.clear()


def tenant_snapshot(tenant_id) -> TenantSnapshot:
    def load():
        config = AssignmentConfig.objects.for_tenant(tenant_id).filter(team__isnull=True).first()
        default = Team.objects.for_tenant(tenant_id).filter(is_default=True).first()
        return TenantSnapshot(
            config=_config_of(config, "tenant") or DEFAULT_CONFIG,
            default_team=(
                TeamSnapshot(default.pk, default.tenant_id, default.name, True, None, None)
                if default is not None
                else None
            ),
        )

    return _cached(tenant_id, "tenant", load)


def team_snapshot(tenant_id, team_id) -> TeamSnapshot | None:
    """The team of the tenant with its config and schedule, or None if there is none."""

    def load():
        team = (
            Team.objects.for_tenant(tenant_id)
            .select_related("assignment_config", "schedule")
            .filter(pk=team_id)
            .first()
        )
        return _team_snapshot(team) if team is not None else None

    return _cached(tenant_id, ("team", str(team_id)), load)


def team_size(tenant_id, team_id) -> int:
    """How many agents the team has, as cached: only the shape of a least-busy pick
    depends on it (teams.routing.picking), never who is picked, so a count a few
    seconds old is harmless and member changes need not drop it."""
    return _cached(
        tenant_id,
        ("team_size", str(team_id)),
        lambda: TeamMember.objects.for_tenant(tenant_id).filter(team_id=team_id).count(),
    )


def tenant_row(tenant_id) -> Tenant | None:
    """The tenant's row, as cached; a copy, so callers may set attributes on it."""
    row = _cached(tenant_id, "row", lambda: Tenant.objects.filter(pk=tenant_id).first())
    if row is None:
        return None
    copy = Tenant.__new__(Tenant)
    copy.__dict__.update(row.__dict__)
    copy._state = type(row._state)()
    copy._state.adding, copy._state.db = False, row._state.db
    return copy


def resolve_config(*, tenant, team) -> ResolvedConfig:
    """The team's own config; else the tenant's; else round robin with the default
    waterfall."""
    tenant_id = getattr(tenant, "pk", tenant)
    if team is not None:
        snapshot = team_snapshot(tenant_id, team.pk)
        if snapshot is not None and snapshot.config is not None:
            return snapshot.config
    return tenant_snapshot(tenant_id).config


def _tenant_id_of(instance):
    return instance.pk if isinstance(instance, Tenant) else instance.tenant_id


def _on_change(sender, instance, **kwargs):
    tenant_id = _tenant_id_of(instance)
    forget(tenant_id)
    # Again after commit: a reader may have refilled the entry from the old rows while
    # this transaction was still open.
    transaction.on_commit(lambda: forget(tenant_id))


for _model in (Tenant, Team, AssignmentConfig, TeamSchedule, TeamOpeningHours, TeamHoliday):
    post_save.connect(_on_change, sender=_model, dispatch_uid=f"routing-cache-save-{_model}")
    post_delete.connect(_on_change, sender=_model, dispatch_uid=f"routing-cache-del-{_model}")
