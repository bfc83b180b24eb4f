import django.db.models.deletion
from django.db import migrations, models

from core.migration_ops import (
    AddIndexConcurrentlyOnPostgres,
    RemoveIndexConcurrentlyOnPostgres,
    drop_index,
)


class Migration(migrations.Migration):
    """A session's team and agent indexed without their NULLs (a handover without a
    team, a session nobody could take, wrote an entry for nothing), built before the
    foreign keys' own indexes go, concurrently on PostgreSQL (core.migration_ops). The
    agent's index has the status too, and replaces the one of open sessions by agent:
    one entry a session instead of two."""

    atomic = False

    dependencies = [
        ("inbox", "0008_indexes_led_by_composites"),
        ("teams", "0007_counters_checked_once"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="inboxsession",
            index=models.Index(
                condition=models.Q(("team__isnull", False)),
                fields=["team"],
                name="session_by_team",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="inboxsession",
            index=models.Index(
                condition=models.Q(("assigned_agent__isnull", False)),
                fields=["assigned_agent", "status"],
                name="session_by_agent",
            ),
        ),
        RemoveIndexConcurrentlyOnPostgres(model_name="inboxsession", name="session_open_by_agent"),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="inboxsession",
                    name="team",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="sessions",
                        to="teams.team",
                    ),
                ),
                migrations.AlterField(
                    model_name="inboxsession",
                    name="assigned_agent",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="sessions",
                        to="teams.membership",
                    ),
                ),
            ],
            database_operations=[
                drop_index(
                    "inbox_inboxsession_team_id_6bb811b3",
                    table="inbox_inboxsession",
                    columns="team_id",
                    concurrently=True,
                ),
                drop_index(
                    "inbox_inboxsession_assigned_agent_id_50bc1a92",
                    table="inbox_inboxsession",
                    columns="assigned_agent_id",
                    concurrently=True,
                ),
            ],
        ),
    ]
