"""Notification emails move to the outbox: each notice points at its email message.

Emails already queued, sent or failed become outbox messages with the same status, so
none is lost or sent twice by the upgrade.
"""

import uuid

import django.db.models.deletion
from django.db import migrations, models
from django.utils import timezone

FINAL = {"sent", "failed"}


def move_emails(apps, schema_editor):
    Notification = apps.get_model("leads", "Notification")
    Message = apps.get_model("outbox", "OutboundMessage")
    now = timezone.now()
    notices = Notification._default_manager.filter(email_status__in=["pending", *FINAL])
    for notice in notices.select_related("recipient__user").iterator():
        message_id = uuid.uuid4()
        status = notice.email_status
        Message._default_manager.create(
            id=message_id,
            tenant_id=notice.tenant_id,
            channel="email",
            kind=f"lead.{notice.kind}",
            target=notice.recipient.user.email or "",
            endpoint_key="email",
            payload={"renderer": "leads.notification", "notification_id": str(notice.pk)},
            idempotency_key=f"lead-notification/{notice.pk}",
            status=status,
            attempts=notice.email_attempts,
            max_attempts=max(6, notice.email_attempts + 1),
            next_attempt_at=now,
            last_error=notice.email_last_error,
            finished_at=(notice.email_sent_at or now) if status in FINAL else None,
        )
        Notification._default_manager.filter(pk=notice.pk).update(email_message_id=message_id)


class Migration(migrations.Migration):

    dependencies = [
        ("leads", "0002_remove_lead_lead_unassigned_lead_lead_unassigned"),
        ("outbox", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="notification",
            name="email_message",
            field=models.OneToOneField(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="outbox.outboundmessage",
            ),
        ),
        migrations.RunPython(move_emails, migrations.RunPython.noop),
        migrations.RemoveIndex(model_name="notification", name="notification_email_pending"),
        migrations.RemoveField(model_name="notification", name="email_attempts"),
        migrations.RemoveField(model_name="notification", name="email_last_error"),
        migrations.RemoveField(model_name="notification", name="email_sent_at"),
        migrations.RemoveField(model_name="notification", name="email_status"),
    ]
