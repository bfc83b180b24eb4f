"""The assignment engine: who may take work now, and who is next.

Shared by handover (inbox) and lead intake (leads). It knows teams, roles, schedules
and configs; how busy an agent is comes from the agent's own counter of the kind of
work (`open_session_count` for "sessions", `current_lead_count` for "leads"), kept by
the services that assign, move and close work, so the engine imports neither.

    decision = route(tenant=tenant, team=team, work="sessions")

Runs inside the caller's transaction (or outside one, when the pick statement carries
all of the caller's writes). Per pool (the team, or each waterfall tier) one
SQL statement picks the agent, stamps `last_assigned_at`, advances the round-robin
cursor and, with `count=True`, counts the work on the agent; `attach` adds the caller's
own writes to that statement (teams.routing.picking). Configuration (which config,
schedule, default team) comes from a short-lived cache (teams.routing.config).
"""

import uuid
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from core.metrics import ROUTING_DURATION
from teams.models import Membership, Role, Strategy, Team, Tenant
from teams.routing import picking
from teams.routing.config import ResolvedConfig, resolve_config, team_snapshot, tenant_snapshot
from teams.routing.picking import Cte, Pool
from teams.routing.reasons import UnassignedReason

ROLE_TIERS = {"member": Role.MEMBER, "admin": Role.ADMIN, "super_admin": Role.SUPER_ADMIN}
DEFAULT_TEAM_TIER = "default_team"
# A pick that lost a race runs again holding the pool's lock; only a change made
# outside routing (an admin's assignment) can make it lose again.
MAX_ATTEMPTS = 5

__all__ = [
    "PickRefused",
    "ResolvedConfig",
    "RoutingDecision",
    "advance_cursor",
    "resolve_config",
    "route",
]


class PickRefused(Exception):
    """The pick's `only_if` did not hold: nothing was locked or written."""


@dataclass
class RoutingDecision:
    agent: Membership | None
    strategy: str
    team: Team | None
    tier: str | None = None
    reason: str | None = None
    config_source: str = "default"
    tiers: list[dict] = field(default_factory=list)
    # Eligible agents in the pools that were counted (only pools nobody was picked in are
    # counted: counting the winning pool would cost as much as the pool is large).
    available_agents: int = 0
    # Whether the caller's `attach` statements ran (with the pick, on PostgreSQL).
    attached: bool = False
    # route(cursor_last=True): (pool key, the cursor's picks as read) for `advance_cursor`.
    cursor: tuple | None = None
    # When the routing ran: the record's "at", the same in the row a pick statement
    # wrote and in the copy the caller keeps.
    at: datetime = field(default_factory=timezone.now)

    @property
    def assigned(self) -> bool:
        return self.agent is not None

    def as_record(self) -> dict:
        """What is stored about this attempt, for people asking "why (not) them?"."""
        record = {
            "at": self.at.isoformat(),
            "outcome": "assigned" if self.agent else "unassigned",
            "strategy": self.strategy,
            "config": self.config_source,
            "teamId": str(self.team.pk) if self.team else None,
            "tier": self.tier,
            "tiers": self.tiers,
            "agentId": str(self.agent.pk) if self.agent else None,
            "reason": self.reason,
        }
        if self.agent is None:
            record["availableAgents"] = self.available_agents
        return record


def _pools(*, tenant_id, team: Team | None, waterfall: list[str], work: str, tiers: list[dict]):
    """Candidate pools in the order they are tried: (pool, team of the pool).

    With a team: only its members (a named team never falls back to others). Without:
    each role tier of the waterfall, then the default team's members.
    """
    if team is not None:
        yield Pool("team", f"{work}:team:{team.pk}", team_id=team.pk), team
        return
    for tier in waterfall:
        if tier == "team":
            tiers.append({"tier": "team", "agents": 0, "skipped": "no teamId"})
        elif tier in ROLE_TIERS:
            yield Pool(tier, f"{work}:tier:{tier}", role=ROLE_TIERS[tier]), None
    default = tenant_snapshot(tenant_id).default_team
    if default is None:
        tiers.append({"tier": DEFAULT_TEAM_TIER, "agents": 0, "skipped": "no default team"})
        return
    pool = Pool(DEFAULT_TEAM_TIER, f"{work}:team:{default.id}", team_id=default.id)
    yield pool, default.as_team()


def _agent_ids(ids: Sequence) -> list:
    return [
        agent_id if isinstance(agent_id, uuid.UUID) else uuid.UUID(str(agent_id))
        for agent_id in ids
    ]


