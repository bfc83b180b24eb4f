"""Migration operations of our own."""

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations
from django.db.migrations.operations import AddIndex, RemoveIndex


def drop_index(
    name: str,
    *,
    table: str,
    columns: str,
    postgresql_only: bool = False,
    concurrently: bool = False,
):
    """Drop index `name` (created again on the way back as `ON table (columns)`).

    For an index Django made that the schema no longer needs: a foreign key's own index
    where a composite index leads with the same column (the field's state becomes
    `db_index=False` in the same migration, by SeparateDatabaseAndState), or the
    pattern-matching twin (`varchar_pattern_ops`, PostgreSQL only) Django adds to an
    indexed text column, which serves `LIKE 'prefix%'`, where no query makes one.
    Each is written on every insert. Dropping by name rather than by AlterField keeps
    Django from dropping and re-validating the foreign key over the whole table.

    `concurrently` (in a migration with `atomic = False`): on PostgreSQL, DROP and CREATE
    INDEX CONCURRENTLY, so the table's writes never queue behind the drop.
    """

    def applies(schema_editor) -> bool:
        return not postgresql_only or schema_editor.connection.vendor == "postgresql"

    def how(schema_editor) -> str:
        postgresql = schema_editor.connection.vendor == "postgresql"
        return "CONCURRENTLY " if concurrently and postgresql else ""

    def forward(apps, schema_editor):
        if applies(schema_editor):
            quote = schema_editor.quote_name
            schema_editor.execute(f"DROP INDEX {how(schema_editor)}IF EXISTS {quote(name)}")

    def backward(apps, schema_editor):
        if applies(schema_editor):
            quote = schema_editor.quote_name
            schema_editor.execute(
                f"CREATE INDEX {how(schema_editor)}IF NOT EXISTS {quote(name)}"
                f" ON {quote(table)} ({columns})"
            )

    return migrations.RunPython(forward, backward)


class _ConcurrentlyOnPostgres:
    """On PostgreSQL the concurrent operation (the next class in line); elsewhere, which
    has no such thing, the plain one (`plain`). The migration sets `atomic = False`."""

    plain: type

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_forwards(app_label, schema_editor, from_state, to_state)
        else:
            self.plain.database_forwards(self, app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            super().database_backwards(app_label, schema_editor, from_state, to_state)
        else:
            self.plain.database_backwards(self, app_label, schema_editor, from_state, to_state)


class AddIndexConcurrentlyOnPostgres(_ConcurrentlyOnPostgres, AddIndexConcurrently):
    """AddIndex that, on PostgreSQL, builds the index with CREATE INDEX CONCURRENTLY, so
    the writes of a large table (the activity log, the sessions) go on while it builds."""

    plain = AddIndex


class RemoveIndexConcurrentlyOnPostgres(_ConcurrentlyOnPostgres, RemoveIndexConcurrently):
    """RemoveIndex that, on PostgreSQL, drops the index with DROP INDEX CONCURRENTLY."""

    plain = RemoveIndex


def keep_pattern_index_only(*, table: str, column: str, plain: str, name: str):
    """An indexed text column's two PostgreSQL indexes (Django's plain one, and its
    `varchar_pattern_ops` twin `<plain>_like`) become one, `name`: the twin, renamed
    (nothing rebuilt), serves `=` as well as `LIKE 'prefix%'`. Elsewhere (one plain
    index) the index is made again under `name`. The model's state says
    `Index(fields=[column], opclasses=["varchar_pattern_ops"], name=name)`. In a
    migration with `atomic = False`: the drop (and the way back's build) is concurrent on
    PostgreSQL."""

    def forward(apps, schema_editor):
        quote = schema_editor.quote_name
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(plain)}")
            schema_editor.execute(f"ALTER INDEX {quote(plain + '_like')} RENAME TO {quote(name)}")
        else:
            schema_editor.execute(f"DROP INDEX IF EXISTS {quote(plain)}")
            schema_editor.execute(f"CREATE INDEX {quote(name)} ON {quote(table)} ({quote(column)})")

    def backward(apps, schema_editor):
        quote = schema_editor.quote_name
        how = ""
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"ALTER INDEX {quote(name)} RENAME TO {quote(plain + '_like')}")
            how = "CONCURRENTLY "
        else:
            schema_editor.execute(f"DROP INDEX IF EXISTS {quote(name)}")
        schema_editor.execute(
            f"CREATE INDEX {how}{quote(plain)} ON {quote(table)} ({quote(column)})"
        )

    return migrations.RunPython(forward, backward)
