import django.db.models.deletion
from django.db import migrations, models

from core.migration_ops import drop_index


class Migration(migrations.Migration):
    """Foreign keys' own indexes where a composite index leads with the same column,
    written on every activity row (core.migration_ops)."""

    dependencies = [
        ("audit", "0003_actor_person_and_via"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("teams", "0006_indexes_led_by_composites"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="activitylog",
                    name="target_type",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to="contenttypes.contenttype",
                    ),
                ),
                migrations.AlterField(
                    model_name="activitylog",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="activity",
                        to="teams.tenant",
                    ),
                ),
            ],
            database_operations=[
                drop_index(
                    "audit_activitylog_target_type_id_11989db4",
                    table="audit_activitylog",
                    columns="target_type_id",
                ),
                drop_index(
                    "audit_activitylog_tenant_id_e136bc03",
                    table="audit_activitylog",
                    columns="tenant_id",
                ),
            ],
        ),
    ]
