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
            WHERE i.indrelid = c.conrelid AND i.indkey[0] = c.conkey[1] AND i.indpred IS NULL
          )
        ORDER BY 1, 2
        """
    )
    assert unindexed == []


HOT_TABLES = [
    "audit_activitylog",
    "inbox_inboxsession",
    "inbox_sessionnotice",
    "outbox_outboundmessage",
    "teams_membership",
    "teams_roundrobincursor",
]


# Pattern-matching indexes a prefix query uses: the audit admin's filter by how people
# acted (`via__startswith="job:"`, "api_key:", "command:").
PREFIX_SEARCHED = ["audit_activitylog_via_4a25f244_like"]


def test_the_tables_a_handover_writes_keep_no_index_another_one_covers():
    """A plain single-column index on a column that a composite index (without a
    condition) leads with, or a pattern-matching one no prefix query uses."""
    covered = _rows(
        """
        SELECT i.indexrelid::regclass::text
        FROM pg_index i
        WHERE i.indrelid::regclass::text = ANY(%s)
          AND i.indnatts = 1 AND NOT i.indisunique AND i.indpred IS NULL
          AND EXISTS (
            SELECT 1 FROM pg_index other
            WHERE other.indrelid = i.indrelid AND other.indexrelid <> i.indexrelid
              AND other.indnatts > 1 AND other.indkey[0] = i.indkey[0]
              AND other.indpred IS NULL
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
