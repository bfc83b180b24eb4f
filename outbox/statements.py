"""The delivery path's few SQL statements, run cheaply.

A worker runs the same handful of statements for every message (claim, outcome, a
channel's log row). Through Django's cursor each is bound on the client (the values
spelled into the SQL text), so PostgreSQL parses and plans it every time, and the ORM
builds it every time; the claim's plan alone was a visible share of the database's CPU.
Here, on PostgreSQL, they run as server-side prepared statements (psycopg plans each
once per connection) on Django's own connection and transaction; elsewhere (SQLite)
through Django's cursor as before. Errors are Django's `DatabaseError`s either way.

Django turns psycopg's prepared statements off for the sake of connection poolers; these
statements turn them back on for themselves only (Django's own cursors never prepare).
Behind PgBouncer use session pooling, or PgBouncer 1.21+ with `max_prepared_statements`,
or set OUTBOX_PREPARED_STATEMENTS=False.
"""

import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections


def may_prepare() -> bool:
    """Whether session state (prepared statements, a session's function) may be used."""
    return bool(getattr(settings, "OUTBOX_PREPARED_STATEMENTS", True))


def execute(sql: str, params, *, fetch: bool = False):
    """Run `sql` (`%s` / `%(name)s` placeholders) with `params`; the rows if `fetch`,
    else the number of rows it changed."""
    db = connections[DEFAULT_DB_ALIAS]  # one thread-local lookup, not one per attribute
    if db.vendor != "postgresql":
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if fetch else cursor.rowcount
    prepare = may_prepare()
    with db.wrap_database_errors:
        db.ensure_connection()
        raw = db.connection
        if prepare and raw.prepare_threshold is None:
            raw.prepare_threshold = 5  # only server-side-binding cursors (ours) use it
        # A plain psycopg cursor binds on the server; Django's binds on the client.
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(sql, params, prepare=prepare or None)
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
