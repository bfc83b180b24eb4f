"""The schema's indexes and checks: every foreign key can be followed from the row it points at
(a tenant's deletion, a membership's, the admin's related lists), yet no column carries
two indexes where one serves (each is written on every insert)."""

import pytest
from django.db import connection

pytestmark = [pytest.mark.django_db, pytest.mark.postgres]


def _rows(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def test_every_foreign_key_column_leads_some_index():
    unindexed = _rows(
        """
        SELECT c.conrelid::regclass::text, a.attname
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f' AND array_length(c.conkey, 1) = 1
          AND NOT EXISTS (
            SELECT 1 FROM pg_index i
            WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1]
              AND (i.indpred IS NULL OR pg_get_expr(i.indpred, i.indrelid)
                                        = format('(%%I IS NOT NULL)', a.attname))
          )
        ORDER BY 1, 2
        """
    )
    assert unindexed == []


def _foreign_keys():
    return _rows(
        """
        SELECT c.conrelid::regclass::text, a.attname
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.contype = 'f' AND array_length(c.conkey, 1) = 1
          AND c.connamespace = 'public'::regnamespace
        ORDER BY 1, 2
        """
    )


def test_the_lookup_a_deleted_row_makes_of_each_foreign_key_uses_an_index():
    """When a tenant, an agent or a team is deleted, PostgreSQL looks up the rows that
    point at it (`… WHERE $1 = column`, a generic plan). An index without its NULLs
    serves that lookup as well as a full one; this shows the planner agrees, for every
    foreign key."""
    from django.db import transaction

    seq_scans = []
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        for number, (table, column) in enumerate(_foreign_keys()):
            name = f"fk_lookup_{number}"
            quoted_table, quoted_column = (connection.ops.quote_name(n) for n in (table, column))
            # Names from the catalog, quoted.
            lookup = f"SELECT 1 FROM {quoted_table} WHERE $1 = {quoted_column}"  # noqa: S608
            cursor.execute(f"PREPARE {name} AS {lookup}")
            cursor.execute(f"EXPLAIN EXECUTE {name}(NULL)")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            cursor.execute(f"DEALLOCATE {name}")
            # The key's own column in an index's condition, not an index read whole.
            if not any(
                line.strip().startswith(("Index Cond:", "Recheck Cond:")) and column in line
                for line in plan.splitlines()
            ):
                seq_scans.append((table, column, plan))
    assert len(_foreign_keys()) > 40  # every table's keys were looked at
    assert seq_scans == []


# What a handover, a new lead and the SLA sweep write (every index entry counts).
HOT_TABLES = [
    "audit_activitylog",
    "inbox_inboxsession",
    "inbox_sessionnotice",
    "leads_lead",
    "leads_leadreassignment",
    "leads_notification",
    "outbox_outboundmessage",
    "teams_membership",
    "teams_roundrobincursor",
]


# Pattern-matching indexes a prefix query uses: the audit admin's filter by how people
# acted (`via__startswith="job:"`, "api_key:", "command:"), which also serves `via = …`.
PREFIX_SEARCHED = ["activity_via"]


def test_the_tables_a_handover_writes_keep_no_index_another_one_covers():
    """A plain single-column index on a column that a composite index (without a
    condition) leads with, or a pattern-matching one no prefix query uses."""
    covered = _rows(
        """
        SELECT i.indexrelid::regclass::text
        FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid::regclass::text = ANY(%s)
          AND i.indnatts = 1 AND NOT i.indisunique AND i.indpred IS NULL
          AND EXISTS (
            SELECT 1 FROM pg_index other
            WHERE other.indrelid = i.indrelid AND other.indexrelid <> i.indexrelid
              AND other.indnatts > 1 AND other.indkey[0] = i.indkey[0]
              AND (other.indpred IS NULL OR pg_get_expr(other.indpred, other.indrelid)
                                            = format('(%%I IS NOT NULL)', a.attname))
          )
        UNION ALL
        SELECT indexname FROM pg_indexes
        WHERE tablename = ANY(%s) AND indexdef LIKE '%%pattern_ops%%'
          AND NOT indexname = ANY(%s)
        ORDER BY 1
        """,
        [HOT_TABLES, HOT_TABLES, PREFIX_SEARCHED],
    )
    assert covered == []


def test_the_tables_a_handover_writes_index_no_null_foreign_key():
    """A single-column index on a nullable foreign key leaves its NULLs out (`WHERE
    column IS NOT NULL`): a handover without a team, an API key acting with no person
    behind it, a lead nobody has had before wrote an index entry nobody looks up. (A
    unique index, a one-to-one, keeps them: its rule is on the values.)"""
    with_nulls = _rows(
        """
        SELECT i.indexrelid::regclass::text
        FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
        WHERE i.indrelid::regclass::text = ANY(%s)
          AND i.indnatts = 1 AND NOT i.indisunique AND NOT a.attnotnull
          AND i.indpred IS NULL
          AND EXISTS (
            SELECT 1 FROM pg_constraint c
            WHERE c.contype = 'f' AND c.conrelid = i.indrelid AND c.conkey = ARRAY[a.attnum]
          )
        ORDER BY 1
        """,
        [HOT_TABLES],
    )
    assert with_nulls == []


def test_the_audit_filters_by_how_people_acted_use_its_one_index():
    """`via` has one index, `varchar_pattern_ops`: the audit admin's exact filter and
    its prefix filter ("every job") both use it."""
    from django.db import transaction

    from audit.models import ActivityLog

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        exact = ActivityLog.all_tenants.filter(via="admin").explain()
        prefix = ActivityLog.all_tenants.filter(via__startswith="job:").explain()
    assert "activity_via" in exact
    assert "activity_via" in prefix


def test_an_agents_open_sessions_are_read_through_the_agents_one_index(tenant, teammate, owner):
    """One index serves an agent's sessions and their open ones (`session_by_agent`,
    agent then status), so a session writes one entry for its agent, not two. (Planned
    over a few thousand sessions of two agents, most of them closed.)"""
    from django.db import transaction

    from inbox.models import InboxSession

    InboxSession.all_tenants.bulk_create(
        InboxSession(
            tenant=tenant,
            contact_id=f"c-{n}",
            assigned_agent=teammate if n % 2 else owner,
            status="open" if n % 50 == 0 else "closed",
        )
        for n in range(4000)
    )
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("ANALYZE inbox_inboxsession")
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = InboxSession.all_tenants.filter(assigned_agent=teammate, status="open").explain()
    assert "session_by_agent" in plan
    assert "(status)::text = 'open'" in plan.split("Index Cond:")[1]


def test_no_table_checks_the_same_condition_twice():
    """Every UPDATE and INSERT evaluates each CHECK constraint of its table (PostgreSQL
    reads and prepares each one again per statement): a second, identical one is work
    without a rule (a PositiveIntegerField's own check next to a named one, say)."""
    doubled = _rows(
        """
        SELECT conrelid::regclass::text, pg_get_constraintdef(oid), array_agg(conname ORDER BY 1)
        FROM pg_constraint
        WHERE contype = 'c' AND connamespace = 'public'::regnamespace
        GROUP BY conrelid, pg_get_constraintdef(oid)
        HAVING count(*) > 1
        """
    )
    assert doubled == []
