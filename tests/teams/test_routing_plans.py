"""The pick's plan as a prepared statement runs it: a generic plan, made without knowing
the tenant. A tenant's pick reads its own pool's index however many agents the other
tenants have (issue #10: constant in pool size and load)."""

import json

import pytest
from django.db import connection
from django.utils import timezone

from teams.models import Membership, Role, RoundRobinCursor, Strategy, User
from teams.routing import picking
from tests.factories import MembershipFactory, TenantFactory

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

OTHER_TENANTS_AGENTS = 20000


def _crowd(tenant, count: int) -> None:
    users = User.objects.bulk_create(
        [User(email=f"crowd-{n}@example.test", full_name=f"Crowd {n}") for n in range(count)]
    )
    Membership.objects.for_tenant(tenant).bulk_create(
        [Membership(user=user, role=Role.MEMBER) for user in users]
    )


def _generic_plan_buffers(sql: str, params: list) -> tuple[int, dict]:
    """Run `sql` as a prepared statement on its generic plan: (shared buffers it touched,
    the plan)."""
    parts = sql.split("%s")
    numbered = "".join(
        part + (f"${n + 1}" if n < len(parts) - 1 else "") for n, part in enumerate(parts)
    )
    values = connection.ops.compose_sql(", ".join(["%s"] * len(params)), params)
    with connection.cursor() as cursor:
        cursor.execute("SET plan_cache_mode = force_generic_plan")
        try:
            cursor.execute(f"PREPARE pick_plan AS {numbered}")
            cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE pick_plan({values})")
            (plan,) = cursor.fetchone()
            cursor.execute("DEALLOCATE pick_plan")
        finally:
            cursor.execute("RESET plan_cache_mode")
    plan = plan if isinstance(plan, list) else json.loads(plan)
    top = plan[0]["Plan"]
    return top["Shared Hit Blocks"] + top["Shared Read Blocks"], top


def test_a_one_agent_pools_round_robin_reads_its_pool_whatever_other_tenants_have():
    """A pool of one agent wraps round on every pick (the cursor is on its only agent).
    Ordered by id alone, the wrap-around's generic plan walked the primary key through
    the other tenant's agents: thousands of buffers instead of a handful."""
    crowded, small = TenantFactory(), TenantFactory()
    _crowd(crowded, OTHER_TENANTS_AGENTS)
    agent = MembershipFactory(tenant=small)
    pool = picking.Pool("member", "sessions:tier:member", role=Role.MEMBER)
    RoundRobinCursor.objects.for_tenant(small).create(pool_key=pool.key, last_agent_id=agent.pk)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE teams_membership, teams_user")

    sql, params = picking.pick_statement(
        pool,
        tenant_id=small.pk,
        strategy=Strategy.ROUND_ROBIN,
        work="sessions",
        exclude=[],
        now=timezone.now(),
        dry_run=True,
    )
    buffers, plan = _generic_plan_buffers(sql, params)

    assert plan["Actual Rows"] == 1
    assert buffers < 60, f"{buffers} buffers for a pool of one agent"
