"""The pick, in SQL: one statement finds a pool's next agent and writes everything that
depends on who it is.

The statement walks an index from its start and stops at the first eligible agent, so
it costs the same for a pool of 1 or 2,000 agents and however much open work there is:

* round robin: the next agent id after the pool's cursor (`RoundRobinCursor
  .last_agent_id`), wrapping round to the smallest, along the team-member unique index
  (team, agent) or `membership_rr_by_role` (tenant, role, id);
* least busy: the smallest (work counter, last_assigned_at nulls first, id) along
  `membership_lb_sessions` / `membership_lb_leads`.

Eligible means online, active, with an active user, not excluded, and below capacity by
the counter of the kind of work (`open_session_count` for sessions,
`current_lead_count` for leads): counters kept with F() by the services that assign,
move and close work, repaired by `manage.py reconcile_counters`.

Writing statements (CTEs, in this order of data flow):

    routing_lock   SELECT the pool's cursor FOR UPDATE: picks of one pool queue here
    routing_pick   the candidate (statement snapshot)
    routed_agent   UPDATE the agent: last_assigned_at, the counter (+1, when the caller
                   counts the work), re-checking presence and capacity on the newest
                   row version (and, for least busy, that its load did not move), so
                   capacity holds under concurrency
    routing_cursor UPDATE the cursor to the agent
    + the caller's CTEs (`attach`), which read `routed_agent`

A new handover session and a new routed lead run it alone outside a transaction; work
routed again (a contact's waiting session, the retry jobs) and sessions moved (a
transfer to a team, the accept sweep, redistribution) run it as the last statement
before COMMIT, every write about the outcome attached; so the cursor's lock is held for
one statement. Inside a transaction a pick that finds nobody gives the lock back at once
(a savepoint). A lead given to another agent by the engine (the SLA sweep's automatic
reassignment, the leads' redistribution), whose reassignment locks both agents itself,
picks without locking (`route(cursor_last=True)`) and moves the cursor by its last
statement (`advance_cursor`: only if no pick moved it since it was read, SKIP LOCKED),
undoing the reassignment and picking again when another pick moved it first, or when
its agent, checked once the reassignment holds its row, lost its room; after three
tries it locks the cursor in its pick and holds it to COMMIT. `only_if` makes the
pick conditional on something read in the same snapshot (no active webhook endpoint
besides those read just before, whose events the pick writes: webhooks
`pick_with_endpoints`).
When the candidate lost a race (someone filled its capacity, or moved its
load, after this statement's snapshot was taken) the statement changed nothing; the
engine runs it again with a fresh snapshot.
"""

# ruff: noqa: S608 (the SQL is built from model table names and fixed fragments; every
# value is a parameter)
from dataclasses import dataclass

from django.db import connection

from core.locked_statement import fetch_one_after_lock
from teams.models import Membership, RoundRobinCursor, Strategy, TeamMember, User
from teams.routing.config import team_size

COUNTERS = {"sessions": "open_session_count", "leads": "current_lead_count"}
# Least busy in a team of at most this many agents sorts the team's members (cost: the
# team's size); in a bigger team it walks the tenant's load index, where the team's
# members are a large share and the first eligible one comes early.
MEMBER_SCAN_MAX = 500
# ... but reads at most this many agents of that index before it sorts the members anyway.
LOAD_WALK_MAX = 200
ROUTED_AGENT = "routed_agent"  # the CTE attached statements read the chosen agent from
LAST_AGENT = "SELECT last_agent_id FROM routing_lock"
LAST_UUID = "ffffffff-ffff-ffff-ffff-ffffffffffff"
AGENT_COLUMNS = (
    "id",
    "tenant_id",
    "user_id",
    "role",
    "is_active",
    "presence",
    "capacity",
    "current_lead_count",
    "open_session_count",
    "last_assigned_at",
    "email_on_conversation",
)
USER_COLUMNS = ("user_email", "user_full_name", "user_is_active")

M = Membership._meta.db_table
TM = TeamMember._meta.db_table
U = User._meta.db_table
C = RoundRobinCursor._meta.db_table
# Taken just before a pick outside a transaction (run_pick); the pick locks it again, at
# no cost once it is held, and alone inside a transaction.
LOCK_POOL_SQL = f"SELECT 1 FROM {C} WHERE tenant_id = %s AND pool_key = %s FOR UPDATE"


