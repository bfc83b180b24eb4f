"""Reads for the outbox, for the admin's SLA dashboard.

The dashboard reads several tenants at once: the caller passes the ids of the tenants
the admin may see, and every query is filtered by them.
"""

from collections.abc import Collection
from datetime import datetime

from django.db.models import Count

from core.scoping import UnscopedQueryError
from outbox.models import MessageStatus, OutboundMessage


def _failed(tenant_ids: Collection, start: datetime, end: datetime):
    if tenant_ids is None:
        raise UnscopedQueryError("The dashboard's reads need the tenants they may read.")
    return OutboundMessage.all_tenants.filter(
        tenant_id__in=list(tenant_ids),
        status=MessageStatus.FAILED,
        created_at__gte=start,
        created_at__lt=end,
    )


def failed_messages_by_channel(
    *, tenant_ids: Collection, start: datetime, end: datetime
) -> list[dict]:
    """Messages created between `start` and `end` that failed for good, per channel:
    [{"channel", "count"}], most first."""
    return list(
        _failed(tenant_ids, start, end)
        .values("channel")
        .annotate(count=Count("id"))
        .order_by("-count", "channel")
    )


def latest_failed_messages(
    *, tenant_ids: Collection, start: datetime, end: datetime, limit: int = 10
) -> list[OutboundMessage]:
    return list(
        _failed(tenant_ids, start, end)
        .select_related("tenant")
        .only(
            "id",
            "tenant__name",
            "channel",
            "kind",
            "target",
            "attempts",
            "last_error",
            "created_at",
            "finished_at",
        )
        .order_by("-created_at")[:limit]
    )
