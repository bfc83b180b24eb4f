"""An agent's two counters were checked twice each: PositiveIntegerField's own CHECK next
to the named `membership_*_nonneg`. The fields become IntegerField and the automatic
checks are dropped (no table rewrite; the named ones stay). On PostgreSQL only: SQLite
would remake the table, whose partial NULLS FIRST indexes it cannot create, and its
duplicate check costs nothing worth the remake."""

from django.db import migrations, models

TABLE = "teams_membership"
COUNTERS = {
    "teams_membership_current_lead_count_check": "current_lead_count",
    "teams_membership_open_session_count_check": "open_session_count",
}


def drop_automatic_checks(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for name in COUNTERS:
        schema_editor.execute(f"ALTER TABLE {quote(TABLE)} DROP CONSTRAINT IF EXISTS {quote(name)}")


def add_automatic_checks(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    for name, column in COUNTERS.items():
        schema_editor.execute(
            f"ALTER TABLE {quote(TABLE)} ADD CONSTRAINT {quote(name)} CHECK ({quote(column)} >= 0)"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("teams", "0006_indexes_led_by_composites"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="membership",
                    name="current_lead_count",
                    field=models.IntegerField(default=0, editable=False),
                ),
                migrations.AlterField(
                    model_name="membership",
                    name="open_session_count",
                    field=models.IntegerField(default=0, editable=False),
                ),
            ],
            database_operations=[
                migrations.RunPython(drop_automatic_checks, add_automatic_checks),
            ],
        ),
    ]
