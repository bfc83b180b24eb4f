import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from core.migration_ops import AddIndexConcurrentlyOnPostgres, drop_index, keep_pattern_index_only


class Migration(migrations.Migration):
    """The actor columns indexed without their NULLs (an API key or a job acting wrote
    two entries for nobody into each activity row's indexes), and one index on `via`
    instead of two (core.migration_ops). The new indexes are built before the old ones
    go, concurrently on PostgreSQL."""

    atomic = False

    dependencies = [
        ("audit", "0004_indexes_led_by_composites"),
        ("teams", "0007_counters_checked_once"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        AddIndexConcurrentlyOnPostgres(
            model_name="activitylog",
            index=models.Index(
                condition=models.Q(("actor__isnull", False)),
                fields=["actor"],
                name="activity_by_actor",
            ),
        ),
        AddIndexConcurrentlyOnPostgres(
            model_name="activitylog",
            index=models.Index(
                condition=models.Q(("actor_user__isnull", False)),
                fields=["actor_user"],
                name="activity_by_actor_user",
            ),
        ),
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="activitylog",
                    name="actor",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="The agent who acted, when a person did.",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="teams.membership",
                    ),
                ),
                migrations.AlterField(
                    model_name="activitylog",
                    name="actor_user",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        help_text="The person who acted, when a person did (also a superuser "
                        "with no membership).",
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="activitylog",
                    name="via",
                    field=models.CharField(
                        blank=True,
                        help_text='How the person acted: "admin", "api_key:wk_…", "api", '
                        '"agent_page", "job:<name>", "command:<name>".',
                        max_length=80,
                    ),
                ),
                migrations.AddIndex(
                    model_name="activitylog",
                    index=models.Index(
                        fields=["via"], name="activity_via", opclasses=["varchar_pattern_ops"]
                    ),
                ),
            ],
            database_operations=[
                drop_index(
                    "audit_activitylog_actor_id_d9142f81",
                    table="audit_activitylog",
                    columns="actor_id",
                    concurrently=True,
                ),
                drop_index(
                    "audit_activitylog_actor_user_id_00dd1e40",
                    table="audit_activitylog",
                    columns="actor_user_id",
                    concurrently=True,
                ),
                keep_pattern_index_only(
                    table="audit_activitylog",
                    column="via",
                    plain="audit_activitylog_via_4a25f244",
                    name="activity_via",
                ),
            ],
        ),
    ]
