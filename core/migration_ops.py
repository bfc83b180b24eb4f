"""Migration operations of our own."""

from django.db import migrations


def drop_index(name: str, *, table: str, columns: str, postgresql_only: bool = False):
    """Drop index `name` (created again on the way back as `ON table (columns)`).

    For an index Django made that the schema no longer needs: a foreign key's own index
    where a composite index leads with the same column (the field's state becomes
    `db_index=False` in the same migration, by SeparateDatabaseAndState), or the
    pattern-matching twin (`varchar_pattern_ops`, PostgreSQL only) Django adds to an
    indexed text column, which serves `LIKE 'prefix%'`, where no query makes one.
    Each is written on every insert. Dropping by name rather than by AlterField keeps
    Django from dropping and re-validating the foreign key over the whole table.
    """

    def applies(schema_editor) -> bool:
        return not postgresql_only or schema_editor.connection.vendor == "postgresql"

    def forward(apps, schema_editor):
        if applies(schema_editor):
            schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")

    def backward(apps, schema_editor):
        if applies(schema_editor):
            quote = schema_editor.quote_name
            schema_editor.execute(
                f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} ({columns})"
            )

    return migrations.RunPython(forward, backward)
