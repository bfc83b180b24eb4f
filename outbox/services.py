"""Writes of the outbox: queue messages in the caller's transaction; send failed ones again.

Callers (handover, lead services, webhooks) build messages inside the transaction of the
change that causes them, so a message exists exactly when its change does and nothing
is published anywhere during the request: the worker finds the row (PostgreSQL wakes it
with NOTIFY from a trigger on insert; otherwise it polls).
"""

import threading
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit.services import record_activity
from core.actor import Actor
from core.row_sql import insert_rows, new_row
from outbox.channels import get_channel
from outbox.models import FINAL_STATUSES, MessageStatus, OutboundMessage

_clock_lock = threading.Lock()
_last_created_at = None


def _strictly_later_now():
    """timezone.now(), but always later than the previous call in this process: the order
    of messages that share an ordering key is their creation order, and two made in the
    same microsecond (a coarse or stepped clock) must still have one."""
    global _last_created_at
    with _clock_lock:
        now = timezone.now()
        # Ties and tiny steps back are nudged forward; a clock set back further than a
        # second (or a test that travelled in time) starts again from the clock.
        if _last_created_at is not None and now <= _last_created_at < now + timedelta(seconds=1):
            now = _last_created_at + timedelta(microseconds=1)
        _last_created_at = now
        return now


class OutboxUsageError(RuntimeError):
    """An outbox message written outside a transaction would not be tied to its change."""


def build_message(
    *,
    tenant,
    channel: str,
    target: str,
    payload: dict,
    kind: str = "",
    idempotency_key: str | None = None,
    ordering_key: str = "",
    now=None,
) -> OutboundMessage:
    """An unsaved message; save it with `queue_messages` (several at once).

    Messages sharing an `ordering_key` are delivered one at a time, oldest first: a
    message waits while an older one of its key is pending or being sent.
    """
    channel_obj = get_channel(channel)
    message_id = uuid.uuid4()
    tenant_id = getattr(tenant, "pk", tenant)
    return new_row(
        OutboundMessage,
        id=message_id,
        tenant_id=tenant_id,
        channel=channel,
        kind=kind,
        target=target,
        endpoint_key=channel_obj.endpoint_key(tenant_id=tenant_id, target=target, payload=payload)[
            :255
        ],
        payload=payload,
        ordering_key=ordering_key[:255],
        idempotency_key=idempotency_key or f"{channel}/{message_id}",
        status=MessageStatus.PENDING,
        max_attempts=channel_obj.max_attempts or settings.OUTBOX_MAX_ATTEMPTS,
        next_attempt_at=now or timezone.now(),
        created_at=_strictly_later_now(),
    )


def queue_messages(messages: list[OutboundMessage], *, ignore_conflicts: bool = False) -> None:
    """Insert messages in the caller's transaction (one pipelined round trip)."""
    if not messages:
        return
    if not connection.in_atomic_block:
        raise OutboxUsageError("Queue outbound messages inside the transaction of the change.")
    insert_rows(messages, ignore_conflicts=ignore_conflicts)


def queue_message(**kwargs) -> OutboundMessage:
    message = build_message(**kwargs)
    queue_messages([message])
    return message


@transaction.atomic
def send_again(*, tenant, message_ids, actor: Actor) -> int:
    """An admin sends failed messages again: a fresh set of attempts, due now.

    The budget stays on the row: the attempts already made are kept and the channel's
    budget is added on top, so the history of what happened is never lost.
    """
    now = timezone.now()
    messages = list(
        OutboundMessage.objects.for_tenant(tenant)
        .select_for_update()
        .filter(pk__in=message_ids, status=MessageStatus.FAILED)
    )
    for message in messages:
        extra = get_channel(message.channel).max_attempts or settings.OUTBOX_MAX_ATTEMPTS
        message.status = MessageStatus.PENDING
        message.max_attempts = message.attempts + extra
        message.next_attempt_at = now
        message.finished_at = None
        message.save(
            update_fields=["status", "max_attempts", "next_attempt_at", "finished_at", "updated_at"]
        )
        record_activity(
            tenant=tenant,
            action="message.resent",
            actor=actor,
            target=message,
            data={"channel": message.channel, "kind": message.kind, "attempts": message.attempts},
        )
    return len(messages)


def purge_finished_messages(*, older_than_days: int) -> int:
    """System job across tenants: delete sent, failed and skipped messages older than
    `older_than_days`, except those a row still shows as its own (a session's
    confirmation, a notice's email): they live as long as that row."""
    cutoff = timezone.now() - timedelta(days=max(1, int(older_than_days)))
    old = OutboundMessage.all_tenants.filter(status__in=FINAL_STATUSES, finished_at__lt=cutoff)
    for relation in OutboundMessage._meta.related_objects:
        if relation.one_to_one:
            old = old.filter(**{f"{relation.name}__isnull": True})
    deleted, _ = old.delete()
    return deleted
