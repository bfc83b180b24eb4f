"""Lock waits, for race tests that hold one side until the other one waits."""

from django.db import connection

# This database's sessions only: another test run on the same server has its own waits.
# A wait for another transaction is a `transactionid` lock, which names no database; the
# waiting session does.
_WAITS = """
    SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE NOT l.granted AND a.datname = current_database()
"""


def lock_waits() -> int:
    with connection.cursor() as cursor:
        cursor.execute(_WAITS)
        return cursor.fetchone()[0]