def _pick(pool: Pool, *, tenant_id, attach, dry_run: bool, only_if=None, **args):
    """The pool's agent (the statement also ran `attach`), or None.

    A pick that lost a race runs again. Outside a transaction (a pick statement that
    carries all of the caller's writes) the tries after the first run in one: a
    statement's snapshot is taken before it waits for the pool's lock, so without the
    lock kept from one try to the next, other picks could get in between every time
    and a busy pool could turn work away. In the transaction the second try at the
    latest reads a snapshot taken under the lock, and wins.
    """
    # In a transaction, a pool where nobody is picked gives its lock back at once
    # (ROLLBACK TO SAVEPOINT: its tries wrote nothing that stands, a try that lost a
    # race included; a cursor its first pick made is made again after): the writes
    # about that outcome, or the next tier's pick, do not hold it until COMMIT. A pick
    # that found somebody leaves the savepoint as it is, so nothing runs between it and
    # the COMMIT.
    held = connection.vendor == "postgresql" and connection.in_atomic_block and not dry_run
    savepoint = transaction.savepoint() if held else None
    created = []  # the pool's cursor, if its first pick ever made it
    try:
        settled = _pick_in(
            pool,
            tenant_id=tenant_id,
            attach=attach,
            dry_run=dry_run,
            only_if=only_if,
            created=created,
            **args,
        )
        if savepoint is None or settled[0] is not None:
            return settled
    except PickRefused:
        if savepoint is None:
            raise
        settled = None
    transaction.savepoint_rollback(savepoint)
    if created:  # kept: the pool's next picks need it whoever they find
        picking.create_cursor(tenant_id=tenant_id, pool=pool)
    if settled is None:
        raise PickRefused
    return settled


def _pick_in(pool: Pool, *, tenant_id, attach, dry_run: bool, only_if, created, **args):
    tries = {"attach": attach, "dry_run": dry_run, "only_if": only_if, "created": created}
    settled = _try_pick(pool, tenant_id=tenant_id, **tries, **args)
    if settled is not None:
        return settled
    alone = connection.vendor == "postgresql" and not connection.in_atomic_block
    with transaction.atomic() if alone and not dry_run else nullcontext():
        for _ in range(MAX_ATTEMPTS - 1):
            settled = _try_pick(pool, tenant_id=tenant_id, **tries, **args)
            if settled is not None:
                return settled
    return None, False, None


def _try_pick(pool: Pool, *, tenant_id, attach, dry_run: bool, only_if, created, **args):
    """(agent or None, whether `attach` ran, the cursor's agent as read) when the pick is
    settled; None when it is to run again (it lost a race, or it created the pool's
    cursor)."""
    if connection.vendor == "postgresql":
        ctes = attach() if attach is not None and not dry_run else []
        sql, params = picking.pick_statement(
            pool, tenant_id=tenant_id, dry_run=dry_run, attach=ctes, only_if=only_if, **args
        )
        lock_pool = None if dry_run else (tenant_id, pool.key)
        result = picking.run_pick(sql, params, lock_pool=lock_pool)
        if result.refused:
            raise PickRefused
    else:
        ctes = []
        result = picking.pick_with_orm(pool, tenant_id=tenant_id, dry_run=dry_run, **args)
    if result.agent is not None:
        return result.agent, bool(ctes), result.cursor_position
    if result.candidate_id is None:
        if dry_run or result.has_cursor:
            return None, False, None
        # The pool's first pick ever: create its cursor, then pick under its lock.
        picking.create_cursor(tenant_id=tenant_id, pool=pool)
        created.append(pool.key)
    return None


