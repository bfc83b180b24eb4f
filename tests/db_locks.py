"""Race-test helpers: lock waits (hold one side until the other one waits) and threads
whose failures the test sees."""

import threading

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


def in_thread(work, errors: list) -> threading.Thread:
    """Start `work` in a thread of its own (its own connection, closed at the end); what
    it raises goes into `errors`, for the test to assert on: a failed assert in a thread
    would otherwise fail nothing."""

    def run():
        try:
            work()
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread
