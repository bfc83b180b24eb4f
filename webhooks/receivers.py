from django.dispatch import receiver

from outbox.models import OutboundMessage
from outbox.signals import message_failed
from webhooks.events import MESSAGE_FAILED, Event, emit


@receiver(message_failed, sender=OutboundMessage, dispatch_uid="webhooks.message_failed")
def announce_failed_message(sender, message, error, **kwargs):
    """A confirmation or an email finally failed: tell the tenant's systems (in the
    transaction that stores the failure). Failed webhooks are not announced by webhook."""
    if message.channel == "webhook":
        return
    payload = message.payload or {}
    data = {
        "messageId": str(message.pk),
        "channel": message.channel,
        "kind": message.kind,
        "target": message.target,
        "attempts": message.attempts,
        "error": error,
    }
    if payload.get("session_id"):
        data["sessionId"] = payload["session_id"]
    if payload.get("notification_id"):
        data["notificationId"] = payload["notification_id"]
    emit(
        [
            Event(
                tenant_id=message.tenant_id,
                type=MESSAGE_FAILED,
                data=data,
                subject_id=payload.get("session_id") or str(message.pk),
            )
        ]
    )