@ROUTING_DURATION.time()
def route(
    *,
    tenant: Tenant,
    team: Team | None,
    work: str,
    load=None,
    exclude_agent_ids: Sequence = (),
    dry_run: bool = False,
    lock_agents: bool = True,
    count: bool = False,
    attach: Callable[["RoutingDecision"], list[Cte]] | None = None,
    only_if: tuple[str, list] | None = None,
    cursor_last: bool = False,
) -> RoutingDecision:
    """Pick an agent for one piece of work by the team's or tenant's rules.

    `work` names the kind of work ("sessions", "leads"): each has its own round-robin
    rotation and its own counter of open items. `load` is accepted for older callers
    and ignored: the counters are the load. `dry_run` tells who would be picked without
    advancing a cursor or stamping the agent. `lock_agents=False` picks without touching
    agent rows (no `last_assigned_at`), for a caller that then locks agents itself in
    its own order. `count=True` adds the work to the agent's counter in the pick.
    `attach(decision)` returns statements to run in the pick statement, given the
    decision as it stands if this pool's pick succeeds (PostgreSQL only;
    `decision.attached` says whether they ran). `only_if` (PostgreSQL only): an SQL
    condition, with its parameters, read in each pick statement's snapshot; when it
    does not hold, nothing is locked or written and PickRefused is raised.
    `cursor_last=True` (with `lock_agents=False`, on PostgreSQL): the pick locks nothing,
    and the caller moves the pool's cursor with `advance_cursor(decision)` as the last
    statement of its transaction, for writes that cannot be attached to the pick; if
    another pick moved the cursor in between, the caller's writes are to be undone and
    the routing run again.
    """
    if cursor_last and lock_agents:
        raise ValueError("cursor_last picks touch no agent rows: pass lock_agents=False")
    deferred = cursor_last and not dry_run and connection.vendor == "postgresql"
    del load
    now = timezone.now()
    tenant_id = getattr(tenant, "pk", tenant)
    config = resolve_config(tenant=tenant_id, team=team)
    decision = RoutingDecision(
        agent=None, strategy=config.strategy, team=team, config_source=config.source, at=now
    )
    if not config.is_enabled:
        decision.reason = UnassignedReason.ASSIGNMENT_DISABLED
        return decision
    if config.strategy == Strategy.MANUAL:
        decision.reason = UnassignedReason.MANUAL_STRATEGY
        return decision

    if team is not None:
        snapshot = team_snapshot(tenant_id, team.pk)
        schedule = snapshot.schedule if snapshot is not None else None
        if schedule is not None and not schedule.is_open(now):
            decision.reason = UnassignedReason.TEAM_CLOSED
            decision.tiers = [{"tier": "team", "agents": 0, "skipped": "team closed"}]
            return decision

    exclude = _agent_ids(exclude_agent_ids)
    args = {
        "strategy": config.strategy,
        "work": work,
        "exclude": exclude,
        "now": now,
        "touch_agent": lock_agents,
        "count": count and lock_agents,
    }
    counts = picking.pool_counts if connection.vendor == "postgresql" else None
    found_anyone = found_available = False
    for pool, pool_team in _pools(
        tenant_id=tenant_id, team=team, waterfall=config.waterfall, work=work, tiers=decision.tiers
    ):
        entry = {"tier": pool.tier}
        if pool_team is not None and pool_team is not team:
            entry["teamId"] = str(pool_team.pk)
        decision.tiers.append(entry)
        # The statements attached to this pool's pick see the decision as it will be if
        # somebody is picked here (tier, team, the tiers tried so far).
        decision.tier, decision.team = pool.tier, pool_team
        ctes = (lambda: attach(decision)) if attach is not None else None
        agent, attached, seen = _pick(
            pool,
            tenant_id=tenant_id,
            attach=ctes,
            dry_run=dry_run or deferred,
            only_if=only_if,
            **args,
        )
        decision.tier, decision.team = None, team
        if agent is not None:
            decision.agent, decision.tier, decision.team = agent, pool.tier, pool_team
            decision.attached = attached
            if deferred:
                decision.cursor = (pool.key, seen)
                if seen is None:  # perhaps the pool's first pick: its cursor, to move
                    picking.create_cursor(tenant_id=tenant_id, pool=pool)
            return decision
        counter = counts or picking.pool_counts_with_orm
        agents, available, eligible = counter(pool, tenant_id=tenant_id, work=work, exclude=exclude)
        entry["agents"] = agents
        if agents:
            entry["available"], entry["eligible"] = available, eligible
            decision.available_agents += eligible
        found_anyone = found_anyone or agents > 0
        found_available = found_available or available > 0

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


def advance_cursor(*, tenant, decision: RoutingDecision) -> bool:
    """After route(cursor_last=True) and the caller's writes, as its transaction's last
    statement: move the pool's cursor to the decision's agent. False when another pick
    moved it since this one read it (round robin would be unfair: undo and route again).
    True when there is nothing to move."""
    if decision.cursor is None or decision.agent is None:
        return True
    pool_key, seen = decision.cursor
    return picking.advance_cursor(
        tenant_id=getattr(tenant, "pk", tenant),
        pool_key=pool_key,
        seen=seen,
        agent_id=decision.agent.pk,
    )
