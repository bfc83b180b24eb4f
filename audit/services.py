from django.contrib.contenttypes.models import ContentType

from audit.models import ActivityLog
from core.actor import Actor


def build_activity(
    *, tenant, action: str, actor: Actor, target=None, data: dict | None = None
) -> ActivityLog:
    """An unsaved ActivityLog row, for `record_activities` to write several at once."""
    return ActivityLog(
        tenant=tenant,
        action=action,
        actor=actor.membership,
        actor_label=actor.label,
        target_type=ContentType.objects.get_for_model(target) if target is not None else None,
        target_id=str(target.pk) if target is not None else "",
        target_label=str(target)[:255] if target is not None else "",
        data=data or {},
    )


def record_activity(*, tenant, action: str, actor: Actor, target=None, data: dict | None = None):
    """Append one ActivityLog row. Call inside the transaction that made the change."""
    activity = build_activity(tenant=tenant, action=action, actor=actor, target=target, data=data)
    activity.save(force_insert=True)
    return activity


def record_activities(activities: list[ActivityLog]) -> None:
    """Append several rows in one statement."""
    if activities:
        ActivityLog.all_tenants.bulk_create(activities)
