"""Assignment strategies: a registry of small classes with one `pick()` each."""

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.db import connection

from teams.models import Membership, RoundRobinCursor, Strategy, Tenant

_EPOCH = datetime.datetime.min.replace(tzinfo=datetime.UTC)


@dataclass(frozen=True)
class PickContext:
    tenant: Tenant
    pool_key: str
    load: Mapping  # agent id -> open items
    dry_run: bool = False


class AssignmentStrategy:
    name: str

    def pick(self, candidates: Sequence[Membership], ctx: PickContext) -> Membership | None:
        raise NotImplementedError


STRATEGIES: dict[str, AssignmentStrategy] = {}


def register(cls):
    STRATEGIES[cls.name] = cls()
    return cls


def get_strategy(name: str) -> AssignmentStrategy:
    return STRATEGIES.get(name) or STRATEGIES[Strategy.ROUND_ROBIN]


def _db_value(model, field_name, value):
    return model._meta.get_field(field_name).target_field.get_db_prep_value(value, connection)


def advance_cursor(*, tenant: Tenant, pool_key: str) -> int:
    """Bump the pool's cursor and return its new position, in one statement.

    The UPDATE's row lock is held until the caller's transaction ends, so concurrent
    picks from the same pool queue up and each sees the previous one's position.
    """
    sql = (
        f"UPDATE {RoundRobinCursor._meta.db_table} SET position = position + 1 "  # noqa: S608
        "WHERE tenant_id = %s AND pool_key = %s RETURNING position"
    )
    params = [_db_value(RoundRobinCursor, "tenant", tenant.pk), pool_key]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
        if row is None:
            RoundRobinCursor.objects.for_tenant(tenant).bulk_create(
                [RoundRobinCursor(pool_key=pool_key)], ignore_conflicts=True
            )
            cursor.execute(sql, params)
            row = cursor.fetchone()
    return row[0]


def peek_cursor(*, tenant: Tenant, pool_key: str) -> int:
    current = (
        RoundRobinCursor.objects.for_tenant(tenant)
        .filter(pool_key=pool_key)
        .values_list("position", flat=True)
        .first()
    )
    return (current or 0) + 1


@register
class RoundRobin(AssignmentStrategy):
    """Agents in a fixed order (by id), each pick the next one after the last."""

    name = Strategy.ROUND_ROBIN

    def pick(self, candidates, ctx):
        if not candidates:
            return None
        ordered = sorted(candidates, key=lambda agent: str(agent.pk))
        bump = peek_cursor if ctx.dry_run else advance_cursor
        position = bump(tenant=ctx.tenant, pool_key=ctx.pool_key)
        return ordered[(position - 1) % len(ordered)]


@register
class LeastBusy(AssignmentStrategy):
    """Fewest open items; on a tie, the agent who has waited longest since an assignment."""

    name = Strategy.LEAST_BUSY

    def pick(self, candidates, ctx):
        if not candidates:
            return None
        return min(
            candidates,
            key=lambda agent: (
                ctx.load.get(agent.pk, 0),
                agent.last_assigned_at or _EPOCH,
                str(agent.pk),
            ),
        )


@register
class Manual(AssignmentStrategy):
    """Never picks: a person assigns the work."""

    name = Strategy.MANUAL

    def pick(self, candidates, ctx):
        return None
