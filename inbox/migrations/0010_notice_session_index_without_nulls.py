import django.db.models.deletion
from django.db import migrations, models

from core.migration_ops import AddIndexConcurrentlyOnPostgres, drop_index


class Migration(migrations.Migration):
    """A notice's session indexed without its NULLs, built before the foreign key's own index goes, concurrently on PostgreSQL (core.migration_ops)."""

    atomic = False

    dependencies = [
        ("inbox", "0009_partial_team_and_agent_indexes"),
        ("outbox", "0005_indexes_led_by_composites"),
        ("teams", "0007_counters_checked_once"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="sessionnotice",
            index=models.Index(
                condition=models.Q(("session__isnull", False)),
                fields=["session"],
                name="session_notice_by_session",
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="sessionnotice",
                    name="session",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="notices",
                        to="inbox.inboxsession",
                    ),
                ),
            ],
            database_operations=[
                drop_index(
                    "inbox_sessionnotice_session_id_1509f1d4",
                    table="inbox_sessionnotice",
                    columns="session_id",
                    concurrently=True,
                ),
            ],
        ),
    ]
