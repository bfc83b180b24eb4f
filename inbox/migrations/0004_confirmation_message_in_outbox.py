"""Confirmations move to the outbox: each session points at its message.

Confirmations already queued, sent or failed become outbox messages with the same
status, so none is lost or sent twice by the upgrade.
"""

import uuid

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone

FINAL = {"sent", "failed"}


def move_confirmations(apps, schema_editor):
    Session = apps.get_model("inbox", "InboxSession")
    Message = apps.get_model("outbox", "OutboundMessage")
    now = timezone.now()
    sessions = Session._default_manager.exclude(confirmation_status="skipped")
    for session in sessions.iterator():
        message_id = uuid.uuid4()
        status = session.confirmation_status
        Message._default_manager.create(
            id=message_id,
            tenant_id=session.tenant_id,
            channel="whatsapp",
            kind="handover.confirmation",
            target=session.contact_id,
            endpoint_key=f"whatsapp:{session.tenant_id}",
            payload={"session_id": str(session.pk), "text": session.confirmation_text},
            idempotency_key=f"whatsapp/{message_id}",
            status=status,
            attempts=session.confirmation_attempts,
            max_attempts=max(6, session.confirmation_attempts + 1),
            next_attempt_at=now,
            last_error=session.confirmation_last_error,
            finished_at=(session.confirmation_finished_at or now) if status in FINAL else None,
        )
        Session._default_manager.filter(pk=session.pk).update(confirmation_message_id=message_id)


class Migration(migrations.Migration):

    dependencies = [
        ("inbox", "0003_remove_inboxsession_session_open_unassigned_and_more"),
        ("outbox", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="inboxsession",
            name="confirmation_message",
            field=models.OneToOneField(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="outbox.outboundmessage",
            ),
        ),
        migrations.RunPython(move_confirmations, migrations.RunPython.noop),
        migrations.RemoveIndex(model_name="inboxsession", name="session_confirmation_pending"),
        migrations.RemoveField(model_name="inboxsession", name="confirmation_attempts"),
        migrations.RemoveField(model_name="inboxsession", name="confirmation_finished_at"),
        migrations.RemoveField(model_name="inboxsession", name="confirmation_last_error"),
        migrations.RemoveField(model_name="inboxsession", name="confirmation_queued_at"),
        migrations.RemoveField(model_name="inboxsession", name="confirmation_started_at"),
        migrations.RemoveField(model_name="inboxsession", name="confirmation_status"),
        migrations.RemoveField(model_name="inboxsession", name="confirmation_text"),
    ]
