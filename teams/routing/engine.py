"""The assignment engine: who may take work now, and who is next.

Shared by handover (inbox) and lead intake (leads). It knows teams, roles, schedules
and configs; the caller says how busy each agent is, through `load`, so neither caller
depends on the other.

    decision = route(tenant=tenant, team=team, load=open_sessions_per_agent)

Runs inside the caller's transaction: picking advances the round-robin cursor and
stamps the agent's `last_assigned_at`, so both roll back with the caller's change.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from django.utils import timezone

from core.metrics import ROUTING_DURATION
from teams.models import (
    DEFAULT_WATERFALL,
    AssignmentConfig,
    Membership,
    Presence,
    Role,
    Strategy,
    Team,
    TeamSchedule,
    Tenant,
)
from teams.routing.reasons import UnassignedReason
from teams.routing.schedules import schedule_is_open
from teams.routing.strategies import PickContext, get_strategy

LoadFunction = Callable[[Sequence[Membership]], Mapping]
ROLE_TIERS = {"member": Role.MEMBER, "admin": Role.ADMIN, "super_admin": Role.SUPER_ADMIN}
DEFAULT_TEAM_TIER = "default_team"


@dataclass(frozen=True)
class ResolvedConfig:
    strategy: str
    is_enabled: bool
    waterfall: list[str]
    source: str  # "team", "tenant" or "default"


@dataclass
class RoutingDecision:
    agent: Membership | None
    strategy: str
    team: Team | None
    tier: str | None = None
    reason: str | None = None
    config_source: str = "default"
    tiers: list[dict] = field(default_factory=list)
    available_agents: int = 0

    @property
    def assigned(self) -> bool:
        return self.agent is not None

    def as_record(self) -> dict:
        """What is stored about this attempt, for people asking "why (not) them?"."""
        return {
            "at": timezone.now().isoformat(),
            "outcome": "assigned" if self.agent else "unassigned",
            "strategy": self.strategy,
            "config": self.config_source,
            "teamId": str(self.team.pk) if self.team else None,
            "tier": self.tier,
            "tiers": self.tiers,
            "availableAgents": self.available_agents,
            "agentId": str(self.agent.pk) if self.agent else None,
            "reason": self.reason,
        }


def resolve_config(*, tenant: Tenant, team: Team | None) -> ResolvedConfig:
    """The team's own config; else the tenant's; else round robin with the default
    waterfall."""
    config = getattr(team, "assignment_config", None) if team is not None else None
    source = "team"
    if config is None:
        config = AssignmentConfig.objects.for_tenant(tenant).filter(team__isnull=True).first()
        source = "tenant"
    if config is None:
        return ResolvedConfig(Strategy.ROUND_ROBIN, True, list(DEFAULT_WATERFALL), "default")
    return ResolvedConfig(config.strategy, config.is_enabled, config.waterfall, source)


# What routing and the handover response read of an agent; loading only these keeps a
# 200-agent pool from costing 200 password hashes and unused columns.
AGENT_FIELDS = (
    "id",
    "tenant_id",
    "role",
    "is_active",
    "presence",
    "capacity",
    "current_lead_count",
    "last_assigned_at",
    "user__id",
    "user__email",
    "user__full_name",
    "user__is_active",
)


def _active_agents(tenant: Tenant):
    return (
        Membership.objects.for_tenant(tenant)
        .filter(is_active=True, user__is_active=True)
        .select_related("user")
        .only(*AGENT_FIELDS)
    )


def _team_schedule(team: Team) -> TeamSchedule | None:
    return getattr(team, "schedule", None)


def _pools(*, tenant: Tenant, team: Team | None, waterfall: list[str], tiers: list[dict]):
    """Candidate pools in the order they are tried: (tier, team of the pool, agents).

    With a team: only its members (a named team never falls back to others). Without: each role
    tier of the waterfall, then the default team's members. Queries run lazily, so a
    pool that is never reached costs nothing.
    """
    if team is not None:
        yield "team", team, list(_active_agents(tenant).filter(team_memberships__team=team))
        return

    role_tiers = [tier for tier in waterfall if tier in ROLE_TIERS]
    by_role: dict[str, list[Membership]] = {ROLE_TIERS[tier]: [] for tier in role_tiers}
    if role_tiers:
        for agent in _active_agents(tenant).filter(role__in=list(by_role)):
            by_role[agent.role].append(agent)
    for tier in waterfall:
        if tier == "team":
            tiers.append({"tier": "team", "agents": 0, "skipped": "no teamId"})
        elif tier in ROLE_TIERS:
            yield tier, None, by_role[ROLE_TIERS[tier]]

    default_team = Team.objects.for_tenant(tenant).filter(is_default=True).first()
    if default_team is None:
        tiers.append({"tier": DEFAULT_TEAM_TIER, "agents": 0, "skipped": "no default team"})
        return
    agents = list(_active_agents(tenant).filter(team_memberships__team=default_team))
    yield DEFAULT_TEAM_TIER, default_team, agents


def _eligible(tenant: Tenant, agents, *, strategy: str, load: LoadFunction, lock: bool):
    """Agents who are available, those of them who can take work now (below capacity),
    and their load.

    When load decides (a capacity is set, or least busy), the pool's agents are locked
    in primary-key order and re-read first, so concurrent assignments queue up and each
    counts the work the previous one gave out: capacity holds under concurrency.
    """
    available = [agent for agent in agents if agent.is_online]
    needs_load = strategy == Strategy.LEAST_BUSY or any(a.capacity is not None for a in available)
    if not (needs_load and available):
        return available, available, {}
    if lock:
        available = list(
            Membership.objects.for_tenant(tenant)
            .select_for_update(of=("self",))
            .select_related("user")
            .filter(
                pk__in=[agent.pk for agent in available], presence=Presence.ONLINE, is_active=True
            )
            .order_by("pk")
        )
    current_load = load(available)
    eligible = [
        agent
        for agent in available
        if agent.capacity is None or current_load.get(agent.pk, 0) < agent.capacity
    ]
    return available, eligible, current_load


def _pool_key(*, work: str, team: Team | None, tier: str | None) -> str:
    # Each kind of work has its own rotation: handovers and leads both go round a team.
    return f"{work}:team:{team.pk}" if team is not None else f"{work}:tier:{tier}"


@ROUTING_DURATION.time()
def route(
    *,
    tenant: Tenant,
    team: Team | None,
    load: LoadFunction,
    work: str,
    exclude_agent_ids: Sequence = (),
    dry_run: bool = False,
    lock_agents: bool = True,
) -> RoutingDecision:
    """Pick an agent for one piece of work by the team's or tenant's rules.

    `work` names the kind of work ("sessions", "leads"): each has its own round-robin
    rotation. `load(agents)` returns each agent's open items (missing means 0).
    `dry_run` tells who would be picked without advancing a cursor or stamping the
    agent. `lock_agents=False` picks without touching agent rows (no pool lock, no
    `last_assigned_at`), for a caller that then locks agents itself in its own order.
    """
    now = timezone.now()
    config = resolve_config(tenant=tenant, team=team)
    decision = RoutingDecision(
        agent=None, strategy=config.strategy, team=team, config_source=config.source
    )
    if not config.is_enabled:
        decision.reason = UnassignedReason.ASSIGNMENT_DISABLED
        return decision
    if config.strategy == Strategy.MANUAL:
        decision.reason = UnassignedReason.MANUAL_STRATEGY
        return decision

    schedule = _team_schedule(team) if team is not None else None
    if schedule is not None and not schedule_is_open(schedule, now):
        decision.reason = UnassignedReason.TEAM_CLOSED
        decision.tiers = [{"tier": "team", "agents": 0, "skipped": "team closed"}]
        return decision

    excluded = {str(agent_id) for agent_id in exclude_agent_ids}
    found_anyone = found_available = False
    for tier, pool_team, agents in _pools(
        tenant=tenant, team=team, waterfall=config.waterfall, tiers=decision.tiers
    ):
        agents = [agent for agent in agents if str(agent.pk) not in excluded]
        entry = {"tier": tier, "agents": len(agents)}
        if pool_team is not None and pool_team is not team:
            entry["teamId"] = str(pool_team.pk)
        decision.tiers.append(entry)
        if not agents:
            continue
        found_anyone = True
        available, eligible, current_load = _eligible(
            tenant, agents, strategy=config.strategy, load=load, lock=lock_agents and not dry_run
        )
        found_available = found_available or bool(available)
        entry["available"] = len(available)
        entry["eligible"] = len(eligible)
        if not eligible:
            continue
        context = PickContext(
            tenant=tenant,
            pool_key=_pool_key(work=work, team=pool_team, tier=tier),
            load=current_load,
            dry_run=dry_run,
        )
        agent = get_strategy(config.strategy).pick(eligible, context)
        if agent is None:
            continue
        decision.agent, decision.tier, decision.team = agent, tier, pool_team
        decision.available_agents = len(eligible)
        if lock_agents and not dry_run:
            Membership.objects.for_tenant(tenant).filter(pk=agent.pk).update(last_assigned_at=now)
            agent.last_assigned_at = now
        return decision

    decision.reason = _why_nobody(found_anyone=found_anyone, found_available=found_available)
    return decision


def _why_nobody(*, found_anyone: bool, found_available: bool) -> str:
    """Nobody could take it: nobody there, nobody available, or everyone available full.
    Capacity is named only when it was the cause: with some agents away and the
    available ones full, raising capacity (not waiting for the away ones) is the fix."""
    if not found_anyone:
        return UnassignedReason.NO_AGENTS
    if not found_available:
        return UnassignedReason.ALL_AWAY
    return UnassignedReason.ALL_AT_CAPACITY
