import django.db.models.deletion
from django.db import migrations, models

from core.migration_ops import drop_index


class Migration(migrations.Migration):
    """Foreign keys' own indexes where a unique index leads with the same column
    (core.migration_ops). An agent's row is rewritten with every pick (its counters are
    indexed): one index less to write each time."""

    dependencies = [
        ("teams", "0005_routing_indexes_and_cursor"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="membership",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="memberships",
                        to="teams.tenant",
                    ),
                ),
                migrations.AlterField(
                    model_name="roundrobincursor",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="teams.tenant",
                    ),
                ),
            ],
            database_operations=[
                drop_index(
                    "teams_membership_tenant_id_90254df6",
                    table="teams_membership",
                    columns="tenant_id",
                ),
                drop_index(
                    "teams_roundrobincursor_tenant_id_ce61ee14",
                    table="teams_roundrobincursor",
                    columns="tenant_id",
                ),
            ],
        ),
    ]
