"""A connection whose prepared statements outlived a migration is dropped, not kept.

Statements are prepared per connection (config/settings.py, `DB_PREPARED_STATEMENTS`).
When a migration changes a column's type (a wider `max_length`, say), PostgreSQL refuses
to run a prepared statement that reads it: "cached plan must not change result type"
(SQLSTATE 0A000). Inside a transaction psycopg recovers at the rollback; outside one,
every later run on that connection fails the same way while the connection lives
(`CONN_MAX_AGE`, a worker's whole life), and the health check (`SELECT 1`) does not
notice. Here such a connection is marked obsolete at the first failure: Django closes it
when the request or task ends (`close_old_connections`), and the next one starts with a
fresh connection and nothing prepared. One request per connection fails, not a minute
of them.
"""

from django.db import NotSupportedError
from django.db.backends.signals import connection_created

STALE_PLAN = "0A000"  # feature_not_supported: "cached plan must not change result type"


def drop_connection_on_stale_plan(execute, sql, params, many, context):
    try:
        return execute(sql, params, many, context)
    except NotSupportedError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == STALE_PLAN:
            context["connection"].close_at = 0  # obsolete: closed at the end of this unit
        raise


def install(sender, connection, **kwargs) -> None:
    if connection.vendor == "postgresql" and (
        drop_connection_on_stale_plan not in connection.execute_wrappers
    ):
        # First in the list: `execute_wrapper()` blocks push and pop at its end.
        connection.execute_wrappers.insert(0, drop_connection_on_stale_plan)


def connect() -> None:
    connection_created.connect(install, dispatch_uid="core-stale-plans")
