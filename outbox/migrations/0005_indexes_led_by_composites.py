import django.db.models.deletion
from django.db import migrations, models

from core.migration_ops import drop_index


class Migration(migrations.Migration):
    """Indexes no query needs, written on every message (core.migration_ops)."""

    dependencies = [
        ("outbox", "0004_created_at_ordered"),
        ("teams", "0006_indexes_led_by_composites"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="outboundmessage",
                    name="tenant",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="outbound_messages",
                        to="teams.tenant",
                    ),
                ),
            ],
            database_operations=[
                drop_index(
                    "outbox_outboundmessage_tenant_id_018c1037",
                    table="outbox_outboundmessage",
                    columns="tenant_id",
                ),
            ],
        ),
        drop_index(
            "outbox_outboundmessage_idempotency_key_ff5c06d4_like",
            table="outbox_outboundmessage",
            columns="idempotency_key varchar_pattern_ops",
            postgresql_only=True,
        ),
    ]