@dataclass(frozen=True)
class Cte:
    """A statement to run with the pick, as `name AS (sql)`; it may read `routed_agent`
    (columns AGENT_COLUMNS + USER_COLUMNS), which is empty when nobody was picked."""

    name: str
    sql: str
    params: list


@dataclass(frozen=True)
class Pool:
    tier: str
    key: str  # the cursor's pool_key
    team_id: object = None  # a team's members ...
    role: str | None = None  # ... or the tenant's agents with this role


@dataclass(frozen=True)
class PickResult:
    has_cursor: bool
    candidate_id: object
    agent: Membership | None
    refused: bool = False  # `only_if` did not hold: nothing was locked or written
    cursor_position: int | None = None  # the cursor's picks so far, as the statement read it


def _counter(work: str) -> str:
    return COUNTERS.get(work, COUNTERS["sessions"])


def _eligible(counter: str, exclude: list) -> tuple[str, list]:
    sql = (
        "m.presence = 'online' AND m.is_active AND u.is_active"
        f" AND (m.capacity IS NULL OR m.{counter} < m.capacity)"
    )
    if exclude:
        return f"{sql} AND NOT (m.id = ANY(%s::uuid[]))", [list(exclude)]
    return sql, []


_CANDIDATE_COLUMNS = (
    "m.id, m.{counter} AS load, m.last_assigned_at, u.email, u.full_name,"
    " u.is_active AS user_is_active"
)
_CANDIDATE_NAMES = "id, load, last_assigned_at, email, full_name, user_is_active"


def _candidate(
    pool: Pool, *, tenant_id, strategy, counter, exclude, after: str = "", upto: str = ""
):
    """SELECT of the pool's first eligible agent in the strategy's order (one row); for
    round robin, among the ids greater than `after` and at most `upto` (SQL)."""
    eligible, eligible_params = _eligible(counter, exclude)
    columns = _CANDIDATE_COLUMNS.format(counter=counter)
    if strategy == Strategy.LEAST_BUSY:
        order = f"m.{counter}, m.last_assigned_at ASC NULLS FIRST, m.id"
        if pool.team_id is not None:
            # A small team: sort its members. Walking the tenant's load index would pass
            # every less busy agent of the tenant outside the team first.
            # The eligible members are read first (MATERIALIZED), each by its key (the
            # LATERAL subquery, kept whole by OFFSET 0): left to itself, the planner
            # walks the tenant's load index for the order and probes the team for each
            # agent (the tenant times the team), or hashes the tenant's agents.
            members_sql = (
                f"WITH members AS MATERIALIZED (SELECT c.* FROM {TM} tm CROSS JOIN LATERAL"
                f" (SELECT {columns} FROM {M} m JOIN {U} u ON u.id = m.user_id"
                f" WHERE m.id = tm.membership_id AND m.tenant_id = %s AND {eligible}"
                " OFFSET 0) c WHERE tm.team_id = %s) SELECT * FROM members"
                " ORDER BY load, last_assigned_at ASC NULLS FIRST, id LIMIT 1"
            )
            members_params = [tenant_id, *eligible_params, pool.team_id]
            if team_size(tenant_id, pool.team_id) <= MEMBER_SCAN_MAX:
                return members_sql, members_params
            # A big team: walk the tenant's load index, where its members are usually
            # among the first, but at most LOAD_WALK_MAX agents of it (outside the team,
            # less busy, there may be thousands); then sort the members after all. Team
            # membership is a column of the walk (a subplan per agent read), not a join
            # the planner could reorder: the outer query keeps the walk's order and stops
            # at the first member.
            walk_sql = (
                f"SELECT {_CANDIDATE_NAMES} FROM (SELECT {columns}, EXISTS (SELECT 1"
                f" FROM {TM} tm WHERE tm.team_id = %s AND tm.membership_id = m.id) AS member"
                f" FROM {M} m JOIN {U} u ON u.id = m.user_id WHERE m.tenant_id = %s"
                f" AND {eligible} ORDER BY {order} LIMIT %s) walk WHERE member LIMIT 1"
            )
            walk_params = [pool.team_id, tenant_id, *eligible_params, LOAD_WALK_MAX]
            return (
                f"SELECT * FROM (({walk_sql}) UNION ALL ({members_sql})) p LIMIT 1",
                [*walk_params, *members_params],
            )
        scope, scope_params = "", []
        if pool.role is not None:
            scope, scope_params = " AND m.role = %s", [pool.role]
        return (
            f"SELECT {columns} FROM {M} m JOIN {U} u ON u.id = m.user_id"
            f" WHERE m.tenant_id = %s AND {eligible}{scope} ORDER BY {order} LIMIT 1",
            [tenant_id, *eligible_params, *scope_params],
        )
    if pool.team_id is not None:
        key = "tm.membership_id"
        return (
            f"SELECT {columns} FROM {TM} tm JOIN {M} m ON m.id = tm.membership_id"
            f" JOIN {U} u ON u.id = m.user_id"
            f" WHERE tm.team_id = %s AND m.tenant_id = %s AND {eligible}"
            f"{_bounds(key, after, upto)} ORDER BY {key} LIMIT 1",
            [pool.team_id, tenant_id, *eligible_params],
        )
    return (
        f"SELECT {columns} FROM {M} m JOIN {U} u ON u.id = m.user_id"
        f" WHERE m.tenant_id = %s AND m.role = %s AND {eligible}{_bounds('m.id', after, upto)}"
        " ORDER BY m.id LIMIT 1",
        [tenant_id, pool.role, *eligible_params],
    )


