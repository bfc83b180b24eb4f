"""The delivery path's few SQL statements, run cheaply.

A worker runs the same handful of statements for every message (claim, outcome, a
channel's log row); here they are plain SQL built once, not ORM queries built every
time. On PostgreSQL Django's connection binds values on the server and psycopg prepares
a statement a connection keeps running (config/settings.py, `DB_PREPARED_STATEMENTS`),
so each is parsed and planned once per connection; the claim's plan alone was a visible
share of the database's CPU. Errors are Django's `DatabaseError`s.
"""

from django.conf import settings
from django.db import connection


def may_prepare() -> bool:
    """Whether session state (prepared statements, a session's function) may be used."""
    return bool(getattr(settings, "DB_PREPARED_STATEMENTS", True))


def execute(sql: str, params, *, fetch: bool = False):
    """Run `sql` (`%s` / `%(name)s` placeholders) with `params`; the rows if `fetch`,
    else the number of rows it changed."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if fetch else cursor.rowcount


def insert_row(instance) -> None:
    """INSERT one new model instance (fields' defaults and `auto_now` applied as `save()`
    would), as a prepared statement; no signals are sent (like `bulk_create`)."""
    meta = type(instance)._meta
    fields = meta.concrete_fields
    values = [
        field.get_db_prep_save(field.pre_save(instance, add=True), connection=connection)
        for field in fields
    ]
    columns = ", ".join(connection.ops.quote_name(field.column) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    execute(
        f"INSERT INTO {connection.ops.quote_name(meta.db_table)} ({columns}) "  # noqa: S608
        f"VALUES ({placeholders})",
        values,
    )
    instance._state.adding = False
    instance._state.db = connection.alias
