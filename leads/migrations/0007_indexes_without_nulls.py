import django.db.models.deletion
from django.db import migrations, models

from core.migration_ops import AddIndexConcurrentlyOnPostgres, drop_index


class Migration(migrations.Migration):
    """Foreign keys indexed without their NULLs (a lead without a team, a first assignment, the system's moves wrote entries for nothing), and the foreign keys' own indexes where a composite index leads with the same column. The new indexes are built before the old ones go, concurrently on PostgreSQL (core.migration_ops)."""

    atomic = False

    dependencies = [
        ("leads", "0006_unassigned_reason_not_accepted"),
        ("teams", "0007_counters_checked_once"),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="lead",
            index=models.Index(
                condition=models.Q(("team__isnull", False)), fields=["team"], name="lead_by_team"
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="lead",
            index=models.Index(
                condition=models.Q(("previous_agent__isnull", False)),
                fields=["previous_agent"],
                name="lead_by_previous_agent",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="leadreassignment",
            index=models.Index(
                condition=models.Q(("from_agent__isnull", False)),
                fields=["from_agent"],
                name="reassignment_from_agent",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="leadreassignment",
            index=models.Index(
                condition=models.Q(("to_agent__isnull", False)),
                fields=["to_agent"],
                name="reassignment_to_agent",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="leadreassignment",
            index=models.Index(
                condition=models.Q(("reassigned_by__isnull", False)),
                fields=["reassigned_by"],
                name="reassignment_reassigned_by",
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="lead",
                    name="assigned_agent",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="leads",
                        to="teams.membership",
                    ),
                ),
                migrations.AlterField(
                    model_name="lead",
                    name="previous_agent",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="teams.membership",
                    ),
                ),
                migrations.AlterField(
                    model_name="lead",
                    name="team",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="leads",
                        to="teams.team",
                    ),
                ),
                migrations.AlterField(
                    model_name="lead",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="leads",
                        to="teams.tenant",
                    ),
                ),
                migrations.AlterField(
                    model_name="leadreassignment",
                    name="from_agent",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="teams.membership",
                    ),
                ),
                migrations.AlterField(
                    model_name="leadreassignment",
                    name="lead",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="reassignments",
                        to="leads.lead",
                    ),
                ),
                migrations.AlterField(
                    model_name="leadreassignment",
                    name="reassigned_by",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="Empty when the system reassigned (auto-reassign on breach).",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="teams.membership",
                    ),
                ),
                migrations.AlterField(
                    model_name="leadreassignment",
                    name="to_agent",
                    field=models.ForeignKey(
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="teams.membership",
                    ),
                ),
                migrations.AlterField(
                    model_name="notification",
                    name="lead",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="notifications",
                        to="leads.lead",
                    ),
                ),
            ],
            database_operations=[
                drop_index(
                    "leads_lead_assigned_agent_id_ee5a0afe",
                    table="leads_lead",
                    columns="assigned_agent_id",
                    concurrently=True,
                ),
                drop_index(
                    "leads_lead_previous_agent_id_1620d6ff",
                    table="leads_lead",
                    columns="previous_agent_id",
                    concurrently=True,
                ),
                drop_index(
                    "leads_lead_team_id_93d3ec8e",
                    table="leads_lead",
                    columns="team_id",
                    concurrently=True,
                ),
                drop_index(
                    "leads_lead_tenant_id_141c6526",
                    table="leads_lead",
                    columns="tenant_id",
                    concurrently=True,
                ),
                drop_index(
                    "leads_leadreassignment_from_agent_id_7e48a6a0",
                    table="leads_leadreassignment",
                    columns="from_agent_id",
                    concurrently=True,
                ),
                drop_index(
                    "leads_leadreassignment_lead_id_34809034",
                    table="leads_leadreassignment",
                    columns="lead_id",
                    concurrently=True,
                ),
                drop_index(
                    "leads_leadreassignment_reassigned_by_id_7a4646f2",
                    table="leads_leadreassignment",
                    columns="reassigned_by_id",
                    concurrently=True,
                ),
                drop_index(
                    "leads_leadreassignment_to_agent_id_b6929511",
                    table="leads_leadreassignment",
                    columns="to_agent_id",
                    concurrently=True,
                ),
                drop_index(
                    "leads_notification_lead_id_4f31fb9a",
                    table="leads_notification",
                    columns="lead_id",
                    concurrently=True,
                ),
            ],
        ),
    ]