def _bounds(key: str, after: str, upto: str) -> str:
    return (f" AND {key} > {after}" if after else "") + (f" AND {key} <= {upto}" if upto else "")


def pick_statement(
    pool: Pool,
    *,
    tenant_id,
    strategy: str,
    work: str,
    exclude: list,
    now,
    dry_run: bool = False,
    touch_agent: bool = True,
    count: bool = False,
    attach: list[Cte] = (),
    only_if: tuple[str, list] | None = None,
) -> tuple[str, list]:
    """`only_if`: an SQL condition (and its parameters) without which the statement
    locks and writes nothing (the result says `refused`), read in the statement's own
    snapshot."""
    counter = _counter(work)
    args = {"tenant_id": tenant_id, "strategy": strategy, "counter": counter, "exclude": exclude}
    lock = "" if dry_run else " FOR UPDATE"
    condition, condition_params = only_if or ("true", [])
    ctes = [
        (
            "routing_lock",
            f"SELECT last_agent_id, position FROM {C} WHERE tenant_id = %s AND pool_key = %s"
            f" AND {condition}{lock}",
            [tenant_id, pool.key, *condition_params],
        )
    ]
    gate = "" if dry_run else " WHERE EXISTS (SELECT 1 FROM routing_lock)"
    if strategy == Strategy.LEAST_BUSY:
        sql, params = _candidate(pool, **args)
        ctes.append(("routing_pick", f"SELECT * FROM ({sql}) p{gate} LIMIT 1", params))
    else:
        after_sql, after_params = _candidate(pool, **args, after=f"({LAST_AGENT})")
        # Wrapping round: the first agent of the pool, found among the ids up to the
        # last one (those after it are the first branch's, empty when this one runs).
        # Said outright, the bound keeps a prepared statement's generic plan on the
        # pool's index: ordered by id alone, the planner, who cannot tell how many agents
        # a tenant has, walked the primary key through every tenant's agents instead.
        first_sql, first_params = _candidate(
            pool, **args, upto=f"coalesce(({LAST_AGENT}), '{LAST_UUID}'::uuid)"
        )
        ctes.append(
            (
                "routing_pick",
                f"SELECT * FROM (({after_sql}) UNION ALL ({first_sql})) p{gate} LIMIT 1",
                [*after_params, *first_params],
            )
        )

    agent_columns = ", ".join(f"m.{column}" for column in AGENT_COLUMNS)
    user_columns = "p.email AS user_email, p.full_name AS user_full_name, p.user_is_active"
    if dry_run or not touch_agent:
        ctes.append(
            (
                ROUTED_AGENT,
                f"SELECT {agent_columns}, {user_columns} FROM {M} m JOIN routing_pick p ON p.id = m.id",  # noqa: E501
                [],
            )
        )
    else:
        changes = ["last_assigned_at = %s"]
        if count:
            changes.append(f"{counter} = m.{counter} + 1")
        # Evaluated again on the newest row version if a concurrent transaction changed
        # the agent after this statement's snapshot: capacity holds under concurrency.
        recheck = (
            "m.presence = 'online' AND m.is_active"
            f" AND (m.capacity IS NULL OR m.{counter} < m.capacity)"
        )
        if strategy == Strategy.LEAST_BUSY:
            recheck += (
                f" AND m.{counter} = p.load"
                " AND m.last_assigned_at IS NOT DISTINCT FROM p.last_assigned_at"
            )
        ctes.append(
            (
                ROUTED_AGENT,
                f"UPDATE {M} m SET {', '.join(changes)} FROM routing_pick p"
                f" WHERE m.id = p.id AND {recheck} RETURNING {agent_columns}, {user_columns}",
                [now],
            )
        )
    if not dry_run:
        ctes.append(
            (
                "routing_cursor",
                f"UPDATE {C} c SET last_agent_id = a.id, position = c.position + 1"
                f" FROM {ROUTED_AGENT} a WHERE c.tenant_id = %s AND c.pool_key = %s",
                [tenant_id, pool.key],
            )
        )
    ctes.extend((cte.name, cte.sql, cte.params) for cte in attach)

    sql = "WITH " + ",\n".join(f"{name} AS ({body})" for name, body, _ in ctes)
    sql += (
        f"\nSELECT NOT ({condition}), EXISTS (SELECT 1 FROM routing_lock),"
        " (SELECT id FROM routing_pick), (SELECT position FROM routing_lock), a.*"
        f" FROM (SELECT 1) AS one LEFT JOIN {ROUTED_AGENT} a ON true"
    )
    return sql, [param for _, _, params in ctes for param in params] + condition_params


