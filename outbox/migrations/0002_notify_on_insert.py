"""PostgreSQL: every statement that inserts outbound messages runs `NOTIFY outbox`.

PostgreSQL delivers the notification when the transaction commits (and never if it rolls
back), so waiting workers wake up within milliseconds of a commit while the request
itself sends no extra statement. Other databases have no NOTIFY; their workers poll.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION outbox_notify_insert() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS outbox_notify_insert ON outbox_outboundmessage;
CREATE TRIGGER outbox_notify_insert
    AFTER INSERT ON outbox_outboundmessage
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify_insert();
"""

DROP = """
DROP TRIGGER IF EXISTS outbox_notify_insert ON outbox_outboundmessage;
DROP FUNCTION IF EXISTS outbox_notify_insert();
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("outbox", "0001_initial")]

    operations = [migrations.RunPython(create_trigger, drop_trigger)]
