import django.db.models.deletion
from django.db import migrations, models

from core.migration_ops import drop_index


class Migration(migrations.Migration):
    """Foreign keys' own indexes where a composite index leads with the same column
    (core.migration_ops)."""

    dependencies = [
        ("inbox", "0007_accept_window_and_notices"),
        ("teams", "0006_indexes_led_by_composites"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="inboxsession",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="sessions",
                        to="teams.tenant",
                    ),
                ),
                migrations.AlterField(
                    model_name="sessionnotice",
                    name="recipient",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="session_notices",
                        to="teams.membership",
                    ),
                ),
            ],
            database_operations=[
                drop_index(
                    "inbox_inboxsession_tenant_id_4af2bb5d",
                    table="inbox_inboxsession",
                    columns="tenant_id",
                ),
                drop_index(
                    "inbox_sessionnotice_recipient_id_b6fa9f98",
                    table="inbox_sessionnotice",
                    columns="recipient_id",
                ),
            ],
        ),
    ]