def run_pick(sql: str, params: list, *, lock_pool: tuple | None = None) -> PickResult:
    """Run a pick statement. `lock_pool` (tenant id, pool key): outside a transaction,
    the pool's cursor is locked by a statement of its own just before, in the same
    round trip and transaction (core.locked_statement), so the pick neither waits for
    it nor reads again what the picks ahead of it changed."""
    if lock_pool is None:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
    else:
        row = fetch_one_after_lock(LOCK_POOL_SQL, list(lock_pool), sql, params)
    refused, has_cursor, candidate_id, cursor_position, *agent_row = row
    return PickResult(
        has_cursor,
        candidate_id,
        _agent_from(agent_row),
        refused=refused,
        cursor_position=cursor_position,
    )


def advance_cursor(*, tenant_id, pool_key: str, seen: int | None, agent_id) -> bool:
    """Move a pool's cursor to `agent_id` if no pick moved it since a pick read it at
    `seen` picks (None: it had no cursor yet; it has made none since): whether it moved.
    The count, not the agent: a pick in between that chose the same agent (least busy,
    or one eligible agent) changed that agent's load, which the reading pick did not
    see. It does not move either while another pick holds it (SKIP LOCKED): the caller
    holds agent rows by then, which a pick holding the cursor may be waiting for, so
    waiting here could deadlock. One statement, which a caller runs last before its
    COMMIT, so the cursor is locked from it to COMMIT alone."""
    pk = RoundRobinCursor._meta.pk.column
    sql = (
        f"WITH current AS (SELECT {pk} FROM {C} WHERE tenant_id = %s AND pool_key = %s"
        " AND position = %s FOR UPDATE SKIP LOCKED)"
        f" UPDATE {C} AS c SET last_agent_id = %s, position = c.position + 1"
        f" FROM current WHERE c.{pk} = current.{pk} RETURNING 1"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [tenant_id, pool_key, seen or 0, agent_id])
        return cursor.fetchone() is not None


def _agent_from(values) -> Membership | None:
    """The picked agent and their user, built as a queryset builds rows (`from_db`: the
    columns not read are deferred)."""
    if values[0] is None:
        return None
    agent = _from_row(Membership, AGENT_COLUMNS, values[: len(AGENT_COLUMNS)])
    email, full_name, is_active = values[len(AGENT_COLUMNS) :]
    agent.user = _from_row(
        User,
        ("id", "email", "full_name", "is_active"),
        (agent.user_id, email, full_name, is_active),
    )
    return agent


_model_orders: dict = {}


def _from_row(model, columns: tuple, values):
    """`model.from_db` for values named by `columns` in any order (`from_db` takes them
    in the model's field order)."""
    key = (model, columns)
    order = _model_orders.get(key)
    if order is None:
        attnames = [field.attname for field in model._meta.concrete_fields]
        order = _model_orders[key] = sorted(
            range(len(columns)), key=lambda n: attnames.index(columns[n])
        )
    return model.from_db("default", [columns[n] for n in order], [values[n] for n in order])


def create_cursor(*, tenant_id, pool: Pool) -> None:
    RoundRobinCursor.objects.for_tenant(tenant_id).bulk_create(
        [RoundRobinCursor(pool_key=pool.key)], ignore_conflicts=True
    )


def pool_counts(pool: Pool, *, tenant_id, work: str, exclude: list) -> tuple[int, int, int]:
    """(active agents, of them online, of them below capacity): for the record of a
    pool nobody in was picked, and the reason. Counts the pool: only when it failed."""
    counter = _counter(work)
    joins, where, params = "", ["m.tenant_id = %s"], [tenant_id]
    if pool.team_id is not None:
        joins = f" JOIN {TM} tm ON tm.membership_id = m.id AND tm.team_id = %s"
        params.insert(0, pool.team_id)
    elif pool.role is not None:
        where.append("m.role = %s")
        params.append(pool.role)
    if exclude:
        where.append("NOT (m.id = ANY(%s::uuid[]))")
        params.append(list(exclude))
    sql = (
        "SELECT count(*), count(*) FILTER (WHERE m.presence = 'online'),"
        " count(*) FILTER (WHERE m.presence = 'online'"
        f" AND (m.capacity IS NULL OR m.{counter} < m.capacity))"
        f" FROM {M} m{joins} JOIN {U} u ON u.id = m.user_id"
        f" WHERE {' AND '.join(where)} AND m.is_active AND u.is_active"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


def pick_with_orm(
    pool: Pool,
    *,
    tenant_id,
    strategy: str,
    work: str,
    exclude: list,
    now,
    dry_run: bool = False,
    touch_agent: bool = True,
    count: bool = False,
) -> PickResult:
    """The same pick in several ORM statements, for databases without data-modifying
    CTEs (SQLite, embedded mode). Same order, same re-checks."""
    from django.db.models import F, Q

    counter = _counter(work)
    cursors = RoundRobinCursor.objects.for_tenant(tenant_id).filter(pool_key=pool.key)
    cursor = (cursors if dry_run else cursors.select_for_update()).first()
    if cursor is None and not dry_run:
        return PickResult(False, None, None)
    agents = (
        Membership.objects.for_tenant(tenant_id)
        .filter(presence="online", is_active=True, user__is_active=True)
        .filter(Q(capacity__isnull=True) | Q(**{f"{counter}__lt": F("capacity")}))
        .exclude(pk__in=list(exclude))
        .select_related("user")
    )
    if pool.team_id is not None:
        agents = agents.filter(team_memberships__team_id=pool.team_id)
    else:
        agents = agents.filter(role=pool.role)
    if strategy == Strategy.LEAST_BUSY:
        order = (counter, F("last_assigned_at").asc(nulls_first=True), "pk")
        candidate = agents.order_by(*order).first()
    else:
        last = cursor.last_agent_id if cursor is not None else None
        candidate = (agents.filter(pk__gt=last) if last else agents.none()).order_by("pk").first()
        candidate = candidate or agents.order_by("pk").first()
    if candidate is None:
        return PickResult(cursor is not None, None, None)
    if not (dry_run or not touch_agent):
        recheck = Membership.objects.for_tenant(tenant_id).filter(
            Q(capacity__isnull=True) | Q(**{f"{counter}__lt": F("capacity")}),
            pk=candidate.pk,
            presence="online",
            is_active=True,
        )
        if strategy == Strategy.LEAST_BUSY:
            recheck = recheck.filter(
                **{counter: getattr(candidate, counter)},
                last_assigned_at=candidate.last_assigned_at,
            )
        changes = {"last_assigned_at": now}
        if count:
            changes[counter] = F(counter) + 1
        if not recheck.update(**changes):
            return PickResult(True, candidate.pk, None)
        candidate.last_assigned_at = now
        if count:
            setattr(candidate, counter, getattr(candidate, counter) + 1)
    if not dry_run:
        cursors.update(last_agent_id=candidate.pk, position=F("position") + 1)
    return PickResult(True, candidate.pk, candidate)


def pool_counts_with_orm(pool: Pool, *, tenant_id, work: str, exclude: list):
    from django.db.models import Count, F, Q

    counter = _counter(work)
    agents = (
        Membership.objects.for_tenant(tenant_id)
        .filter(is_active=True, user__is_active=True)
        .exclude(pk__in=list(exclude))
    )
    if pool.team_id is not None:
        agents = agents.filter(team_memberships__team_id=pool.team_id)
    else:
        agents = agents.filter(role=pool.role)
    online = Q(presence="online")
    below = Q(capacity__isnull=True) | Q(**{f"{counter}__lt": F("capacity")})
    totals = agents.aggregate(
        agents=Count("pk"),
        available=Count("pk", filter=online),
        eligible=Count("pk", filter=online & below),
    )
    return totals["agents"], totals["available"], totals["eligible"]
